//! Origin signatures: this node's [`NodeSigner`] signs every version it originates with its
//! node key, and the [`Keyring`] verifies received versions against their signers'
//! certificates (learnt from the `_nodes` system collection and from peers' TLS certificates,
//! each checked against the CA; revocations come from `_policy`).
//!
//! Ed25519 signatures of a batch are verified together (one batch equation), P-256 ones one by
//! one; either way this runs in the session task, never on the store's writer thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use officesync_protocol::signing::{
    self, KeyId, Scheme, SignatureCheck, SignatureFault, SignatureRefusal, VersionSignature,
    NODES_COLLECTION,
};
use officesync_protocol::status::{status_entry_refusal, STATUS_COLLECTION};
use officesync_protocol::{Version, VersionHeader};
use ring::signature::{self as rsig, KeyPair};
use thiserror::Error;

use crate::pki::{self, PkiError};
use crate::policy::PolicyHandle;
use crate::replica::{Replica, ReplicaError};

/// Why this node's signing key cannot be used.
#[derive(Debug, Error)]
pub enum SigningError {
    /// The certificate or key file could not be read or parsed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The key is not one of the supported algorithms, or does not load.
    #[error("tls.key cannot sign versions: {0}")]
    Key(String),
}

/// What a detached signature ([`NodeSigner::sign_bytes`]) is for: a NUL-terminated label with
/// no other NUL, other than the version signatures' own. Messages of two such labels never
/// share a prefix, so a signature made for one purpose never verifies for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Domain(&'static [u8]);

impl Domain {
    /// The domain labelled `label`; a label that breaks the rules above fails the build when
    /// used in a constant (and panics otherwise).
    pub const fn new(label: &'static [u8]) -> Self {
        assert!(
            label.len() >= 2 && label[label.len() - 1] == 0,
            "a domain ends in NUL"
        );
        let mut i = 0;
        while i + 1 < label.len() {
            assert!(label[i] != 0, "a domain holds one NUL, at its end");
            i += 1;
        }
        let version = signing::VERSION_DOMAIN;
        let mut same = label.len() == version.len();
        let mut j = 0;
        while same && j < label.len() {
            same = label[j] == version[j];
            j += 1;
        }
        assert!(!same, "the version signatures' domain is taken");
        Self(label)
    }

    /// The label.
    pub fn label(&self) -> &'static [u8] {
        self.0
    }

    /// The message signed for `bytes`: the label, then the SHA-256 of `bytes`.
    fn message(&self, bytes: &[u8]) -> Vec<u8> {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut m = Vec::with_capacity(self.0.len() + 32);
        m.extend_from_slice(self.0);
        m.extend_from_slice(digest.as_ref());
        m
    }
}

/// Why a detached signature ([`Keyring::verify_bytes`]) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DetachedError {
    /// The signature bytes are not a framed signature.
    #[error("the signature is malformed: {0}")]
    Format(#[from] officesync_protocol::signing::SignatureFormatError),
    /// Made with a certificate this node does not know.
    #[error("signed with certificate {0}, which this node does not know")]
    UnknownSigner(KeyId),
    /// Made with a revoked certificate.
    #[error("signed with certificate {serial} of {node}, which is revoked")]
    Revoked {
        /// The signer.
        node: String,
        /// Its certificate's serial (hex).
        serial: String,
    },
    /// Does not verify: the bytes (or the signature) were altered.
    #[error("the signature of {node} does not verify: altered or forged")]
    Invalid {
        /// The signer the signature names.
        node: String,
    },
}

/// The private key half: signs this node's versions.
enum SigningKey {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    EcdsaP256(Box<(rsig::EcdsaKeyPair, ring::rand::SystemRandom)>),
}

/// Signs the versions this node originates with its node key.
pub struct NodeSigner {
    key: SigningKey,
    key_id: KeyId,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSigner")
            .field("key_id", &self.key_id.to_string())
            .finish_non_exhaustive()
    }
}

