//! Bundles made by a general office and taken in by an office, on in-memory replicas with real
//! certificates: round trips, size bounds, altered and forged bundles, the rules replication
//! applies, and all-or-nothing application.

use std::sync::Arc;

use officesync_api::{BundleCollection, BundleInfo, ImportReport};
use officesync_protocol::policy::{Policy, POLICY_COLLECTION};
use officesync_protocol::signing::{nodes_key, NODES_COLLECTION};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};

use super::body::{self, Body, Limits, Part, Stream};
use super::frame::{self, to_hex};
use super::*;
use crate::pki::{self, IssueOptions};
use crate::policy::PolicyHandle;
use crate::replica::{Replica, ReplicaOptions};
use crate::signing::{publish_certificate, Keyring, NodeSigner};
use crate::store::MemoryStore;

const HUB: &str = "general-office";
const OFFICE: &str = "hefei";

/// A CA in a temporary directory, issuing certificates.
struct Pki {
    dir: tempfile::TempDir,
    issued: std::sync::atomic::AtomicUsize,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        pki::init_ca(&dir.path().join("ca"), false).expect("ca");
        Self {
            dir,
            issued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn signer(&self, name: &str, admin: bool) -> Arc<NodeSigner> {
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.dir.path().join(format!("{name}-{n}"));
        let opts = IssueOptions {
            admin,
            ..IssueOptions::default()
        };
        let issued = pki::issue(name, &self.dir.path().join("ca"), &out, &opts).expect("issue");
        let cert = pki::load_cert_ders(&issued.cert_path).expect("cert")[0].clone();
        let key = pki::load_key_der(&issued.key_path).expect("key");
        Arc::new(NodeSigner::new(cert, &key).expect("signer"))
    }

    fn ca_der(&self) -> Vec<u8> {
        pki::load_cert_ders(&self.dir.path().join("ca").join("ca.pem")).expect("ca")[0].clone()
    }
}

/// A node: its replica (signing its writes), key and keyring, under a fixed policy.
struct Node {
    replica: Replica,
    signer: Arc<NodeSigner>,
    keyring: Arc<Keyring>,
    policy: PolicyHandle,
    admins: Vec<String>,
}

impl Node {
    /// Nothing of the refused bundle reached the store.
    async fn assert_nothing_applied(&self) {
        let meta = self.replica.collection("situation").await.expect("meta");
        assert!(meta.vv.is_empty(), "{:?}", meta.vv);
    }

    async fn start(pki: &Pki, name: &str, admin: bool, policy: Policy) -> Node {
        let signer = pki.signer(name, admin);
        let mut opts = ReplicaOptions::new(name);
        opts.signer = Some(signer.clone());
        let replica = Replica::open(Arc::new(MemoryStore::new()), opts).expect("open");
        let policy = PolicyHandle::fixed(policy);
        let keyring = Arc::new(Keyring::new(pki.ca_der(), policy.clone()));
        keyring.learn(signer.cert_der()).expect("own certificate");
        publish_certificate(&replica, &signer)
            .await
            .expect("publish");
        Node {
            replica,
            signer,
            keyring,
            policy,
            admins: vec![HUB.to_owned()],
        }
    }

    async fn write(&self, collection: &str, key: &str, value: &str) {
        let author = format!("li@{}", self.replica.node());
        self.replica
            .write_as(collection, key, Some(value.as_bytes().to_vec()), author)
            .await
            .expect("write");
    }

    async fn export(&self, params: ExportParams) -> Exported {
        self.export_within(params, Limits::default())
            .await
            .expect("export")
    }

    async fn export_within(
        &self,
        params: ExportParams,
        limits: Limits,
    ) -> Result<Exported, BundleError> {
        let policy = self.policy.current();
        export(
            &self.replica,
            &self.signer,
            &policy,
            params,
            limits,
            crate::time::unix_ms_now(),
        )
        .await
    }

    async fn import(&self, bytes: &[u8]) -> Result<ImportReport, BundleError> {
        self.import_within(bytes, Limits::default()).await
    }

