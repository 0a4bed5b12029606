//! Origin signatures on versions: the exact bytes a signature covers, the framing of the
//! signature a version carries, and the `_nodes` system collection that carries every node's
//! certificates. The cryptography itself (keys, signing, verifying) is the caller's: this module
//! only fixes what is signed and how it is written down.

use std::fmt;

use crate::version::{Version, VersionHeader};

/// The system collection holding every node's certificates: key `NODE/KEYID`, value the DER
/// certificate whose [`KeyId`] is `KEYID`. Only node `NODE` may write its own keys.
pub const NODES_COLLECTION: &str = "_nodes";

/// Domain separation: a version signature can never be mistaken for any other signature made
/// with a node key (TLS handshakes, bundles). Other domains are NUL-terminated labels too, so
/// no two domains' messages share a prefix.
pub const VERSION_DOMAIN: &[u8] = b"officesync version signature 1\0";

/// Domain of a signature over a hash tree of versions (see [`tree_message`]): the origin signs
/// one root for a group of versions, each version carries its path to that root.
pub const TREE_DOMAIN: &[u8] = b"officesync version tree 1\0";

/// Bytes of a framed signature: scheme, key id, 64 signature bytes.
pub const SIGNATURE_LEN: usize = 1 + 8 + 64;

/// Deepest hash tree a tree signature may name: at most 256 versions under one signature.
pub const MAX_TREE_DEPTH: u8 = 8;

/// Bytes of a framed tree signature of depth `depth`: the plain framing, then the depth, the
/// leaf's index and its path (one hash per level).
pub const fn tree_signature_len(depth: u8) -> usize {
    SIGNATURE_LEN + 1 + 2 + 32 * depth as usize
}

/// Bit set in the scheme byte of a tree signature.
const TREE_FLAG: u8 = 0x80;

/// The signature algorithms a node key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Ed25519 (RFC 8032).
    Ed25519,
    /// ECDSA over P-256 with SHA-256, the signature as the fixed 64-byte `r || s`.
    EcdsaP256,
}

impl Scheme {
    fn code(self) -> u8 {
        match self {
            Scheme::Ed25519 => 1,
            Scheme::EcdsaP256 => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Scheme::Ed25519),
            2 => Some(Scheme::EcdsaP256),
            _ => None,
        }
    }
}

/// Names a signer's certificate: the first 8 bytes of the SHA-256 of its DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of the certificate `der`.
    pub fn of_cert(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.as_ref()[..8]);
        KeyId(id)
    }

    /// Parses 16 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        let mut id = [0u8; 8];
        for (i, b) in id.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2)?;
            if pair.bytes().any(|c| c.is_ascii_uppercase()) {
                return None;
            }
            *b = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The signature a version carries: which scheme, which certificate, the signature bytes and,
/// for a signature over a hash tree of versions, the version's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSignature {
    /// The algorithm.
    pub scheme: Scheme,
    /// The signer's certificate.
    pub key_id: KeyId,
    /// The 64 signature bytes: over [`signed_message`] alone, or over [`tree_message`].
    pub bytes: [u8; 64],
    /// Where the version's leaf sits in the signed tree, when the signature is over a tree.
    pub tree: Option<TreePath>,
}

/// A version's leaf in a signed hash tree: its index and the sibling hash at every level,
/// leaf level first. The depth is the path's length (1 to [`MAX_TREE_DEPTH`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePath {
    /// The leaf's index, below `2^depth`: its bits, lowest first, say whether the leaf's side
    /// is the right one at each level.
    pub index: u16,
    /// The sibling hashes, from the leaf's level up.
    pub siblings: Vec<[u8; 32]>,
}

impl TreePath {
    /// The tree's depth.
    pub fn depth(&self) -> u8 {
        self.siblings.len() as u8
    }

    /// The root reached from the leaf hash `leaf` along this path.
    pub fn root(&self, leaf: [u8; 32]) -> [u8; 32] {
        let mut at = leaf;
        for (level, sibling) in self.siblings.iter().enumerate() {
            at = if (self.index >> level) & 1 == 1 {
                node_hash(sibling, &at)
            } else {
                node_hash(&at, sibling)
            };
        }
        at
    }
}

