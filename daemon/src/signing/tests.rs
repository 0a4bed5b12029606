use officesync_protocol::policy::Policy;
use officesync_protocol::signing::{nodes_key, signed_message, SignatureFault, NODES_COLLECTION};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};

use super::*;
use crate::pki::{self, IssueOptions, KeyType};

/// A CA with bundles for `names` (each of `key_type`), in a temporary directory (also used
/// by the sync reader's tests).
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        pki::init_ca(&dir.path().join("ca"), false).expect("ca");
        Self { dir }
    }

    pub(crate) fn issue(&self, name: &str, key_type: KeyType) -> (Vec<u8>, Vec<u8>) {
        let out = self.dir.path().join(format!("{name}-{key_type:?}"));
        let opts = IssueOptions {
            key_type,
            ..IssueOptions::default()
        };
        let issued = pki::issue(name, &self.dir.path().join("ca"), &out, &opts).expect("issue");
        let cert = pki::load_cert_ders(&issued.cert_path).expect("cert")[0].clone();
        let key = pki::load_key_der(&issued.key_path).expect("key");
        (cert, key)
    }

    pub(crate) fn signer(&self, name: &str, key_type: KeyType) -> NodeSigner {
        let (cert, key) = self.issue(name, key_type);
        NodeSigner::new(cert, &key).expect("signer")
    }

    pub(crate) fn ca_der(&self) -> Vec<u8> {
        pki::load_cert_ders(&self.dir.path().join("ca").join("ca.pem")).expect("ca")[0].clone()
    }

    pub(crate) fn keyring(&self, policy: Policy) -> Keyring {
        Keyring::new(self.ca_der(), PolicyHandle::fixed(policy))
    }
}

pub(crate) fn version(node: &str, counter: u64, value: &[u8]) -> Version {
    Version {
        collection: "situation".into(),
        key: format!("k{counter}"),
        dot: Dot {
            origin: ReplicaId::new(node, 1).expect("id"),
            counter,
        },
        hlc: Hlc {
            ms: 1_700_000_000_000 + counter,
            logical: 0,
        },
        context: VersionVector::default(),
        value: Some(value.to_vec()),
        author: Some(format!("li@{node}")),
        signature: None,
    }
}

pub(crate) fn signed(signer: &NodeSigner, mut v: Version) -> Version {
    v.signature = Some(signer.sign(&v.collection, &v.key, &v.header(), v.author.as_deref()));
    v
}

pub(crate) fn batch(signer: &NodeSigner, node: &str, n: u64) -> Vec<Version> {
    (1..=n)
        .map(|i| signed(signer, version(node, i, format!("value {i}").as_bytes())))
        .collect()
}

#[test]
fn signed_versions_of_both_key_types_verify_and_any_alteration_is_refused() {
    let pki = Pki::new();
    for key_type in [KeyType::Ed25519, KeyType::EcdsaP256] {
        let signer = pki.signer("hefei", key_type);
        let ring = pki.keyring(Policy::default());
        ring.learn(signer.cert_der()).expect("learn");
        let good = batch(&signer, "hefei", 20);
        assert_eq!(
            ring.check(&good),
            None,
            "{key_type:?}: an honest batch verifies"
        );

        let alterations: Vec<fn(&mut Version)> = vec![
            |v| v.value = Some(b"forged".to_vec()),
            |v| v.value = None,
            |v| v.hlc.ms += 1,
            |v| v.key.push('x'),
            |v| v.author = Some("wang@hefei".into()),
            |v| v.context.raise(&ReplicaId::new("gov", 1).expect("id"), 3),
        ];
        for (n, alter) in alterations.iter().enumerate() {
            let mut b = good.clone();
            alter(&mut b[13]);
            let r = ring.check(&b).expect("an altered version is refused");
            assert_eq!(
                (r.index, r.fault),
                (13, SignatureFault::Invalid),
                "{key_type:?} alteration {n}: {}",
                r.detail
            );
        }
    }
}