    async fn import_within(
        &self,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<ImportReport, BundleError> {
        let cx = ImportContext {
            replica: self.replica.clone(),
            keyring: self.keyring.clone(),
            policy: self.policy.clone(),
            admins: self.admins.clone().into(),
            limits,
        };
        import(&cx, bytes.to_vec()).await
    }

    /// Every collection's vector and digest.
    async fn state(&self) -> Vec<(String, VersionVector, String)> {
        self.replica
            .collections()
            .await
            .expect("collections")
            .into_iter()
            .map(|c| (c.name, c.meta.vv, c.meta.digest.to_hex()))
            .collect()
    }

    async fn digest(&self, collection: &str) -> String {
        self.replica
            .collection(collection)
            .await
            .expect("collection")
            .digest
            .to_hex()
    }

    async fn want(&self) -> Want {
        let body = Want::body_of(&self.replica).await.expect("collections");
        Want::from_body(&body).expect("want")
    }
}

fn open_policy() -> Policy {
    Policy::open([HUB])
}

/// A hub with `records` records in `situation` (and a few deleted), and an office.
async fn hub_and_office(pki: &Pki, records: usize) -> (Node, Node) {
    let hub = Node::start(pki, HUB, true, open_policy()).await;
    for i in 0..records {
        let value = format!(
            "{{\"river\": \"r{i}\", \"level_m\": {}.{}}}",
            i % 13,
            i * 7 % 10
        );
        hub.write("situation", &format!("k{i:03}"), &value).await;
    }
    for i in (0..records).step_by(5) {
        hub.replica
            .write("situation", &format!("k{i:03}"), None)
            .await
            .expect("delete");
    }
    hub.write("documents", "d1", "a letter").await;
    let office = Node::start(pki, OFFICE, false, open_policy()).await;
    (hub, office)
}

fn for_office() -> ExportParams {
    ExportParams {
        for_node: Some(OFFICE.to_owned()),
        ..ExportParams::default()
    }
}

fn decode(bytes: &[u8]) -> (BundleInfo, Body) {
    let f = frame::parse(bytes, MAX_BUNDLE_BYTES).expect("frame");
    let body = body::decompress(f.body, f.info.body_bytes, MAX_BUNDLE_BYTES).expect("body");
    (f.info, body)
}

/// A bundle of `body` under `info` (counts recomputed), signed by `signer` as `exporter`.
fn reframe(mut info: BundleInfo, body: &Body, signer: &NodeSigner, exporter: &str) -> Vec<u8> {
    let (packed, raw) = body::compress(body, MAX_BUNDLE_BYTES).expect("compress");
    info.body_bytes = raw;
    info.versions = body.versions();
    info.exporter = exporter.to_owned();
    info.exporter_certificate = to_hex(signer.cert_der());
    info.collections = body
        .parts
        .iter()
        .map(|p| BundleCollection {
            name: p.collection.clone(),
            versions: p.streams.iter().map(|s| s.versions.len() as u64).sum(),
            origins: p.streams.len() as u64,
        })
        .collect();
    let mut bytes = frame::unsigned(&info, &packed).expect("frame");
    let sig = signer.sign_bytes(BUNDLE_DOMAIN, &bytes);
    bytes.extend_from_slice(&sig);
    bytes
}

/// The same bytes with the old signature (not signed again).
fn reframe_unsigned(info: BundleInfo, body: &Body, old: &[u8]) -> Vec<u8> {
    let (packed, raw) = body::compress(body, MAX_BUNDLE_BYTES).expect("compress");
    let mut info = info;
    info.body_bytes = raw;
    let mut bytes = frame::unsigned(&info, &packed).expect("frame");
    bytes.extend_from_slice(&old[old.len() - officesync_protocol::signing::SIGNATURE_LEN..]);
    bytes
}

fn situation_version(body: &mut Body, index: usize) -> &mut Version {
    body.parts
        .iter_mut()
        .find(|p| p.collection == "situation")
        .and_then(|p| p.streams.first_mut())
        .and_then(|s| s.versions.get_mut(index))
        .expect("a situation version")
}

/// A seeded xorshift, for reproducible positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test]
async fn a_bundle_round_trips_and_applies_once() {
    let pki = Pki::new();
    let (hub, office) = hub_and_office(&pki, 40).await;
    let made = hub.export(for_office()).await;
    let (info, body) = decode(&made.bytes);
    assert_eq!(info, made.info);
    assert_eq!(info.exporter, HUB);
    assert_eq!(info.for_node.as_deref(), Some(OFFICE));
    assert_eq!(info.versions, body.versions());
    assert_eq!(
        body.parts[0].collection, NODES_COLLECTION,
        "certificates come first"
    );
    // 40 writes, 8 of them deleted: the deletes superseded them, so 40 live versions, 1 letter,
    // the hub's certificate.
    let count = |c: &str| {
        info.collections
            .iter()
            .find(|x| x.name == c)
            .map(|x| x.versions)
    };
    assert_eq!(count("situation"), Some(40));
    assert_eq!(count("documents"), Some(1));
    assert_eq!(count(NODES_COLLECTION), Some(1));
    for v in body
        .parts
        .iter()
        .flat_map(|p| &p.streams)
        .flat_map(|s| &s.versions)
    {
        assert!(v.signature.is_some() && v.author.is_some(), "{}", v.dot);
    }
    // Encoding the decoded body again gives the same body.
    let (packed, raw) = body::compress(&body, MAX_BUNDLE_BYTES).expect("compress");
    assert_eq!(
        body::decompress(&packed, raw, MAX_BUNDLE_BYTES).expect("decode"),
        body
    );

    let report = office.import(&made.bytes).await.expect("import");
    assert_eq!(report.versions, info.versions);
    assert_eq!(report.applied, info.versions);
    for c in ["situation", "documents"] {
        assert_eq!(office.digest(c).await, hub.digest(c).await, "{c}");
        let ours = office.replica.collection(c).await.expect("meta").vv;
        let theirs = hub.replica.collection(c).await.expect("meta").vv;
        assert_eq!(ours, theirs, "{c}");
    }
    let rec = office
        .replica
        .get("situation", "k001")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(rec.siblings.len(), 1);
    assert_eq!(rec.winner().author.as_deref(), Some("li@general-office"));

    // Twice: nothing changes.
    let before = office.state().await;
    let again = office.import(&made.bytes).await.expect("import again");
    assert_eq!((again.applied, again.ignored), (0, info.versions));
    assert_eq!(office.state().await, before);
}

#[tokio::test]
async fn sizes_are_bounded_when_made_and_when_read() {
    let pki = Pki::new();
    let (hub, office) = hub_and_office(&pki, 30).await;
    let small = Limits {
        max_file: 1 << 20,
        max_body: 1000,
    };
    let refused = hub.export_within(for_office(), small).await;
    assert!(
        matches!(refused, Err(BundleError::TooLarge(_))),
        "{refused:?}"
    );

    let made = hub.export(for_office()).await;
    let tight = Limits {
        max_file: made.bytes.len() - 1,
        max_body: MAX_BUNDLE_BYTES,
    };
    let refused = office.import_within(&made.bytes, tight).await;
    assert!(
        matches!(refused, Err(BundleError::TooLarge(_))),
        "{refused:?}"
    );
    let tight = Limits {
        max_file: MAX_BUNDLE_BYTES,
        max_body: usize::try_from(made.info.body_bytes).expect("fits") - 1,
    };
    let refused = office.import_within(&made.bytes, tight).await;
    assert!(matches!(
        refused,
        Err(BundleError::Altered(_) | BundleError::Malformed(_))
    ));

    // A body whose first vector claims 2^60 parts is refused without allocating them.
    let mut raw = vec![0xfd];
    raw.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let packed = zstd::stream::encode_all(raw.as_slice(), 1).expect("zstd");
    let refused = body::decompress(&packed, raw.len() as u64, MAX_BUNDLE_BYTES);
    assert!(refused.is_err(), "{refused:?}");
    // Nor a body claiming more than the limit, nor one longer than its header says.
    assert!(body::decompress(&packed, MAX_BUNDLE_BYTES as u64 + 1, MAX_BUNDLE_BYTES).is_err());
    let (packed, raw) = body::compress(&Body::default(), MAX_BUNDLE_BYTES).expect("compress");
    assert!(body::decompress(&packed, raw, MAX_BUNDLE_BYTES).is_ok());
    assert!(body::decompress(&packed, raw + 1, MAX_BUNDLE_BYTES).is_err());
    assert!(body::decompress(&packed, raw - 1, MAX_BUNDLE_BYTES).is_err());
    // A header claiming a huge body.
    let mut huge = made.bytes.clone();
    let at = 13
        + huge[9..13]
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
    huge[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        office.import(&huge).await,
        Err(BundleError::Malformed(_))
    ));
    office.assert_nothing_applied().await;
}

#[tokio::test]
async fn a_byte_altered_anywhere_refuses_the_whole_bundle() {
    let pki = Pki::new();
    let (hub, office) = hub_and_office(&pki, 30).await;
    let made = hub.export(for_office()).await;
    let before = office.state().await;
    let mut rng = Rng(0x05ee_d0b0_d1e5_u64);
    let mut positions: Vec<usize> = (0..400).map(|_| rng.below(made.bytes.len())).collect();
    positions.extend([0, 8, 9, 12, 13, made.bytes.len() - 1]);
    let mut named = 0;
    for at in positions {
        let mut altered = made.bytes.clone();
        altered[at] ^= 1 + (rng.next() % 255) as u8;
        match office.import(&altered).await {
            Ok(report) => panic!("byte {at} altered, yet imported: {report:?}"),
            Err(BundleError::Replica(e)) => panic!("byte {at}: the store failed: {e}"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.starts_with("bundle refused"), "{message}");
                if message.contains(" version ") {
                    named += 1;
                }
            }
        }
    }
    assert_eq!(office.state().await, before, "something was applied");
    assert!(named > 0, "no altered version was named");
    // The bundle itself is still good.
    office.import(&made.bytes).await.expect("import");
}

