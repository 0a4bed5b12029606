//! Certificates against real daemons: expired and not-yet-valid certificates are refused at
//! the handshake, an office certificate listed in `[cluster] admins` still cannot relay other
//! origins (an admin certificate listed there can), and `ca issue` never overwrites a bundle
//! without `--force`.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{hub_config, peer_entry, wait_for, HUB};
use officesync_daemon::pki::{self, IssueOptions};
use officesync_protocol::wire::{Batch, Complete, Message};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::rogue::Rogue;
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

/// A batch of one version of `origin` (a node that does not exist) and its completion.
fn relayed(origin: &ReplicaId, key: &str) -> [Message; 2] {
    let version = Version {
        collection: "situation".into(),
        key: key.into(),
        dot: Dot::new(origin.clone(), 1),
        hlc: Hlc {
            ms: pki::unix_now() as u64 * 1000,
            logical: 0,
        },
        context: VersionVector::new(),
        value: Some(b"relayed".to_vec()),
    };
    [
        Batch {
            collection: "situation".into(),
            origin: origin.clone(),
            versions: vec![version],
        }
        .into(),
        Complete {
            collection: "situation".into(),
            origin: origin.clone(),
            through: 1,
        }
        .into(),
    ]
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
            for msg in relayed(&nowhere, key) {
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
    assert_eq!(shanghai["rejected"].as_u64(), Some(1), "{shanghai}");
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
