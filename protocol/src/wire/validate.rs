//! Semantic validation of decoded messages: everything bincode cannot check (names, replica
//! ids, counters, batch order and origin, sizes) is checked here before a message is acted on.

use std::collections::BTreeSet;

use crate::dot::{ReplicaId, VersionVector};
use crate::names::{validate_collection_name, validate_key, validate_node_name, NameError};
use crate::version::{check_author, Version, MAX_SIGNATURE_BYTES};

use super::error::{clip, WireError};
use super::message::{
    Ack, Batch, Complete, DigestReply, DigestRequest, ErrorFrame, Hello, HelloAck, Message,
    MessageV1, MessageV2, RepairBatch, TreeReply, TreeRequest, MAX_RELEASE_BYTES, MAX_TREE_PARENTS,
};
use super::v1::VersionV1;

/// Longest cluster id, in characters (the hex of a SHA-512 fingerprint).
pub const MAX_CLUSTER_ID_LEN: usize = 128;

/// Most origins in one version vector or causal context: a collection written by at most this
/// many replicas (nodes times their incarnations). It keeps one sibling record (a context plus an
/// inline value) well below the store's large-value threshold.
pub const MAX_VECTOR_ENTRIES: usize = 2048;

/// Most collections in a handshake's vectors (and in one node's store).
pub const MAX_HANDSHAKE_COLLECTIONS: usize = 1024;

/// Longest [`ErrorFrame::detail`], in bytes.
pub const MAX_ERROR_DETAIL_BYTES: usize = 4096;

impl Message {
    /// Checks everything about the message that decoding does not: valid node and collection
    /// names, keys and replica ids; counters of at least 1; batches of one origin and
    /// collection in strictly increasing counter order; values of at most `max_value_bytes`
    /// (the configured value limit, [`DEFAULT_MAX_VALUE_BYTES`](super::DEFAULT_MAX_VALUE_BYTES)
    /// by default).
    ///
    /// It does not check what needs session state or policy (cluster id equality, the peer's
    /// certificate name, authorisation, clock skew, continuity with earlier batches).
    pub fn validate(&self, max_value_bytes: usize) -> Result<(), WireError> {
        match self {
            Self::V1(m) => m.validate(max_value_bytes),
            Self::V2(m) => m.validate(max_value_bytes),
        }
    }
}

impl MessageV1 {
    /// See [`Message::validate`].
    pub fn validate(&self, max_value_bytes: usize) -> Result<(), WireError> {
        match self {
            Self::Hello(m) => m.validate(),
            Self::HelloAck(m) => m.validate(),
            Self::Batch(m) => check_batch(
                &m.collection,
                &m.origin,
                m.versions.iter().map(VersionRef::of_v1),
                max_value_bytes,
            ),
            Self::Complete(m) => m.validate(),
            Self::Ack(m) => m.validate(),
            Self::Heartbeat(_) => Ok(()),
            Self::DigestRequest(m) => m.validate(),
            Self::DigestReply(m) => m.validate(),
            Self::Error(m) => m.validate(),
        }
    }
}