#[tokio::test]
async fn an_altered_version_is_named_whether_or_not_the_bundle_is_signed_again() {
    let pki = Pki::new();
    let (hub, office) = hub_and_office(&pki, 10).await;
    let made = hub.export(for_office()).await;
    let (info, mut body) = decode(&made.bytes);
    let v = situation_version(&mut body, 3);
    v.value = Some(b"{\"level_m\": 99}".to_vec());
    let named = format!("situation/{} version {}", v.key, v.dot);

    // Not signed again: the bundle's signature fails, the version is named.
    let altered = reframe_unsigned(info.clone(), &body, &made.bytes);
    let e = office.import(&altered).await.expect_err("refused");
    assert!(matches!(e, BundleError::Altered(_)), "{e:?}");
    assert!(e.to_string().contains(&named), "{e}");

    // Signed again by the exporter: its own signature verifies, the version's does not.
    let forged = reframe(info, &body, &hub.signer, HUB);
    let e = office.import(&forged).await.expect_err("refused");
    assert!(matches!(e, BundleError::Altered(_)), "{e:?}");
    assert!(e.to_string().contains(&named), "{e}");
    assert!(e.to_string().contains("forged"), "{e}");
    office.assert_nothing_applied().await;
}

#[tokio::test]
async fn only_an_admin_node_may_make_a_bundle() {
    let pki = Pki::new();
    let (hub, mut office) = hub_and_office(&pki, 5).await;
    let made = hub.export(for_office()).await;
    let (info, body) = decode(&made.bytes);
    // Signed again by an office: not an admin.
    let shanghai = pki.signer("shanghai", false);
    let bytes = reframe(info.clone(), &body, &shanghai, "shanghai");
    let e = office.import(&bytes).await.expect_err("refused");
    assert!(matches!(e, BundleError::Untrusted(_)), "{e:?}");
    assert!(e.to_string().contains("not an admin node"), "{e}");
    // Named in [cluster] admins but without an admin certificate.
    office.admins.push("wuhan".to_owned());
    let wuhan = pki.signer("wuhan", false);
    let bytes = reframe(info.clone(), &body, &wuhan, "wuhan");
    let e = office.import(&bytes).await.expect_err("refused");
    assert!(matches!(e, BundleError::Untrusted(_)), "{e:?}");
    // An admin certificate of another CA.
    let other = Pki::new().signer(HUB, true);
    let bytes = reframe(info.clone(), &body, &other, HUB);
    let e = office.import(&bytes).await.expect_err("refused");
    assert!(matches!(e, BundleError::Untrusted(_)), "{e:?}");
    // The hub's certificate, but signed by someone else.
    let mut bytes = reframe(info, &body, &shanghai, "shanghai");
    let (mut info2, _) = decode(&bytes);
    info2.exporter = HUB.to_owned();
    info2.exporter_certificate = to_hex(hub.signer.cert_der());
    let (packed, _) = body::compress(&body, MAX_BUNDLE_BYTES).expect("compress");
    let sig = bytes.split_off(bytes.len() - officesync_protocol::signing::SIGNATURE_LEN);
    let mut swapped = frame::unsigned(&info2, &packed).expect("frame");
    swapped.extend_from_slice(&sig);
    let e = office.import(&swapped).await.expect_err("refused");
    assert!(matches!(e, BundleError::Altered(_)), "{e:?}");
    office.assert_nothing_applied().await;
    // A bundle made for another office.
    let beijing = hub
        .export(ExportParams {
            for_node: Some("beijing-office".to_owned()),
            ..ExportParams::default()
        })
        .await;
    let e = office.import(&beijing.bytes).await.expect_err("refused");
    assert!(
        e.to_string().contains("made for node beijing-office"),
        "{e}"
    );
}

