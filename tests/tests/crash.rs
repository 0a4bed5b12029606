//! kill -9 durability: with `durability = "sync"`, every write the HTTP API acknowledged
//! before a SIGKILL is readable after the restart, with its acknowledged version (or
//! superseded by a later acknowledged write of the same key), round after round on the same
//! data dir. This proves no acknowledged write is lost when the process dies; it does not
//! model power loss (the page cache survives a SIGKILL). Run with the store in clear and
//! encrypted at rest.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use officesync_tests::http::split_version;
use officesync_tests::{officesync, test_seed, ApiClient, Cluster, OutputExt, TestRng};

const COLL: &str = "crash";
/// Distinct keys written (writes pick among them, so keys are overwritten within and across
/// rounds).
const KEYS: u64 = 300;
/// Kill/restart rounds on the same data dir.
const ROUNDS: usize = 3;
/// Upper bound on writes per round (the kill normally comes long before).
const MAX_WRITES: usize = 5_000;
/// The kill comes this many milliseconds after the writer starts (uniform, seeded).
const KILL_AFTER_MS: (u64, u64) = (20, 1_500);

/// The state a key must have after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    value: Vec<u8>,
    version: String,
}

/// What the writer thread did in one round.
#[derive(Debug, Default)]
struct Round {
    /// Acknowledged writes in order: key, value, version.
    acked: Vec<(String, Vec<u8>, String)>,
    /// The write that failed (sent, never acknowledged): it may or may not have been applied.
    in_flight: Option<(String, Vec<u8>)>,
    /// The error that ended the round and when it happened.
    error: Option<(Instant, String)>,
}

fn key_name(k: u64) -> String {
    format!("office/{k:03}")
}

/// Writes sequentially until a write fails (the daemon was killed) or `MAX_WRITES`.
fn write_until_killed(api: &ApiClient, round: usize, mut rng: TestRng) -> Round {
    let mut out = Round::default();
    for i in 0..MAX_WRITES {
        let key = key_name(rng.range(0, KEYS));
        let pad = usize::try_from(rng.range(0, 600)).expect("small");
        let value = format!("round {round} write {i} of {key} {}", "x".repeat(pad)).into_bytes();
        match api.try_put(COLL, &key, &value) {
            Ok(ack) => out.acked.push((key, value, ack.version)),
            Err(e) => {
                out.error = Some((Instant::now(), format!("{e:#}")));
                out.in_flight = Some((key, value));
                break;
            }
        }
    }
    out
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    kill_9_rounds("acknowledged_writes_survive_kill_9", false);
}

/// The same with the store encrypted at rest: sealing keeps every batch atomic.
#[test]
fn acknowledged_writes_survive_kill_9_with_encryption_at_rest() {
    kill_9_rounds(
        "acknowledged_writes_survive_kill_9_with_encryption_at_rest",
        true,
    );
}

/// [`ROUNDS`] rounds of writes cut by kill -9 on one data dir (encrypted when `encrypted`),
/// checking after each restart that every acknowledged write reads back.
fn kill_9_rounds(name: &str, encrypted: bool) {
    let seed = test_seed(name);
    let mut rng = TestRng::new(seed);
    let cluster = Cluster::new();
    let mut config = cluster.config("hefei");
    assert_eq!(config.durability, "sync");
    if encrypted {
        let key = cluster.dir().join("storage.key");
        officesync(&["storage-key".as_ref(), "--out".as_ref(), key.as_os_str()])
            .expect_success("officesync storage-key");
        config.encryption_key_file = Some(key);
    }
    let node = cluster.start(&config);
    let replica = node.status()["replica"].clone();

    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut max_counter = 0u64;
    let mut origin: Option<String> = None;
    for round in 1..=ROUNDS {
        let delay = Duration::from_millis(rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1));
        let writer_rng = TestRng::new(rng.next_u64());
        let api = node.api();
        let (result, killed_at) = thread::scope(|s| {
            let writer = s.spawn(|| write_until_killed(&api, round, writer_rng));
            thread::sleep(delay);
            let killed_at = Instant::now();
            node.kill9();
            (writer.join().expect("writer thread panicked"), killed_at)
        });
        eprintln!(
            "round {round}: killed after {delay:?}, {} writes acknowledged, last error: {:?}",
            result.acked.len(),
            result.error.as_ref().map(|(_, e)| e)
        );
        if let Some((at, error)) = &result.error {
            assert!(
                *at >= killed_at,
                "round {round}: a write failed while the daemon was still up: {error}\n\
                 --- log ---\n{}",
                node.current_log()
            );
        }

        // Acknowledged versions are fresh: same origin, counters rising, never reused.
        for (key, value, version) in &result.acked {
            let (o, counter) = split_version(version);
            let origin = origin.get_or_insert_with(|| o.to_owned());
            assert_eq!(
                o, origin,
                "round {round}: {key} acknowledged by another origin"
            );
            assert!(
                counter > max_counter,
                "round {round}: {key} acknowledged as {version}, but counter {max_counter} \
                 was already used (a dot was reused)"
            );
            max_counter = counter;
            expected.insert(
                key.clone(),
                Expected {
                    value: value.clone(),
                    version: version.clone(),
                },
            );
        }

        // Restart on the same data dir: it must come up with everything acknowledged.
        node.restart();
        let api = node.api();
        let status = node.status();
        assert_eq!(
            status["replica"], replica,
            "round {round}: the replica id changed"
        );
        if let Some((key, value)) = &result.in_flight {
            // The write cut by the kill may have been applied; if so it supersedes the key.
            if let Some(record) = api.get(COLL, key) {
                if &record.value == value {
                    let (_, counter) = split_version(&record.version);
                    assert!(
                        counter > max_counter,
                        "round {round}: unacknowledged write of {key} got reused dot {}",
                        record.version
                    );
                    max_counter = counter;
                    expected.insert(
                        key.clone(),
                        Expected {
                            value: value.clone(),
                            version: record.version,
                        },
                    );
                }
            }
        }
        let mut lost = Vec::new();
        for (key, want) in &expected {
            match api.get(COLL, key) {
                Some(r) if r.value == want.value && r.version == want.version => {}
                Some(r) => lost.push(format!(
                    "{key}: acknowledged {} ({} bytes), read back {} ({} bytes)",
                    want.version,
                    want.value.len(),
                    r.version,
                    r.value.len()
                )),
                None => lost.push(format!("{key}: acknowledged {}, now missing", want.version)),
            }
        }
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): {} of {} acknowledged keys lost after kill -9:\n{}\n\
             --- log ---\n{}",
            lost.len(),
            expected.len(),
            lost.join("\n"),
            node.log()
        );
        let scanned: BTreeSet<String> = api.scan(COLL, "").into_iter().map(|e| e.key).collect();
        let want: BTreeSet<String> = expected.keys().cloned().collect();
        assert_eq!(scanned, want, "round {round}: scan lists other keys");
        let records = status["collections"][COLL]["records"].as_u64();
        assert_eq!(
            records,
            Some(want.len() as u64),
            "round {round}: status disagrees with the data: {status:#}"
        );
        assert!(
            !want.is_empty(),
            "round {round}: nothing was ever acknowledged"
        );
    }
    let exit = node.stop();
    assert!(exit.success(), "SIGTERM after the rounds: {exit}");
}