impl NodeSigner {
    /// The signer of the node whose certificate is `cert_der` and PKCS#8 key `key_der`.
    pub fn new(cert_der: Vec<u8>, key_der: &[u8]) -> Result<Self, SigningError> {
        let (scheme, public) = pki::public_key_of(&cert_der)?;
        let key = match scheme {
            Scheme::Ed25519 => {
                // ring validates the PKCS#8 document; dalek signs (faster here) with its seed.
                rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(key_der)
                    .map_err(|e| SigningError::Key(e.to_string()))?;
                let seed = ed25519_seed(key_der)
                    .ok_or_else(|| SigningError::Key("no Ed25519 seed in the key".to_owned()))?;
                SigningKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
            Scheme::EcdsaP256 => {
                let rng = ring::rand::SystemRandom::new();
                let k = rsig::EcdsaKeyPair::from_pkcs8(
                    &rsig::ECDSA_P256_SHA256_FIXED_SIGNING,
                    key_der,
                    &rng,
                )
                .map_err(|e| SigningError::Key(e.to_string()))?;
                SigningKey::EcdsaP256(Box::new((k, rng)))
            }
        };
        let key_public = match &key {
            SigningKey::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
            SigningKey::EcdsaP256(k) => k.0.public_key().as_ref().to_vec(),
        };
        if key_public != public {
            return Err(SigningError::Key(
                "the key is not the key of tls.cert".to_owned(),
            ));
        }
        Ok(Self {
            key,
            key_id: KeyId::of_cert(&cert_der),
            cert_der,
        })
    }

    /// Loads the signer from the node's PEM certificate and key files.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, SigningError> {
        let cert_der = pki::load_cert_ders(cert)?
            .into_iter()
            .next()
            .ok_or_else(|| SigningError::Key("tls.cert holds no certificate".to_owned()))?;
        Self::new(cert_der, &pki::load_key_der(key)?)
    }

    /// The id of this node's certificate.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// This node's certificate (DER), as published in `_nodes`.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The framed signature of a version of `collection`/`key` with header `h`.
    pub fn sign(
        &self,
        collection: &str,
        key: &str,
        h: &VersionHeader,
        author: Option<&str>,
    ) -> Vec<u8> {
        let message = signing::signed_message_of(collection, key, h, author);
        self.sign_message(&message)
    }

    /// The framed signature of `bytes` under `domain` (a detached signature, e.g. of a whole
    /// offline bundle): what is signed is the domain label and the SHA-256 of `bytes`, so it
    /// can never be mistaken for a version signature or one of another domain.
    pub fn sign_bytes(&self, domain: Domain, bytes: &[u8]) -> Vec<u8> {
        self.sign_message(&domain.message(bytes))
    }

    /// Signs `message` (already domain-separated by the caller, e.g.
    /// [`signing::signed_message_of`] for a version).
    pub(crate) fn sign_message(&self, message: &[u8]) -> Vec<u8> {
        let (scheme, bytes) = match &self.key {
            SigningKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                (Scheme::Ed25519, k.sign(message).to_bytes().to_vec())
            }
            SigningKey::EcdsaP256(k) => {
                let (k, rng) = &**k;
                // Fails only when the system's randomness does: nothing to sign with then.
                let sig = k.sign(rng, message).map(|s| s.as_ref().to_vec());
                (Scheme::EcdsaP256, sig.unwrap_or_default())
            }
        };
        let mut fixed = [0u8; 64];
        if bytes.len() == 64 {
            fixed.copy_from_slice(&bytes);
        }
        VersionSignature {
            scheme,
            key_id: self.key_id,
            bytes: fixed,
        }
        .encode()
    }
}

/// The 32-byte seed of an Ed25519 PKCS#8 key (RFC 8410: the private key is an OCTET STRING
/// holding the OCTET STRING of the seed).
fn ed25519_seed(pkcs8: &[u8]) -> Option<[u8; 32]> {
    let at = pkcs8
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])?
        + 4;
    pkcs8.get(at..at + 32)?.try_into().ok()
}

/// One known signer: a certificate that chains to the CA.
#[derive(Debug, Clone)]
struct KnownSigner {
    node: String,
    serial_hex: String,
    public: PublicKey,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Ed25519(VerifyingKey),
    EcdsaP256(Vec<u8>),
}

/// Why a certificate was not taken into the keyring.
#[derive(Debug, Error)]
pub enum LearnError {
    /// Not a certificate this CA issued, or not a node certificate.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The certificate's key is not usable for signatures.
    #[error("certificate key: {0}")]
    Key(String),
}

/// The certificates of every signer this node knows, checked against the CA, and the
/// verification of received versions against them.
#[derive(Debug)]
pub struct Keyring {
    ca_der: Vec<u8>,
    policy: PolicyHandle,
    signers: RwLock<HashMap<KeyId, KnownSigner>>,
    generation: AtomicU64,
    /// Versions without a signature are taken (`sync.accept_unsigned`).
    accept_unsigned: bool,
    /// Signatures verified lately: a session's stream reader verifies each batch as it
    /// arrives, so the session (which waits for the store between batches) finds the work
    /// done.
    verified: VerifiedCache,
}