#[tokio::test]
async fn an_incremental_bundle_carries_only_what_the_want_lacks() {
    let pki = Pki::new();
    let (hub, office) = hub_and_office(&pki, 12).await;
    office
        .import(&hub.export(for_office()).await.bytes)
        .await
        .expect("first");
    office.write("situation", "hefei/grain", "100t").await;
    hub.write("situation", "k001", "overwritten").await;
    hub.write("situation", "new-1", "1").await;
    hub.write("situation", "new-2", "2").await;
    let made = hub
        .export(ExportParams {
            want: Some(office.want().await),
            ..ExportParams::default()
        })
        .await;
    assert!(made.info.incremental);
    assert_eq!(
        made.info.for_node.as_deref(),
        Some(OFFICE),
        "the want's node"
    );
    assert_eq!(made.info.versions, 3, "{:?}", made.info.collections);
    let report = office.import(&made.bytes).await.expect("second");
    assert_eq!(report.applied, 3);
    let rec = office.replica.get("situation", "k001").await.expect("get");
    assert_eq!(
        rec.expect("held").winner().value.as_deref(),
        Some(&b"overwritten"[..])
    );

    // A want from a node that holds more than this one: importing it would leave a gap.
    let fresh = Node::start(&pki, OFFICE, false, open_policy()).await;
    let e = fresh.import(&made.bytes).await.expect_err("refused");
    assert!(matches!(e, BundleError::Refused(_)), "{e:?}");
    assert!(e.to_string().contains("holds only through"), "{e}");
    // --for and the want's node must agree.
    let e = hub
        .export_within(
            ExportParams {
                for_node: Some("beijing-office".to_owned()),
                want: Some(office.want().await),
                ..ExportParams::default()
            },
            Limits::default(),
        )
        .await
        .expect_err("refused");
    assert!(matches!(e, BundleError::BadRequest(_)), "{e:?}");
}

