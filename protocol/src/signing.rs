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

/// Bytes of a framed signature: scheme, key id, 64 signature bytes.
pub const SIGNATURE_LEN: usize = 1 + 8 + 64;

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

/// The signature a version carries: which scheme, which certificate, and the signature bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSignature {
    /// The algorithm.
    pub scheme: Scheme,
    /// The signer's certificate.
    pub key_id: KeyId,
    /// The 64 signature bytes.
    pub bytes: [u8; 64],
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
}

impl VersionSignature {
    /// The framed bytes stored and sent with the version.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNATURE_LEN);
        out.push(self.scheme.code());
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.bytes);
        out
    }

    /// Reads framed bytes.
    pub fn decode(b: &[u8]) -> Result<Self, SignatureFormatError> {
        if b.len() != SIGNATURE_LEN {
            return Err(SignatureFormatError::Length(b.len()));
        }
        let scheme = Scheme::from_code(b[0]).ok_or(SignatureFormatError::Scheme(b[0]))?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&b[1..9]);
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(&b[9..]);
        Ok(Self {
            scheme,
            key_id: KeyId(key_id),
            bytes,
        })
    }
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