#[test]
fn unsigned_unknown_forged_and_revoked_signers_are_told_apart() {
    let pki = Pki::new();
    let hefei = pki.signer("hefei", KeyType::Ed25519);
    let gov = pki.signer("gov", KeyType::Ed25519);
    let ring = pki.keyring(Policy::default());
    ring.learn(gov.cert_der()).expect("learn");

    let mut unsigned = batch(&gov, "gov", 3);
    unsigned[1].signature = None;
    let r = ring.check(&unsigned).expect("refused");
    assert_eq!((r.index, r.fault), (1, SignatureFault::Unsigned));

    // hefei's certificate is not known yet.
    let r = ring.check(&batch(&hefei, "hefei", 2)).expect("refused");
    assert_eq!((r.index, r.fault), (0, SignatureFault::UnknownSigner));
    let before = ring.generation();
    ring.learn(hefei.cert_der()).expect("learn");
    assert!(
        ring.generation() > before,
        "learning a certificate is a new generation"
    );
    assert_eq!(ring.check(&batch(&hefei, "hefei", 2)), None);

    // The general office signs a version that claims hefei's origin: a forgery.
    let forged = vec![signed(&gov, version("hefei", 1, b"forged"))];
    let r = ring.check(&forged).expect("refused");
    assert_eq!((r.index, r.fault), (0, SignatureFault::Invalid));
    assert!(r.detail.contains("not by its origin"), "{}", r.detail);

    // hefei revoked (every certificate): its versions are refused.
    let (policy, errors) = Policy::from_entries(
        ["gov"],
        [(
            "revoked/hefei",
            br#"{"reason": "laptop stolen"}"#.as_slice(),
        )],
    );
    assert!(errors.is_empty(), "{errors:?}");
    let revoking = pki.keyring(policy);
    revoking.learn(hefei.cert_der()).expect("learn");
    let r = revoking.check(&batch(&hefei, "hefei", 1)).expect("refused");
    assert_eq!(r.fault, SignatureFault::Revoked);
}

#[test]
fn a_certificate_of_another_ca_is_not_learnt() {
    let ours = Pki::new();
    let theirs = Pki::new();
    let stranger = theirs.signer("hefei", KeyType::Ed25519);
    let ring = ours.keyring(Policy::default());
    assert!(ring.learn(stranger.cert_der()).is_err());
    assert!(ring.is_empty());
}

#[test]
fn nodes_entries_teach_certificates_but_only_a_node_s_own() {
    let pki = Pki::new();
    let hefei = pki.signer("hefei", KeyType::Ed25519);
    let gov = pki.signer("gov", KeyType::Ed25519);
    let ring = pki.keyring(Policy::default());

    let entry = |signer: &NodeSigner, origin: &str, cert: &[u8]| {
        let mut v = version(origin, 1, cert);
        v.collection = NODES_COLLECTION.into();
        v.key = nodes_key(origin, KeyId::of_cert(cert));
        v.author = Some(origin.into());
        signed(signer, v)
    };
    // hefei's own entry, then a version of hefei's in the same batch: both verify.
    let mut b = vec![entry(&hefei, "hefei", hefei.cert_der())];
    assert_eq!(ring.check(&b), None);
    b = batch(&hefei, "hefei", 2);
    assert_eq!(
        ring.check(&b),
        None,
        "the certificate was learnt from _nodes"
    );

    // gov publishing hefei's certificate under gov's name is refused.
    let ring = pki.keyring(Policy::default());
    let r = ring
        .check(&[entry(&gov, "gov", hefei.cert_der())])
        .expect("refused");
    assert_eq!(r.fault, SignatureFault::Invalid);
    assert!(r.detail.contains("certificate of hefei"), "{}", r.detail);
}

#[test]
fn batch_verification_finds_the_first_bad_signature_among_many() {
    let pki = Pki::new();
    let signer = pki.signer("hefei", KeyType::Ed25519);
    let ring = pki.keyring(Policy::default());
    ring.learn(signer.cert_der()).expect("learn");
    let mut b = batch(&signer, "hefei", 200);
    let mut sig = b[150].signature.clone().expect("signed");
    sig[20] ^= 1;
    b[150].signature = Some(sig);
    b[170].value = Some(b"later forgery".to_vec());
    let r = ring.check(&b).expect("refused");
    assert_eq!((r.index, r.fault), (150, SignatureFault::Invalid));
    assert_ne!(signed_message(&b[150]), Vec::<u8>::new());
}

#[test]
fn a_key_that_is_not_the_certificate_s_is_refused() {
    let pki = Pki::new();
    let (cert, _) = pki.issue("hefei", KeyType::Ed25519);
    let (_, other_key) = pki.issue("gov", KeyType::Ed25519);
    assert!(NodeSigner::new(cert, &other_key).is_err());
}