#[tokio::test]
async fn a_collection_the_target_may_not_read_stays_out() {
    let pki = Pki::new();
    let rule = br#"{"read": ["general-office"], "write": ["general-office"]}"#;
    let (policy, errors) = Policy::from_entries([HUB], [("collections/secret", &rule[..])]);
    assert!(errors.is_empty());
    let hub = Node::start(&pki, HUB, true, policy.clone()).await;
    hub.write("secret", "s1", "eyes only").await;
    hub.write("situation", "k1", "open").await;
    hub.replica
        .write(POLICY_COLLECTION, "collections/secret", Some(rule.to_vec()))
        .await
        .expect("policy");
    let made = hub.export(for_office()).await;
    let names: Vec<&str> = made
        .info
        .collections
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, [NODES_COLLECTION, POLICY_COLLECTION, "situation"]);
    let e = hub
        .export_within(
            ExportParams {
                collections: Some(vec!["secret".into()]),
                for_node: Some(OFFICE.into()),
                ..ExportParams::default()
            },
            Limits::default(),
        )
        .await
        .expect_err("refused");
    assert!(matches!(e, BundleError::Forbidden(_)), "{e:?}");
    // Without --for it goes in; the office refuses it under the policy the bundle brings.
    let all = hub.export(ExportParams::default()).await;
    assert!(all.info.collections.iter().any(|c| c.name == "secret"));
    let office = Node::start(&pki, OFFICE, false, open_policy()).await;
    let e = office.import(&all.bytes).await.expect_err("refused");
    assert!(matches!(e, BundleError::Forbidden(_)), "{e:?}");
    assert!(e.to_string().contains("may not read"), "{e}");
    office.import(&made.bytes).await.expect("import");
    assert!(office
        .replica
        .get("secret", "s1")
        .await
        .expect("get")
        .is_none());
}