/// The hash tree over a group of versions' leaf hashes ([`leaf_hash`]), padded to a power of
/// two: its depth, its root, and each leaf's path. At least two and at most
/// `2^MAX_TREE_DEPTH` leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTree {
    /// The root the origin signs (in [`tree_message`]).
    pub root: [u8; 32],
    /// Levels below the root.
    pub depth: u8,
    /// Each leaf's path, in the order of the leaves given.
    pub paths: Vec<TreePath>,
}

impl SignedTree {
    /// Builds the tree over `leaves`; `None` for fewer than two or more than
    /// `2^MAX_TREE_DEPTH` leaves.
    pub fn build(leaves: &[[u8; 32]]) -> Option<Self> {
        if leaves.len() < 2 || leaves.len() > 1 << MAX_TREE_DEPTH {
            return None;
        }
        let width = leaves.len().next_power_of_two();
        let depth = width.trailing_zeros() as u8;
        let mut levels: Vec<Vec<[u8; 32]>> = Vec::with_capacity(depth as usize + 1);
        let mut level: Vec<[u8; 32]> = leaves.to_vec();
        level.resize(width, padding_hash());
        while level.len() > 1 {
            let up = level.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
            levels.push(std::mem::replace(&mut level, up));
        }
        let root = level[0];
        let paths = (0..leaves.len())
            .map(|i| TreePath {
                index: i as u16,
                siblings: levels
                    .iter()
                    .enumerate()
                    .map(|(l, row)| row[(i >> l) ^ 1])
                    .collect(),
            })
            .collect();
        Some(Self { root, depth, paths })
    }
}

/// The leaf hash of a version whose signed bytes are `message` ([`signed_message`]).
pub fn leaf_hash(message: &[u8]) -> [u8; 32] {
    hash_parts(&[&[0], message])
}

/// An inner node of the tree.
fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    hash_parts(&[&[1], left, right])
}

/// The leaf that fills a tree up to a power of two: no version's leaf (another prefix byte).
fn padding_hash() -> [u8; 32] {
    hash_parts(&[&[2]])
}

fn hash_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The bytes an origin signs for a tree of versions: the tree domain, the depth and the root.
pub fn tree_message(root: &[u8; 32], depth: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(TREE_DOMAIN.len() + 1 + 32);
    m.extend_from_slice(TREE_DOMAIN);
    m.push(depth);
    m.extend_from_slice(root);
    m
}

/// Why a version's signature bytes are not a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureFormatError {
    /// Not [`SIGNATURE_LEN`] bytes.
    #[error("signature of {0} bytes (expected {SIGNATURE_LEN})")]
    Length(usize),
    /// An unknown scheme byte.
    #[error("unknown signature scheme {0}")]
    Scheme(u8),
    /// A tree signature's depth is 0 or above [`MAX_TREE_DEPTH`], or its index is past the
    /// tree's width.
    #[error("tree signature of depth {depth} with leaf {index}")]
    Tree {
        /// The depth it names.
        depth: u8,
        /// The leaf index it names.
        index: u16,
    },
}

impl VersionSignature {
    /// The framed bytes stored and sent with the version.
    pub fn encode(&self) -> Vec<u8> {
        let depth = self.tree.as_ref().map_or(0, TreePath::depth);
        let mut out = Vec::with_capacity(tree_signature_len(depth));
        let flag = if self.tree.is_some() { TREE_FLAG } else { 0 };
        out.push(self.scheme.code() | flag);
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.bytes);
        if let Some(tree) = &self.tree {
            out.push(depth);
            out.extend_from_slice(&tree.index.to_be_bytes());
            for s in &tree.siblings {
                out.extend_from_slice(s);
            }
        }
        out
    }

    /// Reads framed bytes.
    pub fn decode(b: &[u8]) -> Result<Self, SignatureFormatError> {
        let Some(&code) = b.first() else {
            return Err(SignatureFormatError::Length(0));
        };
        let is_tree = code & TREE_FLAG != 0;
        if b.len() < SIGNATURE_LEN || (!is_tree && b.len() != SIGNATURE_LEN) {
            return Err(SignatureFormatError::Length(b.len()));
        }
        let scheme =
            Scheme::from_code(code & !TREE_FLAG).ok_or(SignatureFormatError::Scheme(code))?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&b[1..9]);
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(&b[9..SIGNATURE_LEN]);
        let tree = if is_tree {
            Some(decode_path(&b[SIGNATURE_LEN..])?)
        } else {
            None
        };
        Ok(Self {
            scheme,
            key_id: KeyId(key_id),
            bytes,
            tree,
        })
    }
}

