//! Certificates against real daemons: expired and not-yet-valid certificates are refused at
//! the handshake, an office certificate listed in `[cluster] admins` still cannot relay other
//! origins (an admin certificate listed there can), `ca issue` never overwrites a bundle
//! without `--force`, and a node holding another CA's bundle is told so in both logs.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{hub_config, office_config, peer_entry, wait_for, HUB};
use officesync_daemon::pki::{self, IssueOptions};
use officesync_daemon::signing::NodeSigner;
use officesync_protocol::signing;
use officesync_protocol::wire::Message;
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::rogue::{one_version_stream, Rogue};
use officesync_tests::{officesync, Cluster, OutputExt};

const TIMEOUT: Duration = Duration::from_secs(30);
const DAY: i64 = 86_400;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let now = pki::unix_now();
    let rt = runtime();
    let windows = [
        ("expired-office", (now - 30 * DAY, now - DAY)),
        ("future-office", (now + DAY, now + 30 * DAY)),
        ("valid-office", (now - 60, now + DAY)),
    ];
    for (name, window) in windows {
        let out = cluster.dir().join("bundles").join(name);
        pki::issue_with_validity(
            name,
            cluster.ca_dir(),
            &out,
            &IssueOptions::default(),
            window,
        )
        .expect("issue");
        let result = rt.block_on(async {
            let mut rogue = Rogue::connect(&out, hub_cfg.sync_listen, HUB).await?;
            let origin = ReplicaId::new(name, 1)?;
            rogue.hello(name, &origin, Vec::new()).await?;
            rogue.shutdown().await;
            anyhow::Ok(())
        });
        if name == "valid-office" {
            result.expect("a valid certificate gets a session");
        } else {
            let err = result.expect_err(name).to_string();
            assert!(err.contains("refused"), "{name}: {err}");
        }
    }
    let log = hub.log();
    assert_eq!(
        log.matches("incoming handshake failed").count(),
        2,
        "one refused handshake per bad certificate:\n{log}"
    );
    let status = hub.status();
    assert!(peer_entry(&status, "expired-office").is_none());
    assert!(peer_entry(&status, "future-office").is_none());
}

/// What a relay forwards of node `origin` (an office that never connects here): its
/// certificate's `_nodes` entry and one version, each signed by it with `signer`, and their
/// completions.
fn relayed(origin: &ReplicaId, key: &str, signer: &NodeSigner) -> Vec<Message> {
    let now = pki::unix_now() as u64 * 1000;
    let version = |collection: &str, key: &str, value: &[u8]| {
        let mut v = Version {
            collection: collection.into(),
            key: key.into(),
            dot: Dot::new(origin.clone(), 1),
            hlc: Hlc {
                ms: now,
                logical: 0,
            },
            context: VersionVector::new(),
            value: Some(value.to_vec()),
            author: None,
            signature: None,
        };
        v.signature = Some(signer.sign(&v.collection, &v.key, &v.header(), None));
        v
    };
    let cert_key = signing::nodes_key(origin.node_name(), signer.key_id());
    [
        version(signing::NODES_COLLECTION, &cert_key, signer.cert_der()),
        version("situation", key, b"relayed"),
    ]
    .into_iter()
    .flat_map(one_version_stream)
    .collect()
}

#[test]
fn an_office_certificate_listed_as_admin_cannot_relay() {
    let cluster = Cluster::new();
    let mut hub_cfg = hub_config(&cluster);
    // Both are listed as admins; only one holds an admin certificate.
    hub_cfg.admins = vec![HUB.into(), "shanghai".into(), "relay-two".into()];
    let hub = cluster.start(&hub_cfg);
    let rt = runtime();
    let nowhere = ReplicaId::new("nowhere", 1).expect("valid");
    let nowhere_bundle = cluster.issue("nowhere", false);
    let nowhere_key = NodeSigner::load(
        &nowhere_bundle.join("node.pem"),
        &nowhere_bundle.join("node.key"),
    )
    .expect("signer");
    for (name, admin_cert, key) in [
        ("shanghai", false, "forged"),
        ("relay-two", true, "relayed"),
    ] {
        let bundle = cluster.issue(name, admin_cert);
        rt.block_on(async {
            let mut rogue = Rogue::connect(&bundle, hub_cfg.sync_listen, HUB).await?;
            rogue
                .hello(name, &ReplicaId::new(name, 1)?, Vec::new())
                .await?;
            for msg in relayed(&nowhere, key, &nowhere_key) {
                rogue.send_message(&msg).await?;
            }
            // Keep the session until the hub has dealt with the batch.
            tokio::time::sleep(Duration::from_secs(1)).await;
            rogue.shutdown().await;
            anyhow::Ok(())
        })
        .expect("session");
    }
    // The admin certificate's relay is applied (so the refusal below is the rule at work).
    wait_for(
        "the admin certificate's relayed version",
        TIMEOUT,
        || match hub.api().try_get("situation", "relayed") {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("not yet".to_owned()),
            Err(e) => Err(format!("{e:#}")),
        },
    );
    assert!(
        hub.get("situation", "forged").is_none(),
        "an office certificate relayed another origin's version"
    );
    let status = hub.status();
    let shanghai = peer_entry(&status, "shanghai").expect("listed");
    // Both of its batches (the certificate and the version) are refused by the relay rule.
    assert_eq!(shanghai["rejected"].as_u64(), Some(2), "{shanghai}");
    let relay = peer_entry(&status, "relay-two").expect("listed");
    assert_eq!(relay["rejected"].as_u64(), Some(0), "{relay}");
}

