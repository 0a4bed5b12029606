//! A dishonest relay: an admin node (it may relay other offices' versions) that forges an
//! office's version with its own key, alters a version the office really signed, or brings
//! one signed by a certificate of another CA. Every office refuses each, counts it under its
//! reason, and the office's real data stands; the same version unaltered is taken.

use std::path::Path;

use officesync_daemon::pki;
use officesync_daemon::signing::NodeSigner;
use officesync_daemon::time::unix_ms_now;
use officesync_protocol::signing;
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::rogue::{one_version_stream, Rogue};
use officesync_tests::{Cluster, OutputExt, TestNode};

use crate::common::{assert_converged, peer_entry, wait_connected, wait_for, HUB};
use crate::shared::TIMEOUT;

/// The dishonest relay's node name (listed in every node's `[cluster] admins`).
const RELAY: &str = "rogue-relay";

fn signer(bundle: &Path) -> NodeSigner {
    NodeSigner::load(&bundle.join("node.pem"), &bundle.join("node.key")).expect("signer")
}

fn sign(signer: &NodeSigner, mut v: Version) -> Version {
    v.signature = Some(signer.sign(&v.collection, &v.key, &v.header(), v.author.as_deref()));
    v
}

fn version(collection: &str, origin: &ReplicaId, counter: u64, key: &str, value: &[u8]) -> Version {
    Version {
        collection: collection.into(),
        key: key.into(),
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc {
            ms: unix_ms_now(),
            logical: 0,
        },
        context: VersionVector::new(),
        value: Some(value.to_vec()),
        author: Some(format!("staff@{}", origin.node_name())),
        signature: None,
    }
}

/// One session of the relay with the node at `addr`: the handshake, `versions` sent as they
/// are (each its own stream), then `done` polled until it holds.
fn relay_session(
    rt: &tokio::runtime::Runtime,
    bundle: &Path,
    (addr, name): (std::net::SocketAddr, &str),
    versions: Vec<Version>,
    what: &str,
    mut done: impl FnMut() -> Result<(), String>,
) {
    let relay_id = ReplicaId::new(RELAY, 0x0bad_cafe).expect("id");
    rt.block_on(async {
        let mut rogue = Rogue::connect(bundle, addr, name)
            .await
            .expect("the relay's certificate is valid");
        rogue
            .hello(RELAY, &relay_id, Vec::new())
            .await
            .expect("hello");
        for v in versions {
            for m in one_version_stream(v) {
                rogue.send_message_as_is(&m).await.expect("send");
            }
        }
        wait_for(what, TIMEOUT, &mut done);
        rogue.shutdown().await;
    });
}

/// `node`'s count of versions from `peer` refused for `reason`.
fn rejected(node: &TestNode, peer: &str, reason: &str) -> u64 {
    peer_entry(&node.status(), peer)
        .and_then(|p| p["rejected_by_reason"][reason].as_u64())
        .unwrap_or(0)
}

/// The counter of `origin` in `node`'s vector of `collection`.
fn counter(node: &TestNode, collection: &str, origin: &ReplicaId) -> u64 {
    node.status()["vv"][collection][origin.as_str()]
        .as_u64()
        .unwrap_or(0)
}

fn replica_of(node: &TestNode, of: &str) -> ReplicaId {
    let status = node.status();
    let vv = status["vv"]["situation"].as_object().expect("situation vv");
    vv.keys()
        .find(|o| o.split('@').next() == Some(of))
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("no replica of {of} in {vv:?}"))
}