#[test]
fn accepting_unsigned_versions_still_verifies_signed_ones() {
    let pki = Pki::new();
    let hefei = pki.signer("hefei", KeyType::Ed25519);
    let ring = pki.keyring(Policy::default()).accepting_unsigned(true);
    ring.learn(hefei.cert_der()).expect("learn");
    let mut b = batch(&hefei, "hefei", 4);
    b[1].signature = None;
    assert_eq!(ring.check(&b), None, "an unsigned version is taken");
    b[3].value = Some(b"altered".to_vec());
    let r = ring.check(&b).expect("a signed one is still verified");
    assert_eq!((r.index, r.fault), (3, SignatureFault::Invalid));
}

#[test]
fn detached_signatures_verify_only_for_their_bytes_their_domain_and_a_known_signer() {
    const ONE: Domain = Domain::new(b"officesync test one\0");
    const TWO: Domain = Domain::new(b"officesync test two\0");
    let pki = Pki::new();
    for key_type in [KeyType::Ed25519, KeyType::EcdsaP256] {
        let signer = pki.signer("gov", key_type);
        let ring = pki.keyring(Policy::default());
        let sig = signer.sign_bytes(ONE, b"a bundle");
        assert_eq!(
            ring.verify_bytes(ONE, b"a bundle", &sig),
            Err(DetachedError::UnknownSigner(signer.key_id()))
        );
        ring.learn(signer.cert_der()).expect("learn");
        assert_eq!(
            ring.verify_bytes(ONE, b"a bundle", &sig),
            Ok((signer.key_id(), "gov".to_owned())),
            "{key_type:?}"
        );
        let invalid = Err(DetachedError::Invalid { node: "gov".into() });
        assert_eq!(ring.verify_bytes(ONE, b"a bundlE", &sig), invalid);
        assert_eq!(ring.verify_bytes(TWO, b"a bundle", &sig), invalid);
        let mut flipped = sig.clone();
        flipped[40] ^= 1;
        assert_eq!(ring.verify_bytes(ONE, b"a bundle", &flipped), invalid);
        assert!(matches!(
            ring.verify_bytes(ONE, b"a bundle", &sig[..10]),
            Err(DetachedError::Format(_))
        ));
        // A version signature is no detached signature, and the other way round.
        let v = signed(&signer, version("gov", 1, b"x"));
        let message = officesync_protocol::signing::signed_message(&v);
        let vsig = v.signature.clone().expect("signed");
        assert_eq!(ring.verify_bytes(ONE, &message, &vsig), invalid);
        let mut posing = v.clone();
        posing.signature = Some(signer.sign_bytes(ONE, &message));
        assert!(ring.check(&[posing]).is_some(), "{key_type:?}");
    }
}

#[test]
#[should_panic(expected = "taken")]
fn the_version_domain_cannot_be_a_detached_domain() {
    let _ = Domain::new(officesync_protocol::signing::VERSION_DOMAIN);
}

#[test]
fn the_good_signatures_before_a_bad_one_are_remembered() {
    let pki = Pki::new();
    let hefei = pki.signer("hefei", KeyType::Ed25519);
    let ring = pki.keyring(Policy::default());
    ring.learn(hefei.cert_der()).expect("learn");
    let mut b = batch(&hefei, "hefei", 10);
    b[9].value = Some(b"replayed with a forgery at the end".to_vec());
    let r = ring.check(&b).expect("refused");
    assert_eq!(r.index, 9);
    assert_eq!(ring.verified_len(), 9);
    // Checked again (a replay), the answer is the same.
    assert_eq!(ring.check(&b).map(|r| r.index), Some(9));
    assert_eq!(ring.verified_len(), 9);
}

#[test]
fn a_status_report_is_refused_unless_its_origin_reports_on_itself() {
    use officesync_protocol::status::STATUS_COLLECTION;
    let pki = Pki::new();
    let hefei = pki.signer("hefei", KeyType::Ed25519);
    let ring = pki.keyring(Policy::default());
    ring.learn(hefei.cert_der()).expect("learn");
    let report = |key: &str, counter: u64| {
        let mut v = version("hefei", counter, br#"{"node":"hefei"}"#);
        v.collection = STATUS_COLLECTION.into();
        v.key = key.into();
        v.author = Some("hefei".into());
        signed(&hefei, v)
    };
    assert_eq!(ring.check(&[report("hefei", 1)]), None);
    // Validly signed by hefei, but about another node: refused, whatever the signature.
    let r = ring
        .check(&[report("hefei", 1), report("beijing", 2)])
        .expect("refused");
    assert_eq!((r.index, r.fault), (1, SignatureFault::Invalid));
    assert!(r.detail.contains("reports only on itself"), "{}", r.detail);
}