#[test]
fn ca_issue_refuses_to_overwrite_without_force() {
    let cluster = Cluster::new();
    let out = cluster.dir().join("bundle");
    let issue = |extra: &[&str]| {
        let mut args = vec!["ca", "issue", "hefei", "--ca-dir"];
        let ca = cluster.ca_dir().to_str().expect("utf-8 path").to_owned();
        let out = out.to_str().expect("utf-8 path").to_owned();
        args.push(&ca);
        args.push("--out");
        args.push(&out);
        args.extend_from_slice(extra);
        officesync(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    issue(&[]).expect_success("first issue");
    let first = std::fs::read(out.join("node.pem")).expect("node.pem");
    let again = issue(&[]);
    assert!(!again.status.success(), "overwrote without --force");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read(out.join("node.pem")).expect("node.pem"),
        first
    );
    issue(&["--force"]).expect_success("forced issue");
    assert_ne!(
        std::fs::read(out.join("node.pem")).expect("node.pem"),
        first
    );
}

#[test]
fn an_office_certificate_listed_as_admin_cannot_write_policy() {
    let cluster = Cluster::new();
    // An office certificate whose own config falsely lists it as an admin...
    let mut office = cluster.config("shanghai");
    office.admins = vec!["shanghai".into()];
    let office = cluster.start(&office);
    // ...and a real admin (admin certificate, listed) as the control.
    let admin = cluster.start(&hub_config(&cluster));
    let entry = br#"{"read": ["*"], "write": ["*"]}"#.to_vec();
    let path = "/v1/collections/_policy/records/default";
    let refused = office
        .api()
        .request("PUT", path, Some(&entry))
        .expect("office API");
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("--admin")));
    assert!(
        office.get("_policy", "default").is_none(),
        "the office wrote _policy"
    );
    let accepted = admin
        .api()
        .request("PUT", path, Some(&entry))
        .expect("admin API");
    assert_eq!(
        accepted.status,
        200,
        "{}",
        String::from_utf8_lossy(&accepted.body)
    );
}

/// The first line of `log` that contains `needle` (empty if none).
fn line_with<'l>(log: &'l str, needle: &str) -> &'l str {
    log.lines().find(|l| l.contains(needle)).unwrap_or_default()
}