#[test]
fn a_relay_can_forward_but_not_forge_or_alter_an_office_s_versions() {
    let cluster = Cluster::new();
    let admins = vec![HUB.to_owned(), RELAY.to_owned()];
    cluster.issue(HUB, true);
    let mut hub_cfg = cluster.config(HUB);
    hub_cfg.admins = admins.clone();
    let hub = cluster.start(&hub_cfg);
    let office = |name: &str| {
        let mut c = cluster.config(name);
        c.peers = vec![(HUB.to_owned(), hub_cfg.sync_listen.to_string())];
        c.admins = admins.clone();
        c
    };
    let hefei = cluster.start(&office("hefei"));
    let beijing_cfg = office("beijing-office");
    let beijing = cluster.start(&beijing_cfg);
    wait_connected(&[(&hub, "hefei"), (&hub, "beijing-office")], TIMEOUT);
    hefei.put("situation", "river/nanfei", b"7.5 m, honest");
    assert_converged(&[&hub, &hefei, &beijing], TIMEOUT);

    let relay_bundle = cluster.issue(RELAY, true);
    let relay = signer(&relay_bundle);
    let hefei_key = signer(&cluster.issue("hefei", false));
    let other_ca = Cluster::new();
    let stranger = signer(&other_ca.issue("hefei", false));
    let hefei_id = replica_of(&beijing, "hefei");

    // Workers drive the relay's connection while this thread polls the daemons' status.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for (target, addr) in [
        (&beijing, beijing_cfg.sync_listen),
        (&hub, hub_cfg.sync_listen),
    ] {
        let next = counter(target, "situation", &hefei_id) + 1;
        // 1. hefei's next write, forged: signed with the relay's own key.
        let forged = sign(
            &relay,
            version("situation", &hefei_id, next, "river/nanfei", b"0 m, forged"),
        );
        // 2. A version hefei really signed, its value altered on the way.
        let mut altered = sign(
            &hefei_key,
            version("drill", &hefei_id, 1, "evacuate", b"no"),
        );
        altered.value = Some(b"yes".to_vec());
        // 3. Signed by a certificate with hefei's name from another CA.
        let unknown = sign(
            &stranger,
            version("documents", &hefei_id, 1, "decree", b"from elsewhere"),
        );
        relay_session(
            &rt,
            &relay_bundle,
            (addr, target.name()),
            vec![forged, altered, unknown],
            &format!("{} to count signature ×2, unknown_signer ×1", target.name()),
            || {
                let (bad, unknown) = (
                    rejected(target, RELAY, "signature"),
                    rejected(target, RELAY, "unknown_signer"),
                );
                if bad >= 2 && unknown >= 1 {
                    Ok(())
                } else {
                    Err(format!("{bad}, {unknown}: {}", target.status()["peers"]))
                }
            },
        );
        eprintln!(
            "{} refused from {RELAY}: signature {}, unknown_signer {}",
            target.name(),
            rejected(target, RELAY, "signature"),
            rejected(target, RELAY, "unknown_signer")
        );
    }
    // Nothing of it was stored or relayed: hefei's value stands everywhere.
    for node in [&hub, &hefei, &beijing] {
        let r = node.get("situation", "river/nanfei").expect("present");
        assert_eq!(r.value, b"7.5 m, honest", "{}", node.name());
        assert_eq!(r.siblings, 1, "{}", node.name());
        assert!(node.get("drill", "evacuate").is_none(), "{}", node.name());
        assert!(node.get("documents", "decree").is_none(), "{}", node.name());
    }
    // The version hefei signed, unaltered, is taken from the same relay: the refusals above
    // were the alteration's.
    let intact = sign(
        &hefei_key,
        version("drill", &hefei_id, 1, "evacuate", b"no"),
    );
    relay_session(
        &rt,
        &relay_bundle,
        (beijing_cfg.sync_listen, beijing.name()),
        vec![intact],
        "beijing to take the intact version",
        || match beijing.get("drill", "evacuate") {
            Some(r) if r.value == b"no" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // 4. A certificate of hefei's that was revoked (a stolen laptop's bundle): the relay brings
    // its `_nodes` entry and a version signed with it; both are refused as revoked.
    let old_dir = cluster.dir().join("hefei-stolen");
    let old = pki::issue(
        "hefei",
        cluster.ca_dir(),
        &old_dir,
        &pki::IssueOptions::default(),
    )
    .expect("issue");
    let stolen = signer(&old_dir);
    hub.cli(&[
        "policy",
        "revoke-node",
        "hefei",
        "--serial",
        &old.serial_hex,
    ])
    .expect_success("revoke the stolen certificate");
    wait_for("the revocation to reach beijing", TIMEOUT, || match beijing
        .get("_policy", "revoked/hefei")
    {
        Some(_) => Ok(()),
        None => Err(String::new()),
    });
    let mut cert_entry = version(
        signing::NODES_COLLECTION,
        &hefei_id,
        counter(&beijing, signing::NODES_COLLECTION, &hefei_id) + 1,
        &signing::nodes_key("hefei", stolen.key_id()),
        stolen.cert_der(),
    );
    cert_entry.author = Some("hefei".into());
    let cert_entry = sign(&stolen, cert_entry);
    let backdated = sign(
        &stolen,
        version("drill", &hefei_id, 2, "evacuate", b"yes, says the thief"),
    );
    relay_session(
        &rt,
        &relay_bundle,
        (beijing_cfg.sync_listen, beijing.name()),
        vec![cert_entry, backdated],
        "beijing to count revoked ×2",
        || match rejected(&beijing, RELAY, "revoked") {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n}: {}", beijing.status()["peers"])),
        },
    );
    assert_eq!(
        beijing.get("drill", "evacuate").map(|r| r.value),
        Some(b"no".to_vec()),
        "a version signed with a revoked certificate was taken"
    );
    // And honest traffic goes on.
    hefei.put("situation", "river/nanfei", b"7.6 m, honest");
    wait_for(
        "hefei's next write to reach beijing",
        TIMEOUT,
        || match beijing.get("situation", "river/nanfei") {
            Some(r) if r.value == b"7.6 m, honest" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}