impl MessageV2 {
    /// See [`Message::validate`]; also checks each version's author (its node must be the
    /// origin's) and signature length, and an [`About`]'s length.
    pub fn validate(&self, max_value_bytes: usize) -> Result<(), WireError> {
        match self {
            Self::Hello(m) => m.validate(),
            Self::HelloAck(m) => m.validate(),
            Self::Batch(m) => m.validate(max_value_bytes),
            Self::Complete(m) => m.validate(),
            Self::Ack(m) => m.validate(),
            Self::Heartbeat(_) => Ok(()),
            Self::DigestRequest(m) => m.validate(),
            Self::DigestReply(m) => m.validate(),
            Self::Error(m) => m.validate(),
            Self::HelloAckV2(m) => {
                m.ack.validate()?;
                check_replica(&m.replica)?;
                validate_cluster_id(&m.cluster_id)
            }
            Self::Echo(_) => Ok(()),
            Self::Restart(m) => {
                check_collection(&m.collection)?;
                check_replica(&m.origin)
            }
            Self::About(m) => {
                if m.release.len() > MAX_RELEASE_BYTES {
                    return Err(WireError::DetailTooLong {
                        len: m.release.len(),
                    });
                }
                Ok(())
            }
            Self::TreeRequest(m) => m.validate(),
            Self::TreeReply(m) => m.validate(),
            Self::RepairBatch(m) => m.validate(max_value_bytes),
            Self::RepairApplied(m) => check_collection(&m.collection),
            Self::FullRepair(m) => check_collection(&m.collection),
            Self::DictionaryOffer(m) => m.validate(),
            Self::DictionaryReply(m) => m.validate(),
            Self::BatchComplete(m) => {
                m.batch.validate(max_value_bytes)?;
                m.complete().validate()
            }
        }
    }
}

impl TreeRequest {
    /// Checks the collection name, a level of 1 to [`LEVELS`](crate::tree::LEVELS), 1 to
    /// [`MAX_TREE_PARENTS`] parents in strictly increasing order, each a node of the level
    /// above, and [`FANOUT`](crate::tree::FANOUT) digests per parent.
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        check_level(self.level)?;
        if self.parents.is_empty() || self.parents.len() > MAX_TREE_PARENTS {
            return Err(WireError::BadTree(format!(
                "{} parents (1 to {MAX_TREE_PARENTS})",
                self.parents.len()
            )));
        }
        check_nodes(&self.parents, self.level - 1)?;
        if self.digests.len() != self.parents.len() * crate::tree::FANOUT as usize {
            return Err(WireError::BadTree(format!(
                "{} digests for {} parents",
                self.digests.len(),
                self.parents.len()
            )));
        }
        Ok(())
    }
}

impl TreeReply {
    /// Checks the collection name, the level, and that the differing nodes are nodes of that
    /// level in strictly increasing order (whether they answer the request is the session's
    /// to check).
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        check_level(self.level)?;
        check_nodes(&self.differing, self.level)
    }
}

impl RepairBatch {
    /// Checks the collection name and every version as [`Batch::validate`] does (any origins,
    /// in any order); only the last batch may be empty.
    pub fn validate(&self, max_value_bytes: usize) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        if self.versions.is_empty() && !self.last {
            return Err(WireError::EmptyBatch);
        }
        for v in &self.versions {
            if v.collection != self.collection {
                return Err(WireError::WrongCollection {
                    expected: clip(&self.collection),
                    found: clip(&v.collection),
                });
            }
            check_replica(&v.dot.origin)?;
            check_counter(&v.dot.origin, v.dot.counter)?;
            check_version_body(&VersionRef::of(v), max_value_bytes)?;
        }
        Ok(())
    }
}

/// A tree level below the root: 1 to [`LEVELS`](crate::tree::LEVELS).
fn check_level(level: u8) -> Result<(), WireError> {
    if level == 0 || level > crate::tree::LEVELS {
        return Err(WireError::BadTree(format!("level {level}")));
    }
    Ok(())
}

/// Nodes of `level`, strictly increasing.
fn check_nodes(nodes: &[u32], level: u8) -> Result<(), WireError> {
    let count = crate::tree::nodes_at(level);
    let mut previous: Option<u32> = None;
    for &n in nodes {
        if n >= count || previous.is_some_and(|p| n <= p) {
            return Err(WireError::BadTree(format!(
                "node {n} at level {level} (of {count}, strictly increasing)"
            )));
        }
        previous = Some(n);
    }
    Ok(())
}

/// The fields of a version that validation reads, of either protocol version.
struct VersionRef<'a> {
    collection: &'a str,
    key: &'a str,
    dot: &'a crate::dot::Dot,
    context: &'a VersionVector,
    value: Option<&'a [u8]>,
    author: Option<&'a str>,
    signature: Option<&'a [u8]>,
}

