//! Attacks through the sync session, played by the rogue peer with the `rogue-office` bundle:
//! poisoned causal contexts, vector and incarnation inflation, what the handshake reveals, a
//! heartbeat flood, and timestamps stamped to get the hub banned at a stricter office.

use std::time::{Duration, Instant};

use officesync_daemon::time::unix_ms_now;
use officesync_protocol::wire::{Batch, Complete, Heartbeat, Message};
use officesync_protocol::{Dot, Hlc, ReplicaId, Version, VersionVector};
use officesync_tests::rogue::Rogue;
use officesync_tests::TestNode;
use serde_json::Value;

use crate::common::{peer_entry, wait_for, HUB};
use crate::shared::{Scene, TIMEOUT};

/// The incarnation the rogue announces.
const ROGUE_INCARNATION: u32 = 0x00c0_ffee;

/// A runtime whose workers drive the rogue's connection while the test thread blocks on
/// the daemons' status.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn rogue_id() -> ReplicaId {
    ReplicaId::new("rogue-office", ROGUE_INCARNATION).expect("valid")
}

/// A version of `origin` in `situation`.
fn version(origin: &ReplicaId, counter: u64, key: &str, ms: u64, ctx: VersionVector) -> Version {
    Version {
        collection: "situation".into(),
        key: key.into(),
        dot: Dot::new(origin.clone(), counter),
        hlc: Hlc { ms, logical: 0 },
        context: ctx,
        value: Some(format!("rogue {counter}").into_bytes()),
        author: None,
        signature: None,
    }
}

fn batch(origin: &ReplicaId, versions: Vec<Version>) -> Message {
    Batch {
        collection: "situation".into(),
        origin: origin.clone(),
        versions,
    }
    .into()
}

fn complete(origin: &ReplicaId, through: u64) -> Message {
    Complete {
        collection: "situation".into(),
        origin: origin.clone(),
        through,
    }
    .into()
}

/// The replica id of `node` as the hub's vector of `situation` names it.
fn replica_of(hub: &TestNode, node: &str) -> ReplicaId {
    let status = hub.status();
    let vv = status["vv"]["situation"].as_object().expect("situation vv");
    vv.keys()
        .find(|o| o.split('@').next() == Some(node))
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("no replica of {node} in {vv:?}"))
}

/// How many origins the hub's vector of `collection` names.
fn origins(node: &TestNode, collection: &str) -> usize {
    node.status()["vv"][collection]
        .as_object()
        .map_or(0, |m| m.len())
}

