//! The frozen layouts of protocol version 1 that version 2 changed: a version without author
//! or signature, and the batch that carries it. Converting a version-2 message down to version
//! 1 drops the author and the signature; converting up leaves them `None`.

use bincode::{Decode, Encode};

use crate::dot::{Dot, ReplicaId, VersionVector};
use crate::hlc::Hlc;
use crate::version::Version;

use super::message::Batch;

/// A version as protocol version 1 carries it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VersionV1 {
    /// The collection the key belongs to.
    pub collection: String,
    /// The record key.
    pub key: String,
    /// The write's identity.
    pub dot: Dot,
    /// When it was written.
    pub hlc: Hlc,
    /// The dots it supersedes.
    pub context: VersionVector,
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// A batch as protocol version 1 carries it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchV1 {
    /// The collection every version belongs to.
    pub collection: String,
    /// The origin of every version.
    pub origin: ReplicaId,
    /// The versions, at least one.
    pub versions: Vec<VersionV1>,
}

impl From<VersionV1> for Version {
    fn from(v: VersionV1) -> Self {
        Version {
            collection: v.collection,
            key: v.key,
            dot: v.dot,
            hlc: v.hlc,
            context: v.context,
            value: v.value,
            author: None,
            signature: None,
        }
    }
}

impl From<Version> for VersionV1 {
    fn from(v: Version) -> Self {
        VersionV1 {
            collection: v.collection,
            key: v.key,
            dot: v.dot,
            hlc: v.hlc,
            context: v.context,
            value: v.value,
        }
    }
}

impl From<BatchV1> for Batch {
    fn from(b: BatchV1) -> Self {
        Batch {
            collection: b.collection,
            origin: b.origin,
            versions: b.versions.into_iter().map(Version::from).collect(),
        }
    }
}

impl From<Batch> for BatchV1 {
    fn from(b: Batch) -> Self {
        BatchV1 {
            collection: b.collection,
            origin: b.origin,
            versions: b.versions.into_iter().map(VersionV1::from).collect(),
        }
    }
}
