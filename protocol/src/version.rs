//! Versions: one write of one key with its dot, HLC timestamp, causal context and value.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::dot::{Dot, VersionVector};
use crate::hlc::Hlc;

/// SHA-256 of a value.
pub type ValueHash = [u8; 32];

/// What a version says about the value: a tombstone, or a value of some length and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
pub enum ValueMeta {
    /// The key was deleted.
    Tombstone,
    /// A value of `len` bytes with SHA-256 `hash`.
    Present {
        /// Length in bytes.
        len: u64,
        /// SHA-256 of the bytes.
        hash: ValueHash,
    },
}

impl ValueMeta {
    /// Describes `value` (`None` for a tombstone).
    pub fn of(value: Option<&[u8]>) -> Self {
        match value {
            None => Self::Tombstone,
            Some(v) => Self::Present {
                len: v.len() as u64,
                hash: value_hash(v),
            },
        }
    }

    /// True for a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Self::Tombstone)
    }
}

/// SHA-256 of `value`.
pub fn value_hash(value: &[u8]) -> ValueHash {
    let d = ring::digest::digest(&ring::digest::SHA256, value);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Everything about a version except the value bytes: what the merge rules and digests need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VersionHeader {
    /// The write's identity.
    pub dot: Dot,
    /// When it was written (decides the winner).
    pub hlc: Hlc,
    /// The dots it supersedes.
    pub context: VersionVector,
    /// Tombstone, or the value's length and hash.
    pub value: ValueMeta,
}

/// One complete version of one key, as written and as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Version {
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
    /// Who wrote it: `USER@NODE` for a staff write, `NODE` for a system write, where `NODE`
    /// is the origin's node. `None` for versions written before authors existed (or received
    /// over protocol version 1).
    pub author: Option<String>,
    /// The origin's signature over the version (see `signing`), `None` when unsigned.
    pub signature: Option<Vec<u8>>,
}

/// Longest author, in bytes: a 64-byte user name, `@`, a 63-byte node name.
pub const MAX_AUTHOR_BYTES: usize = 128;

/// Longest signature, in bytes.
pub const MAX_SIGNATURE_BYTES: usize = 128;

/// Why an author is not acceptable for a version of some origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorError {
    /// Longer than [`MAX_AUTHOR_BYTES`], empty, or with characters outside names.
    #[error("malformed author")]
    Malformed,
    /// The node part is not the origin's node.
    #[error("author names node {author_node:?}, but the version's origin is node {origin_node:?}")]
    WrongNode {
        /// The node the author names.
        author_node: String,
        /// The origin's node.
        origin_node: String,
    },
}

/// Checks `author` (`USER@NODE` or `NODE`) for a version whose origin is node `origin_node`:
/// a node can only author its own writes, so no relay can claim another office's staff.
pub fn check_author(author: &str, origin_node: &str) -> Result<(), AuthorError> {
    if author.is_empty() || author.len() > MAX_AUTHOR_BYTES {
        return Err(AuthorError::Malformed);
    }
    let (user, node) = match author.split_once('@') {
        Some((user, node)) => (Some(user), node),
        None => (None, author),
    };
    let name_ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    };
    if !name_ok(node, 63) || user.is_some_and(|u| !name_ok(u, 64)) {
        return Err(AuthorError::Malformed);
    }
    if node != origin_node {
        return Err(AuthorError::WrongNode {
            author_node: node.to_owned(),
            origin_node: origin_node.to_owned(),
        });
    }
    Ok(())
}

impl Version {
    /// The header of this version (hashes the value).
    pub fn header(&self) -> VersionHeader {
        VersionHeader {
            dot: self.dot.clone(),
            hlc: self.hlc,
            context: self.context.clone(),
            value: ValueMeta::of(self.value.as_deref()),
        }
    }
}

/// The parts of a version the merge rules look at.
pub trait Causal {
    /// The version's dot.
    fn dot(&self) -> &Dot;
    /// The dots it supersedes.
    fn context(&self) -> &VersionVector;
    /// Its timestamp.
    fn hlc(&self) -> Hlc;
}

impl Causal for VersionHeader {
    fn dot(&self) -> &Dot {
        &self.dot
    }
    fn context(&self) -> &VersionVector {
        &self.context
    }
    fn hlc(&self) -> Hlc {
        self.hlc
    }
}

impl Causal for Version {
    fn dot(&self) -> &Dot {
        &self.dot
    }
    fn context(&self) -> &VersionVector {
        &self.context
    }
    fn hlc(&self) -> Hlc {
        self.hlc
    }
}