/// Adds a stream of `node`'s versions (and its certificate) to `body`.
fn add_origin(body: &mut Body, signer: &NodeSigner, node: &str, versions: Vec<Version>) {
    let origin = ReplicaId::new(node, 7).expect("id");
    let sign = |mut v: Version| {
        v.signature = Some(signer.sign(&v.collection, &v.key, &v.header(), v.author.as_deref()));
        v
    };
    let cert = sign(Version {
        collection: NODES_COLLECTION.into(),
        key: nodes_key(node, signer.key_id()),
        dot: Dot::new(origin.clone(), 1),
        hlc: Hlc {
            ms: crate::time::unix_ms_now(),
            logical: 0,
        },
        context: VersionVector::new(),
        value: Some(signer.cert_der().to_vec()),
        author: Some(node.into()),
        signature: None,
    });
    body.parts[0].streams.push(Stream {
        origin: origin.clone(),
        after: 0,
        through: 1,
        versions: vec![cert],
    });
    let versions: Vec<Version> = versions
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            v.dot = Dot::new(origin.clone(), i as u64 + 1);
            sign(v)
        })
        .collect();
    let through = versions.len() as u64;
    let part = body
        .parts
        .iter_mut()
        .find(|p| p.collection == "situation")
        .expect("situation");
    part.streams.push(Stream {
        origin,
        after: 0,
        through,
        versions,
    });
}

fn situation(node: &str, key: &str, ms: u64) -> Version {
    Version {
        collection: "situation".into(),
        key: key.into(),
        dot: Dot::new(ReplicaId::new(node, 7).expect("id"), 1),
        hlc: Hlc { ms, logical: 0 },
        context: VersionVector::new(),
        value: Some(b"{}".to_vec()),
        author: Some(format!("zhang@{node}")),
        signature: None,
    }
}