impl Keyring {
    /// An empty keyring for the CA `ca_der`, with revocations from `policy`.
    pub fn new(ca_der: Vec<u8>, policy: PolicyHandle) -> Self {
        Self {
            ca_der,
            policy,
            signers: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            accept_unsigned: false,
            verified: VerifiedCache::default(),
        }
    }

    /// Takes versions without a signature (a cluster upgrading from release 0.1.0).
    pub fn accepting_unsigned(mut self, accept: bool) -> Self {
        self.accept_unsigned = accept;
        self
    }

    /// Takes the certificate `der` into the keyring if the CA issued it (whatever its validity
    /// period: versions signed while it was valid stay verifiable after it expires). Returns
    /// its key id and node name.
    pub fn learn(&self, der: &[u8]) -> Result<(KeyId, String), LearnError> {
        let id = KeyId::of_cert(der);
        if let Some(known) = self.read().get(&id) {
            return Ok((id, known.node.clone()));
        }
        pki::verify_issued_by(der, &self.ca_der)?;
        let identity = pki::identity_from_der(der)?;
        let (scheme, public) = pki::public_key_of(der)?;
        let public = match scheme {
            Scheme::Ed25519 => {
                let bytes: [u8; 32] = public
                    .as_slice()
                    .try_into()
                    .map_err(|_| LearnError::Key("Ed25519 key is not 32 bytes".to_owned()))?;
                PublicKey::Ed25519(
                    VerifyingKey::from_bytes(&bytes).map_err(|e| LearnError::Key(e.to_string()))?,
                )
            }
            Scheme::EcdsaP256 => PublicKey::EcdsaP256(public),
        };
        let node = identity.name.clone();
        let mut signers = self.signers.write().unwrap_or_else(|e| e.into_inner());
        signers.insert(
            id,
            KnownSigner {
                node: identity.name,
                serial_hex: identity.serial_hex,
                public,
            },
        );
        self.generation.fetch_add(1, Ordering::Release);
        Ok((id, node))
    }

    /// How many signers are known.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when no signer is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyId, KnownSigner>> {
        self.signers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A `_nodes` version must be its origin's own certificate, under its own key id; the
    /// certificate is learnt on the way.
    fn check_nodes_entry(&self, v: &Version) -> Result<(), String> {
        let Some((node, id)) = signing::parse_nodes_key(&v.key) else {
            return Err(format!(
                "{NODES_COLLECTION} key {:?} is not NODE/KEYID",
                v.key
            ));
        };
        if node != v.dot.origin.node_name() {
            return Err(format!(
                "{} wrote {NODES_COLLECTION}/{}: a node publishes only its own certificates",
                v.dot.origin.node_name(),
                v.key
            ));
        }
        let Some(der) = &v.value else {
            return Err(format!("{NODES_COLLECTION}/{} is deleted", v.key));
        };
        if KeyId::of_cert(der) != id {
            return Err(format!(
                "{NODES_COLLECTION}/{} holds another certificate",
                v.key
            ));
        }
        match self.learn(der) {
            Ok((_, name)) if name == node => Ok(()),
            Ok((_, name)) => Err(format!(
                "{NODES_COLLECTION}/{} holds the certificate of {name}",
                v.key
            )),
            Err(e) => Err(format!("{NODES_COLLECTION}/{}: {e}", v.key)),
        }
    }