/// `peer`'s entry in `node`'s status.
fn peer_status(node: &TestNode, peer: &str) -> Value {
    peer_entry(&node.status(), peer)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `node` counts refusals of `reason` from `peer`; returns the count.
fn wait_rejected(node: &TestNode, peer: &str, reason: &str) -> u64 {
    let mut count = 0;
    wait_for(
        &format!("{} to count {reason} from {peer}", node.name()),
        TIMEOUT,
        || {
            let p = peer_status(node, peer);
            count = p["rejected_by_reason"][reason].as_u64().unwrap_or(0);
            if count > 0 {
                Ok(())
            } else {
                Err(p.to_string())
            }
        },
    );
    count
}

/// The rogue, connected to the hub and through the session handshake.
async fn rogue_session(scene: &Scene) -> Rogue {
    let mut rogue = Rogue::connect(&scene.rogue_bundle, scene.hub_addr, HUB)
        .await
        .expect("the rogue's certificate is valid");
    rogue
        .hello("rogue-office", &rogue_id(), Vec::new())
        .await
        .expect("handshake");
    rogue
}

#[test]
fn a_poisoned_causal_context_cannot_silence_other_offices() {
    let mut scene = Scene::start();
    scene.honest_put("hefei", "situation", "shared/grain", b"hefei 1");
    crate::common::assert_converged(&[&scene.hub, &scene.hefei, &scene.beijing], TIMEOUT);
    let rss_before = scene.hub_rss_mib("before the poisoned context");
    let victims = [
        replica_of(&scene.hub, "hefei"),
        replica_of(&scene.hub, "beijing-office"),
    ];
    let poison: VersionVector = victims.iter().map(|r| (r.clone(), u64::MAX)).collect();
    let rt = runtime();
    rt.block_on(async {
        let mut rogue = rogue_session(&scene).await;
        let rogue_id = rogue_id();
        let honest_first = version(
            &rogue_id,
            1,
            "rogue/own",
            unix_ms_now(),
            VersionVector::new(),
        );
        let poisoned = version(&rogue_id, 2, "shared/grain", unix_ms_now(), poison.clone());
        rogue
            .send_message(&batch(&rogue_id, vec![honest_first, poisoned]))
            .await
            .expect("send");
        rogue
            .send_message(&complete(&rogue_id, 2))
            .await
            .expect("send");
        // The same context on a fresh key of its own, too.
        let again = version(&rogue_id, 3, "shared/other", unix_ms_now(), poison.clone());
        rogue
            .send_message(&batch(&rogue_id, vec![again]))
            .await
            .expect("send");
        rogue
            .send_message(&complete(&rogue_id, 3))
            .await
            .expect("send");
        // Refused and counted at the hub; the rogue's session is not what is closed.
        let refused = wait_rejected(&scene.hub, "rogue-office", "causal_context");
        eprintln!("hub refused {refused} versions with a poisoned context");
        // Its first version, before the poisoned one, was applied and relayed.
        wait_for("the rogue's own write to arrive", TIMEOUT, || {
            if scene.hefei.get("situation", "rogue/own").is_some() {
                Ok(())
            } else {
                Err(String::new())
            }
        });
        rogue.shutdown().await;
    });
    // Writes of that key at every office still land everywhere, as the newest value.
    scene.honest_put("hefei", "situation", "shared/grain", b"hefei 2");
    wait_for("hefei's new value to reach beijing", TIMEOUT, || {
        let r = scene.beijing.get("situation", "shared/grain");
        if r.as_ref().is_some_and(|r| r.value == b"hefei 2") {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    scene.honest_put("beijing-office", "situation", "shared/grain", b"beijing 3");
    wait_for("beijing's new value to reach hefei", TIMEOUT, || {
        let r = scene.hefei.get("situation", "shared/grain");
        if r.as_ref().is_some_and(|r| r.value == b"beijing 3") {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    // The poisoned keys hold no rogue version anywhere.
    for node in [&scene.hub, &scene.hefei, &scene.beijing] {
        assert!(
            node.get("situation", "shared/other").is_none(),
            "{}",
            node.name()
        );
        let r = node.get("situation", "shared/grain").expect("present");
        assert_eq!(r.siblings, 1, "{}: {r:?}", node.name());
    }
    scene.assert_intact("poisoned-context");
    let rss_after = scene.hub_rss_mib("after the poisoned context");
    assert!(
        rss_after < rss_before + 64.0,
        "{rss_before} -> {rss_after} MiB"
    );
}

#[test]
fn vector_inflation_is_refused_and_the_handshake_hides_unreadable_collections() {
    let mut scene = Scene::start();
    // A collection the rogue may neither read nor write.
    scene.hub.put(
        "_policy",
        "collections/secret",
        br#"{"read": ["general-office"], "write": ["general-office"]}"#,
    );
    scene.hub.put("secret", "plan", b"not for the rogue");
    let before = origins(&scene.hub, "situation");
    let rss_before = scene.hub_rss_mib("before the inflation");
    let rt = runtime();
    let started = Instant::now();
    let sent = rt.block_on(async {
        let mut rogue = Rogue::connect(&scene.rogue_bundle, scene.hub_addr, HUB)
            .await
            .expect("connect");
        let ack = rogue
            .hello("rogue-office", &rogue_id(), Vec::new())
            .await
            .expect("handshake");
        let shown: Vec<&str> = ack.vvs.iter().map(|(c, _)| c.as_str()).collect();
        assert!(shown.contains(&"situation"), "{shown:?}");
        assert!(!shown.contains(&"secret"), "the hub revealed {shown:?}");
        let mut sent = 0u64;
        for i in 0..5_000u32 {
            // Bare completions of incarnations nobody announced, of itself and of hefei.
            let own = ReplicaId::new("rogue-office", 0x1000_0000 + i).expect("valid");
            let other = ReplicaId::new("hefei", 0x2000_0000 + i).expect("valid");
            rogue.send_message(&complete(&own, 1)).await.expect("send");
            rogue
                .send_message(&complete(&other, 1))
                .await
                .expect("send");
            sent += 2;
            if i % 100 == 0 {
                // And batches of an unannounced incarnation of itself.
                let v = version(&own, 1, "inflated", unix_ms_now(), VersionVector::new());
                rogue
                    .send_message(&batch(&own, vec![v]))
                    .await
                    .expect("send");
                rogue.send_message(&complete(&own, 1)).await.expect("send");
                sent += 2;
            }
        }
        let refused = wait_rejected(&scene.hub, "rogue-office", "incarnation");
        eprintln!("sent {sent} inflating frames; hub refused {refused} versions");
        rogue.shutdown().await;
        sent
    });
    eprintln!("inflation took {:?}", started.elapsed());
    assert!(sent >= 10_000);
    assert_eq!(origins(&scene.hub, "situation"), before, "the vector grew");
    assert!(scene.hub.get("situation", "inflated").is_none());
    // Every handshake still works: hefei reconnects after a restart.
    scene.hefei.restart();
    crate::common::wait_connected(&[(&scene.hub, "hefei")], TIMEOUT);
    scene.assert_intact("vector-inflation");
    let rss_after = scene.hub_rss_mib("after the inflation");
    assert!(
        rss_after < rss_before + 64.0,
        "{rss_before} -> {rss_after} MiB"
    );
}

#[test]
fn a_heartbeat_flood_closes_the_rogue_session_as_bad_input() {
    let mut scene = Scene::start();
    let rss_before = scene.hub_rss_mib("before the heartbeat flood");
    let rt = runtime();
    rt.block_on(async {
        let mut rogue = rogue_session(&scene).await;
        // Probes as fast as the link takes them, never reading the echoes.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sent = 0u64;
        while Instant::now() < deadline && sent < 200_000 {
            let probe: Message = Heartbeat {
                now_ms: 0,
                seq: 2 * sent + 1,
            }
            .into();
            if rogue.send_message(&probe).await.is_err() {
                break; // the hub closed the connection
            }
            sent += 1;
        }
        let closed = rogue.closed().await;
        eprintln!("sent {sent} probes; the hub closed with {closed:?}");
        assert_eq!(
            closed.code,
            Some(
                officesync_protocol::wire::ErrorCode::FrameTooLarge
                    .as_u32()
                    .into()
            ),
            "{closed:?}"
        );
        rogue.shutdown().await;
    });
    wait_for("the hub to count the flood as bad input", TIMEOUT, || {
        let p = peer_status(&scene.hub, "rogue-office");
        if p["bad_input"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    scene.assert_intact("heartbeat-flood");
    let rss_after = scene.hub_rss_mib("after the heartbeat flood");
    assert!(
        rss_after < rss_before + 64.0,
        "{rss_before} -> {rss_after} MiB"
    );
}

#[test]
fn an_office_stamping_near_the_bound_cannot_get_the_hub_banned() {
    // hefei accepts at most 60 s of skew; the hub (and the rogue) the default 5 minutes.
    let mut scene = Scene::start_tuned("max_clock_skew_ms = 60000");
    let rt = runtime();
    rt.block_on(async {
        let mut rogue = rogue_session(&scene).await;
        let id = rogue_id();
        // Within the hub's bound (less its relay margin): the hub takes and relays it.
        let ahead = version(
            &id,
            1,
            "rogue/ahead",
            unix_ms_now() + 150_000,
            VersionVector::new(),
        );
        rogue
            .send_message(&batch(&id, vec![ahead]))
            .await
            .expect("send");
        rogue.send_message(&complete(&id, 1)).await.expect("send");
        wait_for("the hub to take the version", TIMEOUT, || {
            if scene.hub.get("situation", "rogue/ahead").is_some() {
                Ok(())
            } else {
                Err(String::new())
            }
        });
        rogue.shutdown().await;
    });
    // hefei refuses that version alone and counts it; the hub is not struck.
    let refused = wait_rejected(&scene.hefei, HUB, "clock_skew");
    eprintln!("hefei refused {refused} version(s) for clock skew");
    let hub_entry = peer_status(&scene.hefei, HUB);
    assert_eq!(hub_entry["bad_input"].as_u64(), Some(0), "{hub_entry}");
    assert_eq!(hub_entry["connected"], Value::Bool(true), "{hub_entry}");
    assert!(scene.hefei.get("situation", "rogue/ahead").is_none());
    // beijing (default bound) has it, and honest traffic flows both ways through the hub.
    wait_for("beijing to take the version", TIMEOUT, || {
        if scene.beijing.get("situation", "rogue/ahead").is_some() {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    scene.assert_intact("near-the-bound");
    let hub_entry = peer_status(&scene.hefei, HUB);
    assert_eq!(hub_entry["bad_input"].as_u64(), Some(0), "{hub_entry}");
}

#[test]
fn a_sibling_flood_is_capped_and_reads_stay_bounded() {
    let mut scene = Scene::start();
    scene.honest_put("hefei", "situation", "shared/flood", b"hefei");
    crate::common::assert_converged(&[&scene.hub, &scene.hefei, &scene.beijing], TIMEOUT);
    let rss_before = scene.hub_rss_mib("before the sibling flood");
    let rt = runtime();
    let rogue = rt.block_on(async {
        let mut rogue = rogue_session(&scene).await;
        let id = rogue_id();
        // 500 versions of one key, none superseding another (empty contexts).
        for chunk in 0..10u64 {
            let versions = (1..=50)
                .map(|i| {
                    let n = chunk * 50 + i;
                    version(&id, n, "shared/flood", unix_ms_now(), VersionVector::new())
                })
                .collect();
            rogue
                .send_message(&batch(&id, versions))
                .await
                .expect("send");
            rogue
                .send_message(&complete(&id, chunk * 50 + 50))
                .await
                .expect("send");
        }
        rogue
    });
    // The rogue's session stays open (the runtime's workers drive it) until the hub has taken
    // in the whole flood: closing it earlier would drop what is still in flight.
    wait_for("the flood to be applied or refused", TIMEOUT, || {
        let p = peer_status(&scene.hub, "rogue-office");
        let refused = p["rejected_by_reason"]["limit"].as_u64().unwrap_or(0);
        if refused >= 500 - 31 {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    eprintln!(
        "hub refused {} siblings past the limit",
        wait_rejected(&scene.hub, "rogue-office", "limit")
    );
    rt.block_on(rogue.shutdown());
    for node in [&scene.hub, &scene.hefei, &scene.beijing] {
        wait_for("the capped sibling set", TIMEOUT, || {
            match node.get("situation", "shared/flood") {
                Some(r) if r.siblings == 32 => Ok(()),
                other => Err(format!("{}: {other:?}", node.name())),
            }
        });
    }
    // An honest write replaces them all.
    scene.honest_put("beijing-office", "situation", "shared/flood", b"beijing");
    wait_for(
        "the honest write to win everywhere",
        TIMEOUT,
        || match scene.hefei.get("situation", "shared/flood") {
            Some(r) if r.value == b"beijing" && r.siblings == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    scene.assert_intact("sibling-flood");
    let rss_after = scene.hub_rss_mib("after the sibling flood");
    assert!(
        rss_after < rss_before + 64.0,
        "{rss_before} -> {rss_after} MiB"
    );
}