#[tokio::test]
async fn one_refused_version_refuses_everything() {
    let pki = Pki::new();
    let (hub, office) = hub_and_office(&pki, 8).await;
    let made = hub.export(for_office()).await;
    let (info, body) = decode(&made.bytes);
    let wuhan = pki.signer("wuhan", false);
    let now = crate::time::unix_ms_now();

    // Relayed versions of another office, signed by it: taken.
    let mut good = body.clone();
    add_origin(
        &mut good,
        &wuhan,
        "wuhan",
        vec![situation("wuhan", "w1", now)],
    );
    let bytes = reframe(info.clone(), &good, &hub.signer, HUB);
    let fresh = Node::start(&pki, OFFICE, false, open_policy()).await;
    let report = fresh.import(&bytes).await.expect("relayed versions");
    assert_eq!(report.applied, info.versions + 2);

    // One stamped a day ahead of this node's clock: nothing of the bundle is applied.
    let mut ahead = body.clone();
    let day = 86_400_000;
    let versions = vec![
        situation("wuhan", "w1", now),
        situation("wuhan", "w2", now + day),
    ];
    add_origin(&mut ahead, &wuhan, "wuhan", versions);
    let bytes = reframe(info.clone(), &ahead, &hub.signer, HUB);
    let before = office.state().await;
    let e = office.import(&bytes).await.expect_err("refused");
    assert!(matches!(e, BundleError::Refused(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("situation/w2 version wuhan@00000007:2"),
        "{e}"
    );
    assert_eq!(office.state().await, before);

    // An origin the policy does not let write `situation`.
    let rule = br#"{"read": ["*"], "write": ["general-office", "hefei"]}"#;
    let (policy, _) = Policy::from_entries([HUB], [("collections/situation", &rule[..])]);
    let strict = Node::start(&pki, OFFICE, false, policy).await;
    let bytes = reframe(info.clone(), &good, &hub.signer, HUB);
    let e = strict.import(&bytes).await.expect_err("refused");
    assert!(matches!(e, BundleError::Forbidden(_)), "{e:?}");
    assert!(
        e.to_string().contains("wuhan may not write situation"),
        "{e}"
    );

    // A version whose author names another node than its origin.
    let mut lying = body.clone();
    let mut v = situation("wuhan", "w1", now);
    v.author = Some("li@general-office".into());
    add_origin(&mut lying, &wuhan, "wuhan", vec![v]);
    let bytes = reframe(info.clone(), &lying, &hub.signer, HUB);
    let e = office.import(&bytes).await.expect_err("refused");
    assert!(
        e.to_string()
            .contains("situation/w1 version wuhan@00000007:1"),
        "{e}"
    );

    assert_eq!(office.state().await, before);

    // A version of another office without its certificate, at a node that never saw it: an
    // unknown signer.
    let mut unknown = body;
    add_origin(
        &mut unknown,
        &wuhan,
        "wuhan",
        vec![situation("wuhan", "w1", now)],
    );
    unknown.parts[0].streams.pop();
    let bytes = reframe(info, &unknown, &hub.signer, HUB);
    let stranger = Node::start(&pki, OFFICE, false, open_policy()).await;
    let e = stranger.import(&bytes).await.expect_err("refused");
    assert!(e.to_string().contains("unknown_signer"), "{e}");
    stranger.assert_nothing_applied().await;
}

#[tokio::test]
async fn a_bundle_continues_where_catch_up_would() {
    // Superseded versions are left out; the completion mark covers them.
    let pki = Pki::new();
    let hub = Node::start(&pki, HUB, true, open_policy()).await;
    hub.write("situation", "k", "1").await;
    hub.write("situation", "k", "2").await;
    hub.write("situation", "k", "3").await;
    let office = Node::start(&pki, OFFICE, false, open_policy()).await;
    let made = hub.export(for_office()).await;
    let (_, body) = decode(&made.bytes);
    let part: &Part = body
        .parts
        .iter()
        .find(|p| p.collection == "situation")
        .expect("situation");
    assert_eq!(part.streams[0].versions.len(), 1, "only the live version");
    assert_eq!(part.streams[0].through, 3);
    office.import(&made.bytes).await.expect("import");
    let vv = office
        .replica
        .collection("situation")
        .await
        .expect("meta")
        .vv;
    assert_eq!(vv.get(hub.replica.id()), 3);
    assert_eq!(
        office.digest("situation").await,
        hub.digest("situation").await
    );
}