    /// Checks `versions`: the first refused one, if any. Everything but the cryptography is
    /// checked first; then every Ed25519 signature of the batch in one batch verification (one
    /// by one only when it fails, to find the first bad one), P-256 ones one by one.
    pub fn check(&self, versions: &[Version]) -> Option<SignatureRefusal> {
        let refuse = |index: usize, fault: SignatureFault, detail: String| SignatureRefusal {
            index,
            fault,
            detail,
        };
        // Certificates travelling in this batch are learnt before the rest is checked.
        for (i, v) in versions.iter().enumerate() {
            if v.collection == NODES_COLLECTION {
                if let Err(e) = self.check_nodes_entry(v) {
                    return Some(refuse(
                        i,
                        SignatureFault::Invalid,
                        format!("{}: {e}", v.dot),
                    ));
                }
            }
            // A status report is its origin's, about itself only (like its certificates).
            if v.collection == STATUS_COLLECTION {
                if let Some(e) = status_entry_refusal(v) {
                    return Some(refuse(
                        i,
                        SignatureFault::Invalid,
                        format!("{}: {e}", v.dot),
                    ));
                }
            }
        }
        let policy = self.policy.current();
        let signers = self.read();
        let mut ed: Vec<(usize, Vec<u8>, EdSignature, VerifyingKey)> = Vec::new();
        let mut eds: Vec<[u8; 32]> = Vec::new();
        let mut first: Option<SignatureRefusal> = None;
        for (i, v) in versions.iter().enumerate() {
            let (sig, signer) = match self.signer_of(v, &signers, &policy) {
                Ok(Some(found)) => found,
                Ok(None) => continue, // unsigned, and unsigned versions are accepted
                Err((fault, detail)) => {
                    first = Some(refuse(i, fault, detail));
                    break;
                }
            };
            let message = signing::signed_message(v);
            let seen = verified_key(&message, &sig.bytes);
            if self.verified.contains(&seen) {
                continue; // verified before (by the stream's reader, ahead of the session)
            }
            let ok = match (&signer.public, sig.scheme) {
                (PublicKey::Ed25519(k), Scheme::Ed25519) => {
                    ed.push((i, message, EdSignature::from_bytes(&sig.bytes), *k));
                    eds.push(seen);
                    true
                }
                (PublicKey::EcdsaP256(k), Scheme::EcdsaP256) => {
                    rsig::UnparsedPublicKey::new(&rsig::ECDSA_P256_SHA256_FIXED, k)
                        .verify(&message, &sig.bytes)
                        .is_ok()
                }
                _ => false,
            };
            if !ok {
                first = Some(bad_signature(i, v));
                break;
            }
            if sig.scheme == Scheme::EcdsaP256 {
                self.verified.insert(seen);
            }
        }
        drop(signers);
        // Only Ed25519 signatures before the first refusal matter.
        let limit = first.as_ref().map_or(usize::MAX, |r| r.index);
        let keep = ed.iter().take_while(|(i, ..)| *i < limit).count();
        ed.truncate(keep);
        eds.truncate(keep);
        // The signatures before the first bad one verified: remembered either way, so a batch
        // replayed with a bad version at its end costs the full search only once.
        let bad = first_bad_ed25519(&ed);
        for seen in &eds[..bad.unwrap_or(eds.len())] {
            self.verified.insert(*seen);
        }
        if let Some(pos) = bad {
            let i = ed[pos].0;
            return Some(bad_signature(i, &versions[i]));
        }
        first
    }
}

impl Keyring {
    /// Everything about `v`'s signature but the cryptography: it is there (or unsigned
    /// versions are accepted: `None`), well framed, by a known certificate of the version's
    /// origin that is not revoked.
    fn signer_of<'k>(
        &self,
        v: &Version,
        signers: &'k HashMap<KeyId, KnownSigner>,
        policy: &officesync_protocol::policy::Policy,
    ) -> Result<Option<(VersionSignature, &'k KnownSigner)>, (SignatureFault, String)> {
        let Some(raw) = &v.signature else {
            if self.accept_unsigned {
                return Ok(None);
            }
            let why = format!("version {} carries no signature", v.dot);
            return Err((SignatureFault::Unsigned, why));
        };
        let sig = VersionSignature::decode(raw)
            .map_err(|e| (SignatureFault::Invalid, format!("version {}: {e}", v.dot)))?;
        let signer = signers.get(&sig.key_id).ok_or_else(|| {
            let why = format!(
                "version {} is signed by certificate {}, which this node does not know",
                v.dot, sig.key_id
            );
            (SignatureFault::UnknownSigner, why)
        })?;
        if signer.node != v.dot.origin.node_name() {
            let why = format!(
                "version {} is signed by {}, not by its origin",
                v.dot, signer.node
            );
            return Err((SignatureFault::Invalid, why));
        }
        if policy.is_revoked(&signer.node, Some(&signer.serial_hex)) {
            let why = format!(
                "version {} is signed by certificate {} of {}, which is revoked",
                v.dot, signer.serial_hex, signer.node
            );
            return Err((SignatureFault::Revoked, why));
        }
        Ok(Some((sig, signer)))
    }

    /// Checks a detached signature `sig` of `bytes` under `domain` (made by
    /// [`NodeSigner::sign_bytes`]) against the known, unrevoked certificates: the signer's key
    /// id and node name when it verifies.
    pub fn verify_bytes(
        &self,
        domain: Domain,
        bytes: &[u8],
        sig: &[u8],
    ) -> Result<(KeyId, String), DetachedError> {
        let sig = VersionSignature::decode(sig)?;
        let signer = self
            .read()
            .get(&sig.key_id)
            .cloned()
            .ok_or(DetachedError::UnknownSigner(sig.key_id))?;
        if self
            .policy
            .current()
            .is_revoked(&signer.node, Some(&signer.serial_hex))
        {
            return Err(DetachedError::Revoked {
                node: signer.node,
                serial: signer.serial_hex,
            });
        }
        let message = domain.message(bytes);
        let ok = match (&signer.public, sig.scheme) {
            (PublicKey::Ed25519(k), Scheme::Ed25519) => k
                .verify_strict(&message, &EdSignature::from_bytes(&sig.bytes))
                .is_ok(),
            (PublicKey::EcdsaP256(k), Scheme::EcdsaP256) => {
                rsig::UnparsedPublicKey::new(&rsig::ECDSA_P256_SHA256_FIXED, k)
                    .verify(&message, &sig.bytes)
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            Ok((sig.key_id, signer.node))
        } else {
            Err(DetachedError::Invalid { node: signer.node })
        }
    }
}