impl<'a> VersionRef<'a> {
    fn of(v: &'a Version) -> Self {
        VersionRef {
            collection: &v.collection,
            key: &v.key,
            dot: &v.dot,
            context: &v.context,
            value: v.value.as_deref(),
            author: v.author.as_deref(),
            signature: v.signature.as_deref(),
        }
    }

    fn of_v1(v: &'a VersionV1) -> Self {
        VersionRef {
            collection: &v.collection,
            key: &v.key,
            dot: &v.dot,
            context: &v.context,
            value: v.value.as_deref(),
            author: None,
            signature: None,
        }
    }
}

impl Hello {
    /// Checks the protocol version is not 0, the cluster id, node name, replica id (which must
    /// belong to `node`) and the version vectors (see [`Message::validate`]).
    pub fn validate(&self) -> Result<(), WireError> {
        check_protocol(self.protocol)?;
        validate_cluster_id(&self.cluster_id)?;
        check_node(&self.node)?;
        check_replica(&self.replica)?;
        if self.replica.node_name() != self.node {
            return Err(WireError::ReplicaNodeMismatch {
                node: clip(&self.node),
                replica: clip(self.replica.as_str()),
            });
        }
        check_vvs(&self.vvs)
    }
}

impl HelloAck {
    /// Checks the protocol version is not 0 and the version vectors.
    pub fn validate(&self) -> Result<(), WireError> {
        check_protocol(self.protocol)?;
        check_vvs(&self.vvs)
    }
}

impl Batch {
    /// Checks the batch is non-empty, every version is of the batch's collection and origin
    /// with a valid key, a counter of at least 1 above the previous version's, a valid context
    /// that does not cover its own dot, a value of at most `max_value_bytes`, an author of the
    /// origin's node and a signature of at most [`MAX_SIGNATURE_BYTES`].
    pub fn validate(&self, max_value_bytes: usize) -> Result<(), WireError> {
        check_batch(
            &self.collection,
            &self.origin,
            self.versions.iter().map(VersionRef::of),
            max_value_bytes,
        )
    }
}

/// The checks of [`Batch::validate`], for batches of either protocol version.
fn check_batch<'a>(
    collection: &str,
    origin: &ReplicaId,
    versions: impl ExactSizeIterator<Item = VersionRef<'a>>,
    max_value_bytes: usize,
) -> Result<(), WireError> {
    check_collection(collection)?;
    check_replica(origin)?;
    if versions.len() == 0 {
        return Err(WireError::EmptyBatch);
    }
    let mut previous = 0;
    for v in versions {
        if v.collection != collection {
            return Err(WireError::WrongCollection {
                expected: clip(collection),
                found: clip(v.collection),
            });
        }
        if v.dot.origin != *origin {
            return Err(WireError::WrongOrigin {
                expected: clip(origin.as_str()),
                found: clip(v.dot.origin.as_str()),
            });
        }
        check_counter(origin, v.dot.counter)?;
        if v.dot.counter <= previous {
            return Err(WireError::OutOfOrder {
                previous,
                counter: v.dot.counter,
            });
        }
        previous = v.dot.counter;
        check_version_body(&v, max_value_bytes)?;
    }
    Ok(())
}

impl Complete {
    /// Checks the collection name, origin and that `through` is at least 1.
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        check_replica(&self.origin)?;
        check_counter(&self.origin, self.through)
    }
}

impl Ack {
    /// Checks the collection name, origin and that `through` is at least 1.
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        check_replica(&self.origin)?;
        check_counter(&self.origin, self.through)
    }
}

impl DigestRequest {
    /// Checks the collection name and version vector.
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        check_vv(&self.vv)
    }
}

impl DigestReply {
    /// Checks the collection name and version vector.
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        check_vv(&self.vv)
    }
}