/// Reads a tree signature's depth, index and path (what follows the plain framing).
fn decode_path(b: &[u8]) -> Result<TreePath, SignatureFormatError> {
    let (&depth, rest) = b
        .split_first()
        .ok_or(SignatureFormatError::Length(SIGNATURE_LEN))?;
    let full = tree_signature_len(depth);
    if rest.len() < 2 || SIGNATURE_LEN + b.len() != full {
        return Err(SignatureFormatError::Length(SIGNATURE_LEN + b.len()));
    }
    let index = u16::from_be_bytes([rest[0], rest[1]]);
    if depth == 0 || depth > MAX_TREE_DEPTH || u32::from(index) >= 1u32 << depth {
        return Err(SignatureFormatError::Tree { depth, index });
    }
    let siblings = rest[2..]
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(TreePath { index, siblings })
}

/// Why a received version's signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureFault {
    /// The version carries no signature.
    Unsigned,
    /// Its signer's certificate is not known (yet): not in `_nodes`, not a peer's.
    UnknownSigner,
    /// Its signer's certificate is revoked in `_policy`.
    Revoked,
    /// The signature does not verify, or its signer is not the version's origin.
    Invalid,
}

impl SignatureFault {
    /// The label counted in `rejected_by_reason` (and the prefix of the refusal's sentence).
    pub fn label(self) -> &'static str {
        match self {
            SignatureFault::Unsigned => "unsigned",
            SignatureFault::UnknownSigner => "unknown_signer",
            SignatureFault::Revoked => "revoked",
            SignatureFault::Invalid => "signature",
        }
    }
}

/// The first refused version of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRefusal {
    /// Its index in the batch.
    pub index: usize,
    /// Why.
    pub fault: SignatureFault,
    /// A sentence for the log, naming the version.
    pub detail: String,
}

/// Checks the origin signatures of received versions: the node's keyring implements it, the
/// sync session calls it on every received batch before anything is buffered for applying.
pub trait SignatureCheck: Send + Sync + fmt::Debug {
    /// The first version of `versions` whose signature is refused, if any.
    fn first_bad(&self, versions: &[Version]) -> Option<SignatureRefusal>;
    /// A number that grows whenever the checker learns a certificate: a stream refused for an
    /// unknown signer is worth another try once it has grown.
    fn generation(&self) -> u64;
}

/// The bytes an origin signs for `v`: its dot, collection, key, HLC, causal context, author
/// and value (as length and SHA-256, or a tombstone marker). Hashes the value.
pub fn signed_message(v: &Version) -> Vec<u8> {
    signed_message_of(&v.collection, &v.key, &v.header(), v.author.as_deref())
}