impl SignatureCheck for Keyring {
    fn first_bad(&self, versions: &[Version]) -> Option<SignatureRefusal> {
        self.check(versions)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Most signatures remembered as verified (about 3 MiB).
const VERIFIED_CAPACITY: usize = 1 << 16;

/// A bounded set of `H(signed message || signature)` of verified versions, oldest forgotten
/// first. It binds the whole message, so an altered version never matches a verified one.
#[derive(Debug, Default)]
struct VerifiedCache {
    inner: std::sync::Mutex<VerifiedSet>,
}

/// The remembered keys, and their order for forgetting.
type VerifiedSet = (
    std::collections::HashSet<[u8; 32]>,
    std::collections::VecDeque<[u8; 32]>,
);

impl VerifiedCache {
    fn contains(&self, key: &[u8; 32]) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        if set.insert(key) {
            order.push_back(key);
            if order.len() > VERIFIED_CAPACITY {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }
}

/// The cache key of a verified signature.
fn verified_key(message: &[u8], sig: &[u8; 64]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(message);
    ctx.update(sig);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn bad_signature(index: usize, v: &Version) -> SignatureRefusal {
    SignatureRefusal {
        index,
        fault: SignatureFault::Invalid,
        detail: format!(
            "the signature of version {} ({}/{}) does not verify: altered or forged",
            v.dot, v.collection, v.key
        ),
    }
}

/// The position in `items` of the first Ed25519 signature that does not verify.
fn first_bad_ed25519(items: &[(usize, Vec<u8>, EdSignature, VerifyingKey)]) -> Option<usize> {
    match items {
        [] => return None,
        [(_, m, s, k)] => return k.verify_strict(m, s).is_err().then_some(0),
        _ => {}
    }
    let messages: Vec<&[u8]> = items.iter().map(|(_, m, _, _)| m.as_slice()).collect();
    let sigs: Vec<EdSignature> = items.iter().map(|(_, _, s, _)| *s).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(_, _, _, k)| *k).collect();
    if ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok() {
        return None;
    }
    items
        .iter()
        .position(|(_, m, s, k)| k.verify_strict(m, s).is_err())
}

impl Keyring {
    /// Learns every certificate held in `_nodes` (a damaged entry is logged and skipped: the
    /// versions it would verify are refused, never trusted).
    pub async fn load_from(&self, replica: &Replica) -> Result<usize, ReplicaError> {
        let mut after: Option<String> = None;
        let mut learnt = 0;
        loop {
            let page = replica
                .scan(NODES_COLLECTION, "", after.as_deref(), 256)
                .await?;
            for r in &page.records {
                match r.sibling.value.as_deref().map(|der| self.learn(der)) {
                    Some(Ok(_)) => learnt += 1,
                    Some(Err(e)) => {
                        tracing::warn!(key = %r.key, error = %e, "skipping a certificate in _nodes")
                    }
                    None => {}
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(learnt),
            }
        }
    }
}

/// Publishes this node's certificate in `_nodes` (once: a write only when it is not there),
/// so every node can verify the versions it signs.
pub async fn publish_certificate(
    replica: &Replica,
    signer: &NodeSigner,
) -> Result<(), ReplicaError> {
    let key = signing::nodes_key(replica.node(), signer.key_id());
    let held = replica.get(NODES_COLLECTION, &key).await?;
    let current = held
        .as_ref()
        .is_some_and(|r| r.winner().value.as_deref() == Some(signer.cert_der()));
    if !current {
        replica
            .write(NODES_COLLECTION, &key, Some(signer.cert_der().to_vec()))
            .await?;
        tracing::info!(key = %key, "published this node's certificate in _nodes");
    }
    Ok(())
}

#[cfg(test)]
impl Keyring {
    /// How many signatures are remembered as verified.
    pub(crate) fn verified_len(&self) -> usize {
        self.verified
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .len()
    }
}

#[cfg(test)]
pub(crate) mod tests;