/// An office holding a whole bundle of another CA (its ca.pem, node.pem and node.key all from
/// it) cannot tell whose CA is wrong; its log names its own CA and fingerprint as not the CA of
/// the hub's certificate, and says to check tls.ca, instead of blaming the hub. The hub never
/// sees that office's certificate (the office gives up first): it logs the address and what
/// the office answered. A node whose certificate does reach the hub (it trusts both CAs) is
/// logged by the hub with that certificate's subject and issuer.
#[test]
fn a_node_of_another_ca_is_told_to_check_its_own_ca_and_the_hub_logs_what_it_can() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let other = Cluster::new();
    let fingerprint = |dir: &std::path::Path| {
        let pem = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
        pki::ca_fingerprint(&pem).expect("fingerprint")
    };
    let (ours, theirs) = (fingerprint(cluster.ca_dir()), fingerprint(other.ca_dir()));
    let office_cfg = office_config(&other, "hefei", hub_cfg.sync_listen);
    let office = other.start(&office_cfg);
    let refused = "dial failed";
    wait_for("hefei's refused dial", TIMEOUT, || {
        let log = office.log();
        log.contains(refused).then_some(()).ok_or(log)
    });
    let log = office.log();
    let line = line_with(&log, refused);
    let own_ca = office_cfg.tls_dir.join("ca.pem");
    let expected = format!(
        "this node's ca.pem ({}, fingerprint {theirs}) is not the CA of the peer's certificate \
         (CN={HUB}, OU=officesync-admin, serial ",
        own_ca.display()
    );
    assert!(
        line.contains(&expected),
        "expected {expected:?} in:\n{line}"
    );
    assert!(
        line.contains("issuer CN=") && line.contains("; this node's CA has key id "),
        "{line}"
    );
    assert!(
        line.contains("fix: check that tls.ca is the deployment's CA"),
        "{line}"
    );
    // The old message put the fix on the hub ("give that office a bundle").
    assert!(!line.contains("give that office"), "{line}");
    // The office's status and `officesync peers` say why the hub is down, not only its log.
    wait_for("hefei's status to give the reason", TIMEOUT, || {
        let s = office.status();
        let p = peer_entry(&s, HUB).ok_or("no hub entry")?.clone();
        let told = p["connected"] == false
            && p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("this node's ca.pem"))
            && p["last_error_at"].is_string();
        told.then_some(()).ok_or_else(|| p.to_string())
    });
    let peers = office.cli(&["peers"]);
    let table = String::from_utf8_lossy(&peers.stdout);
    assert!(
        table.contains(&format!("{HUB}: down: ")) && table.contains("this node's ca.pem"),
        "officesync peers:\n{table}"
    );

    let failed = "incoming handshake failed";
    wait_for("the hub's failed handshake", TIMEOUT, || {
        let log = hub.log();
        log.contains(failed).then_some(()).ok_or(log)
    });
    let log = hub.log();
    let line = line_with(&log, failed);
    assert!(
        line.contains("refused this node's certificate (TLS alert certificate_unknown; it says \"this node's ca.pem ("),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "fingerprint {theirs}) is not the CA of the peer's certificate (CN={HUB}"
        )),
        "the office's fingerprint, and what it refused: {line}"
    );
    assert!(
        !log.contains("not issued by this deployment's CA"),
        "the hub blamed a certificate it never saw:\n{log}"
    );
    assert!(!line.contains(&ours), "{line}");

    // beijing-office also trusts our CA: it accepts the hub's certificate and presents its own,
    // which the hub refuses and describes.
    let impostor_cfg = office_config(&other, "beijing-office", hub_cfg.sync_listen);
    let both = [
        std::fs::read(impostor_cfg.tls_dir.join("ca.pem")).expect("their ca.pem"),
        std::fs::read(cluster.ca_dir().join("ca.pem")).expect("our ca.pem"),
    ]
    .concat();
    std::fs::write(impostor_cfg.tls_dir.join("ca.pem"), both).expect("write ca.pem");
    let impostor = other.start(&impostor_cfg);
    let described = "refused a peer certificate not issued by this deployment's CA";
    wait_for(
        "the hub's description of beijing-office's certificate",
        TIMEOUT,
        || {
            let log = hub.log();
            log.contains(described).then_some(()).ok_or(log)
        },
    );
    let log = hub.log();
    let line = line_with(&log, described);
    let expected = format!(
        "this node's ca.pem ({}, fingerprint {ours}) is not the CA of the peer's certificate \
         (CN=beijing-office, serial ",
        hub_cfg.tls_dir.join("ca.pem").display()
    );
    assert!(
        line.contains(&expected),
        "expected {expected:?} in:\n{line}"
    );
    assert!(line.contains("remote=127.0.0.1:"), "the address: {line}");
    // The troubleshooting table of INSTALL.md quotes these messages.
    let guide = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/INSTALL.md"),
    )
    .expect("INSTALL.md");
    for quoted in [
        "is not the CA of the peer's certificate (...); fix: check that tls.ca is the deployment's CA",
        "refused this node's certificate (TLS alert certificate_unknown; it says \"this node's ca.pem (",
    ] {
        assert!(guide.contains(quoted), "INSTALL.md no longer quotes {quoted:?}");
    }
    // And beijing-office learns what the hub said of its certificate.
    wait_for("beijing-office's refused dial", TIMEOUT, || {
        let log = impostor.log();
        let line = line_with(&log, refused);
        line.contains("refused this node's certificate (TLS alert decrypt_error; it says ")
            .then_some(())
            .ok_or(log.clone())
    });
}