/// [`signed_message`] from a header whose value hash is already computed.
pub fn signed_message_of(
    collection: &str,
    key: &str,
    h: &VersionHeader,
    author: Option<&str>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(160 + key.len() + h.context.len() * 24);
    m.extend_from_slice(VERSION_DOMAIN);
    field(&mut m, h.dot.origin.as_str().as_bytes());
    m.extend_from_slice(&h.dot.counter.to_be_bytes());
    field(&mut m, collection.as_bytes());
    field(&mut m, key.as_bytes());
    m.extend_from_slice(&h.hlc.ms.to_be_bytes());
    m.extend_from_slice(&h.hlc.logical.to_be_bytes());
    m.extend_from_slice(&(h.context.len() as u64).to_be_bytes());
    for (origin, counter) in h.context.iter() {
        field(&mut m, origin.as_str().as_bytes());
        m.extend_from_slice(&counter.to_be_bytes());
    }
    match author {
        None => m.push(0),
        Some(a) => {
            m.push(1);
            field(&mut m, a.as_bytes());
        }
    }
    match h.value {
        crate::ValueMeta::Tombstone => m.push(0),
        crate::ValueMeta::Present { len, hash } => {
            m.push(1);
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&hash);
        }
    }
    m
}

/// Appends a length-prefixed field, so no two different versions share signed bytes.
fn field(m: &mut Vec<u8>, b: &[u8]) {
    m.extend_from_slice(&(b.len() as u64).to_be_bytes());
    m.extend_from_slice(b);
}

/// The `_nodes` key of node `node`'s certificate `key_id`.
pub fn nodes_key(node: &str, key_id: KeyId) -> String {
    format!("{node}/{key_id}")
}