impl ErrorFrame {
    /// Checks the detail is at most [`MAX_ERROR_DETAIL_BYTES`].
    pub fn validate(&self) -> Result<(), WireError> {
        if self.detail.len() > MAX_ERROR_DETAIL_BYTES {
            return Err(WireError::DetailTooLong {
                len: self.detail.len(),
            });
        }
        Ok(())
    }
}

/// Checks a cluster id: 1..=[`MAX_CLUSTER_ID_LEN`] lowercase hex digits (the CA certificate's
/// fingerprint, as `Digest::to_hex` writes a SHA-256).
pub fn validate_cluster_id(id: &str) -> Result<(), WireError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CLUSTER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(WireError::InvalidClusterId(clip(id)))
    }
}

fn check_protocol(protocol: u16) -> Result<(), WireError> {
    if protocol == 0 {
        Err(WireError::UnsupportedVersion { version: 0 })
    } else {
        Ok(())
    }
}

fn check_node(name: &str) -> Result<(), WireError> {
    // Refuse long names before the name module copies them into its error.
    if name.len() > 63 {
        return Err(NameError::Node(clip(name)).into());
    }
    Ok(validate_node_name(name)?)
}

pub(super) fn check_collection(name: &str) -> Result<(), WireError> {
    if name.len() > 65 {
        return Err(NameError::Collection(clip(name)).into());
    }
    Ok(validate_collection_name(name)?)
}

/// Replica ids are not validated by decoding (the type wraps any string).
fn check_replica(id: &ReplicaId) -> Result<(), WireError> {
    let s = id.as_str();
    // `name@` + 8 hex digits, with a node name of at most 63 bytes.
    if s.len() > 63 + 9 || s.parse::<ReplicaId>().is_err() {
        return Err(WireError::InvalidReplicaId(clip(s)));
    }
    Ok(())
}

fn check_counter(origin: &ReplicaId, counter: u64) -> Result<(), WireError> {
    if counter == 0 {
        Err(WireError::ZeroCounter {
            origin: clip(origin.as_str()),
        })
    } else {
        Ok(())
    }
}

fn check_vv(vv: &VersionVector) -> Result<(), WireError> {
    if vv.len() > MAX_VECTOR_ENTRIES {
        return Err(WireError::VectorTooLong {
            len: vv.len(),
            limit: MAX_VECTOR_ENTRIES,
        });
    }
    for (origin, counter) in vv.iter() {
        check_replica(origin)?;
        check_counter(origin, counter)?;
    }
    Ok(())
}

fn check_vvs(vvs: &[(String, VersionVector)]) -> Result<(), WireError> {
    if vvs.len() > MAX_HANDSHAKE_COLLECTIONS {
        return Err(WireError::TooManyCollections {
            len: vvs.len(),
            limit: MAX_HANDSHAKE_COLLECTIONS,
        });
    }
    let mut seen = BTreeSet::new();
    for (collection, vv) in vvs {
        check_collection(collection)?;
        if !seen.insert(collection.as_str()) {
            return Err(WireError::DuplicateCollection(clip(collection)));
        }
        check_vv(vv)?;
    }
    Ok(())
}

/// The checks of one version that do not depend on its batch: key, context, value size,
/// author and signature.
fn check_version_body(v: &VersionRef<'_>, max_value_bytes: usize) -> Result<(), WireError> {
    validate_key(v.key)?;
    if let Some(author) = v.author {
        check_author(author, v.dot.origin.node_name()).map_err(|e| WireError::BadAuthor {
            author: clip(author),
            detail: e.to_string(),
        })?;
    }
    if let Some(signature) = v.signature {
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err(WireError::BadSignatureLength {
                len: signature.len(),
            });
        }
    }
    if let Some(value) = v.value {
        if value.len() > max_value_bytes {
            return Err(WireError::ValueTooLarge {
                len: value.len(),
                limit: max_value_bytes,
            });
        }
    }
    check_vv(v.context)?;
    if v.context.covers(v.dot) {
        return Err(WireError::SelfSuperseding {
            dot: clip(&v.dot.to_string()),
        });
    }
    Ok(())
}