/// Splits a `_nodes` key into its node and key id, when it is one.
pub fn parse_nodes_key(key: &str) -> Option<(&str, KeyId)> {
    let (node, id) = key.split_once('/')?;
    crate::names::validate_node_name(node).ok()?;
    Some((node, KeyId::from_hex(id)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, Hlc, ReplicaId, VersionVector};

    fn version() -> Version {
        let origin = ReplicaId::new("hefei", 1).expect("id");
        let mut context = VersionVector::default();
        context.raise(&ReplicaId::new("gov", 2).expect("id"), 4);
        Version {
            collection: "situation".into(),
            key: "river/nanfei".into(),
            dot: Dot { origin, counter: 7 },
            hlc: Hlc {
                ms: 1_700_000_000_000,
                logical: 3,
            },
            context,
            value: Some(b"7.5 m".to_vec()),
            author: Some("li@hefei".into()),
            signature: None,
        }
    }

    /// A change made to a version.
    #[test]
    fn every_signed_field_changes_the_message() {
        let base = signed_message(&version());
        let changes: Vec<fn(&mut Version)> = vec![
            |v| v.dot.counter += 1,
            |v| v.collection.push('x'),
            |v| v.key.push('x'),
            |v| v.hlc.ms += 1,
            |v| v.hlc.logical += 1,
            |v| v.context = VersionVector::default(),
            |v| v.author = Some("wang@hefei".into()),
            |v| v.author = None,
            |v| v.value = Some(b"7.6 m".to_vec()),
            |v| v.value = None,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut v = version();
            change(&mut v);
            assert_ne!(signed_message(&v), base, "change {i} is not covered");
        }
        let mut v = version();
        v.signature = Some(vec![1; SIGNATURE_LEN]);
        assert_eq!(
            signed_message(&v),
            base,
            "the signature is not part of what it signs"
        );
    }

    #[test]
    fn length_prefixes_keep_collection_and_key_apart() {
        let mut a = version();
        a.collection = "ab".into();
        a.key = "c".into();
        let mut b = version();
        b.collection = "a".into();
        b.key = "bc".into();
        assert_ne!(signed_message(&a), signed_message(&b));
    }

    #[test]
    fn signatures_round_trip_and_bad_frames_are_refused() {
        let s = VersionSignature {
            scheme: Scheme::EcdsaP256,
            key_id: KeyId::of_cert(b"cert"),
            bytes: [9; 64],
            tree: None,
        };
        assert_eq!(VersionSignature::decode(&s.encode()), Ok(s.clone()));
        let mut bad = s.encode();
        bad[0] = 7;
        assert_eq!(
            VersionSignature::decode(&bad),
            Err(SignatureFormatError::Scheme(7))
        );
        assert_eq!(
            VersionSignature::decode(&bad[..10]),
            Err(SignatureFormatError::Length(10))
        );
    }

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn every_leaf_s_path_leads_to_the_root_and_no_other_leaf_s_does() {
        for n in [2, 3, 4, 5, 17, 64, 255, 256] {
            let ls = leaves(n);
            let tree = SignedTree::build(&ls).expect("tree");
            assert_eq!(1usize << tree.depth, n.next_power_of_two());
            for (i, (leaf, path)) in ls.iter().zip(&tree.paths).enumerate() {
                assert_eq!(path.depth(), tree.depth);
                assert_eq!(path.root(*leaf), tree.root, "leaf {i} of {n}");
                let other = ls[(i + 1) % n];
                assert_ne!(
                    path.root(other),
                    tree.root,
                    "leaf {i} of {n} took another leaf"
                );
                let mut moved = path.clone();
                moved.index ^= 1;
                assert_ne!(
                    moved.root(*leaf),
                    tree.root,
                    "leaf {i} of {n} at another index"
                );
            }
        }
        assert_eq!(SignedTree::build(&leaves(1)), None);
        assert_eq!(SignedTree::build(&leaves(257)), None);
    }

    #[test]
    fn tree_signatures_round_trip_and_bad_paths_are_refused() {
        let tree = SignedTree::build(&leaves(5)).expect("tree");
        let s = VersionSignature {
            scheme: Scheme::Ed25519,
            key_id: KeyId::of_cert(b"cert"),
            bytes: [3; 64],
            tree: Some(tree.paths[4].clone()),
        };
        let framed = s.encode();
        assert_eq!(framed.len(), tree_signature_len(3));
        assert_eq!(VersionSignature::decode(&framed), Ok(s.clone()));
        // One hash short, one too many, a depth past the limit, an index past the width.
        let short = &framed[..framed.len() - 1];
        assert!(matches!(
            VersionSignature::decode(short),
            Err(SignatureFormatError::Length(_))
        ));
        let mut long = framed.clone();
        long.extend_from_slice(&[0; 32]);
        assert!(VersionSignature::decode(&long).is_err());
        let mut deep = framed[..SIGNATURE_LEN].to_vec();
        deep.push(MAX_TREE_DEPTH + 1);
        deep.extend_from_slice(&[0, 0]);
        deep.extend(std::iter::repeat_n(0u8, 32 * (MAX_TREE_DEPTH as usize + 1)));
        assert_eq!(
            VersionSignature::decode(&deep),
            Err(SignatureFormatError::Tree {
                depth: MAX_TREE_DEPTH + 1,
                index: 0
            })
        );
        let mut wide = framed.clone();
        wide[SIGNATURE_LEN + 1..SIGNATURE_LEN + 3].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(
            VersionSignature::decode(&wide),
            Err(SignatureFormatError::Tree { depth: 3, index: 8 })
        );
        // A plain signature with a path after it is not a plain signature.
        let mut plain_long = framed.clone();
        plain_long[0] &= !TREE_FLAG;
        assert!(VersionSignature::decode(&plain_long).is_err());
        assert_eq!(
            VersionSignature::decode(&[]),
            Err(SignatureFormatError::Length(0))
        );
    }

    #[test]
    fn a_tree_s_signed_bytes_name_its_depth_and_root_under_their_own_domain() {
        let m = tree_message(&[5; 32], 3);
        assert!(m.starts_with(TREE_DOMAIN));
        assert_ne!(m, tree_message(&[5; 32], 4));
        assert_ne!(m, tree_message(&[6; 32], 3));
        assert!(!signed_message(&version()).starts_with(TREE_DOMAIN));
    }

    #[test]
    fn nodes_keys_name_a_node_and_a_key_id() {
        let id = KeyId::of_cert(b"cert");
        let key = nodes_key("hefei", id);
        assert_eq!(parse_nodes_key(&key), Some(("hefei", id)));
        assert_eq!(parse_nodes_key("hefei"), None);
        assert_eq!(parse_nodes_key("hefei/zz"), None);
        assert_eq!(parse_nodes_key(&key.to_uppercase()), None);
        assert_eq!(KeyId::from_hex(&id.to_string()), Some(id));
    }
}
