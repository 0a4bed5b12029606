//! Online backup and restore, end to end with the real binaries: `officesync backup` while
//! two writers keep an office busy holds every write acknowledged before it began and is a
//! consistent cut (each writer's keys a gap-free prefix); `officesync restore` refuses a data
//! dir in use, one that holds data (without `--force`) and a damaged file, and otherwise
//! rebuilds the office as a new incarnation that gets back from the general office what the
//! copy lacks, converges with both peers, and never gives one dot two contents.

#[allow(dead_code)] // not every suite uses every helper
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_converged, hub_config, office_config, wait_connected, wait_star_connected, BEIJING,
    HEFEI, HUB,
};
use officesync_tests::{Cluster, OutputExt, TestNode};

/// Collection the writers use.
const COLL: &str = "situation";
/// Concurrent writers on the office.
const WRITERS: usize = 2;
/// Records loaded before the writers start, so the backup spans many pages of the store.
const PRELOAD: usize = 3000;
/// Bytes of each preloaded value (stored in chunks: more rows).
const PRELOAD_VALUE: usize = 6000;

/// One writer's acknowledged writes, in order: `(index, version)`.
type Acks = Arc<Mutex<Vec<(u64, String)>>>;

fn key(writer: usize, i: u64) -> String {
    format!("load/{writer}/{i:06}")
}

fn value(writer: usize, i: u64) -> Vec<u8> {
    format!("{{\"writer\":{writer},\"i\":{i}}}").into_bytes()
}

/// Starts `WRITERS` threads writing new keys to `node` until `stop`.
fn start_writers(
    node: &TestNode,
    stop: &Arc<AtomicBool>,
) -> (Vec<Acks>, Vec<thread::JoinHandle<()>>) {
    let mut acks = Vec::new();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let api = node.api();
        let mine: Acks = Arc::default();
        acks.push(mine.clone());
        let stop = stop.clone();
        handles.push(thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let ack = api.put(COLL, &key(w, i), &value(w, i));
                mine.lock().expect("acks").push((i, ack.version));
                i += 1;
            }
        }));
    }
    (acks, handles)
}

fn lengths(acks: &[Acks]) -> Vec<usize> {
    acks.iter().map(|a| a.lock().expect("acks").len()).collect()
}

/// Loads `PRELOAD` records of pseudo-random bytes into `COLL` with `officesync import`.
fn preload(node: &TestNode, dir: &Path) {
    use base64::Engine as _;
    let mut rng = officesync_tests::TestRng::new(officesync_tests::test_seed("backup preload"));
    let mut lines = String::new();
    for i in 0..PRELOAD {
        let bytes: Vec<u8> = (0..PRELOAD_VALUE).map(|_| rng.next_u64() as u8).collect();
        lines.push_str(&format!(
            "{{\"key\":\"bulk/{i:05}\",\"value_base64\":\"{}\"}}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ));
    }
    let file = dir.join("preload.jsonl");
    std::fs::write(&file, lines).expect("write preload");
    node.cli(&["import", COLL, file.to_str().expect("utf-8")])
        .expect_success("officesync import");
}

/// `officesync restore FILE --config CONFIG [--force]`.
fn restore(config: &Path, file: &Path, force: bool) -> std::process::Output {
    let mut args = vec![
        "restore".as_ref(),
        file.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    if force {
        args.push("--force".as_ref());
    }
    officesync_tests::officesync(&args)
}

/// Every live record of `COLL` on `node`: version → (key, value).
fn dots(node: &TestNode) -> BTreeMap<String, (String, Vec<u8>)> {
    node.api()
        .scan(COLL, "")
        .into_iter()
        .map(|e| (e.version, (e.key, e.value.unwrap_or_default())))
        .collect()
}

#[test]
fn backup_under_load_restores_as_a_new_incarnation_that_converges_without_a_duplicate_dot() {
    let started = Instant::now();
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let hefei_cfg = office_config(&cluster, HEFEI, hub_cfg.sync_listen);
    let hefei = cluster.start(&hefei_cfg);
    let beijing = cluster.start(&office_config(&cluster, BEIJING, hub_cfg.sync_listen));
    wait_connected(
        &[(&hefei, HUB), (&beijing, HUB), (&hub, HEFEI)],
        Duration::from_secs(30),
    );
    beijing.put(COLL, "beijing/before", b"from beijing");
    let loading = Instant::now();
    preload(&hefei, cluster.dir());
    eprintln!("preloaded {PRELOAD} records in {:?}", loading.elapsed());
    let old_replica = hefei.status()["replica"]
        .as_str()
        .expect("replica in status")
        .to_owned();

    // Under load: two writers on the office, the backup in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let (acks, writers) = start_writers(&hefei, &stop);
    thread::sleep(Duration::from_millis(1500));
    let before = lengths(&acks);
    let file = cluster.dir().join("hefei.osbackup");
    let took = Instant::now();
    let out = hefei.cli(&["backup", "--output", file.to_str().expect("utf-8 path")]);
    out.expect_success("officesync backup");
    let backup_time = took.elapsed();
    let after_backup = lengths(&acks);
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    let total = lengths(&acks);
    eprintln!(
        "backup took {backup_time:?} ({} bytes); acknowledged writes: {before:?} before it \
         began, {after_backup:?} when it ended, {total:?} in all",
        std::fs::metadata(&file).expect("backup file").len()
    );
    assert!(
        before.iter().all(|&n| n > 10) && total.iter().zip(&after_backup).all(|(t, a)| t > a),
        "the writers were not busy around the backup: {before:?} {after_backup:?} {total:?}"
    );
    // Everything reaches the general office before the office loses its disk.
    assert_converged(&[&hub, &hefei, &beijing], Duration::from_secs(60));

    // The copy alone, restored on the side (no peers): every write acknowledged before the
    // backup began is in it, and it is a cut: each writer's keys are 0..n without a gap.
    let side_cfg = cluster.config(HEFEI);
    side_cfg.write();
    let restoring = Instant::now();
    restore(&side_cfg.config_path(), &file, false).expect_success("restore on the side");
    eprintln!("restore took {:?}", restoring.elapsed());
    let side = cluster.start(&side_cfg);
    let held = side.api().scan(COLL, "load/");
    for (w, writer_acks) in acks.iter().enumerate() {
        let writer_acks = writer_acks.lock().expect("acks").clone();
        let mut present: Vec<u64> = held
            .iter()
            .filter_map(|e| e.key.strip_prefix(&format!("load/{w}/")))
            .map(|i| i.parse().expect("index"))
            .collect();
        present.sort_unstable();
        let n = present.len() as u64;
        assert_eq!(
            present,
            (0..n).collect::<Vec<_>>(),
            "writer {w}: the backup is not a cut"
        );
        assert!(
            n as usize >= before[w],
            "writer {w}: {} writes were acknowledged before the backup began, it holds {n}",
            before[w]
        );
        assert!(
            n as usize <= after_backup[w] + 1,
            "writer {w}: the backup holds {n} writes, more than were made when it ended"
        );
        for e in held
            .iter()
            .filter(|e| e.key.starts_with(&format!("load/{w}/")))
        {
            let i: u64 = e.key[format!("load/{w}/").len()..].parse().expect("index");
            if let Some((_, version)) = writer_acks.get(i as usize) {
                assert_eq!(
                    &e.version, version,
                    "{} restored with another version",
                    e.key
                );
            }
            assert_eq!(e.value.as_deref(), Some(value(w, i).as_slice()));
        }
    }
    // The collection's own state (its record count and vector, read first in the store's key
    // order) agrees with the records read after it: one point in time.
    let side_status = side.status();
    let all = side.api().scan(COLL, "");
    assert_eq!(
        side_status["collections"][COLL]["records"].as_u64(),
        Some(all.len() as u64),
        "the restored collection state does not count the records restored"
    );
    let own = all
        .iter()
        .filter(|e| e.version.starts_with(&format!("{old_replica}:")))
        .count() as u64;
    assert_eq!(
        side_status["vv"][COLL][&old_replica].as_u64(),
        Some(own),
        "the restored vector of {old_replica} is not the writes restored: {}",
        side_status["vv"]
    );
    let side_replica = side_status["replica"].as_str().expect("replica").to_owned();
    assert_ne!(
        side_replica, old_replica,
        "a restore must be a new incarnation"
    );
    side.stop();

    // Refusals leave the data dir alone: in use, holding data, a damaged copy.
    let refused = restore(&hefei_cfg.config_path(), &file, true);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr_text());
    assert!(
        refused.stderr_text().contains("in use"),
        "{}",
        refused.stderr_text()
    );
    hefei.kill9();
    let refused = restore(&hefei_cfg.config_path(), &file, false);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr_text());
    assert!(
        refused.stderr_text().contains("--force"),
        "{}",
        refused.stderr_text()
    );
    let mut damaged = std::fs::read(&file).expect("read backup");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let damaged_file = cluster.dir().join("damaged.osbackup");
    std::fs::write(&damaged_file, &damaged).expect("write damaged copy");
    let refused = restore(&hefei_cfg.config_path(), &damaged_file, true);
    assert_ne!(
        refused.status.code(),
        Some(0),
        "a damaged backup was restored"
    );
    assert!(
        hefei_cfg.data_dir.join("sled").exists(),
        "the data dir was touched"
    );

    // The office's disk is "lost": restore the copy in its place and start it.
    restore(&hefei_cfg.config_path(), &file, true).expect_success("restore --force");
    hefei.restart();
    let new_replica = hefei.status()["replica"]
        .as_str()
        .expect("replica")
        .to_owned();
    assert_ne!(new_replica, old_replica);
    assert_ne!(new_replica, side_replica);
    for i in 0..20 {
        let ack = hefei.put(COLL, &format!("after/{i}"), format!("new {i}").as_bytes());
        assert!(
            ack.version.starts_with(&format!("{new_replica}:")),
            "a write after the restore got {} (not of {new_replica})",
            ack.version
        );
    }
    wait_connected(&[(&hefei, HUB)], Duration::from_secs(30));
    assert_converged(&[&hub, &hefei, &beijing], Duration::from_secs(90));
    // What the copy lacked came back: every write of the old incarnation is here.
    let now = dots(&hefei);
    for (w, writer_acks) in acks.iter().enumerate() {
        for (i, version) in writer_acks.lock().expect("acks").iter() {
            let (k, v) = now
                .get(version)
                .unwrap_or_else(|| panic!("{version} ({}) did not come back", key(w, *i)));
            assert_eq!(
                (k.as_str(), v.as_slice()),
                (key(w, *i).as_str(), value(w, *i).as_slice())
            );
        }
    }
    // No dot anywhere with two contents.
    let mut seen: BTreeMap<String, (String, Vec<u8>, &str)> = BTreeMap::new();
    for node in [&hub, &hefei, &beijing] {
        for (dot, (k, v)) in dots(node) {
            if let Some((k0, v0, at)) = seen.get(&dot) {
                assert!(
                    (k0, v0) == (&k, &v),
                    "dot {dot} is {k0}={v0:?} on {at} but {k}={v:?} on {}",
                    node.name()
                );
            } else {
                seen.insert(dot, (k, v, node.name()));
            }
        }
    }
    eprintln!(
        "{} distinct dots, no duplicate; test took {:?}",
        seen.len(),
        started.elapsed()
    );
}

#[test]
fn a_backup_of_an_encrypted_store_stays_sealed_and_restores_only_with_its_key() {
    let cluster = Cluster::new();
    let key = cluster.dir().join("storage.key");
    officesync_tests::officesync(&["storage-key", "--out", key.to_str().expect("utf-8")])
        .expect_success("officesync storage-key");
    let mut cfg = cluster.config(HEFEI);
    cfg.encryption_key_file = Some(key.clone());
    let node = cluster.start(&cfg);
    let secret = b"grain reserve: 1200 t, sealed";
    node.put(COLL, "hefei/secret", secret);
    let file = cluster.dir().join("sealed.osbackup");
    let out = node.cli(&[
        "--json",
        "backup",
        "--output",
        file.to_str().expect("utf-8"),
    ]);
    out.expect_success("officesync backup");
    let told: serde_json::Value = serde_json::from_str(&out.stdout_text()).expect("backup --json");
    assert_eq!(told["sealed"], true, "{told}");
    node.stop();
    // The value is not in the file in clear (zstd of sealed bytes, never of the plaintext).
    let bytes = std::fs::read(&file).expect("read backup");
    assert!(!bytes.windows(secret.len()).any(|w| w == secret));

    // Without the key, or with another, the restore is refused and writes nothing.
    let other = cluster.dir().join("other.key");
    officesync_tests::officesync(&["storage-key", "--out", other.to_str().expect("utf-8")])
        .expect_success("officesync storage-key");
    for key_file in [None, Some(other)] {
        let mut side = cluster.config(HEFEI);
        side.encryption_key_file = key_file.clone();
        side.write();
        let refused = restore(&side.config_path(), &file, false);
        assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr_text());
        assert!(
            refused.stderr_text().contains("key"),
            "the refusal names the key: {}",
            refused.stderr_text()
        );
        for left in [
            side.data_dir.clone(),
            side.data_dir.with_file_name("data.restoring"),
        ] {
            assert!(!left.exists(), "a refused restore left {}", left.display());
        }
    }
    // With the node's key it is whole again.
    let mut side = cluster.config(HEFEI);
    side.encryption_key_file = Some(key);
    side.write();
    restore(&side.config_path(), &file, false).expect_success("restore with the key");
    let restored = cluster.start(&side);
    assert_eq!(
        restored.get(COLL, "hefei/secret").expect("restored").value,
        secret
    );
}

#[test]
fn the_general_office_restored_from_a_backup_gets_back_what_it_wrote_after_the_copy() {
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    let hefei = cluster.start(&office_config(&cluster, HEFEI, hub_cfg.sync_listen));
    let beijing = cluster.start(&office_config(&cluster, BEIJING, hub_cfg.sync_listen));
    wait_star_connected(&hub, &hefei, &beijing, Duration::from_secs(30));
    let old_replica = hub.status()["replica"]
        .as_str()
        .expect("replica")
        .to_owned();
    let mut written = BTreeMap::new();
    for i in 0..10 {
        let k = format!("gov/before/{i}");
        written.insert(hub.put(COLL, &k, k.as_bytes()).version, k);
    }
    let file = cluster.dir().join("gov.osbackup");
    hub.cli(&["backup", "--output", file.to_str().expect("utf-8 path")])
        .expect_success("officesync backup");
    // After the copy: the general office writes more (overwrites included), and the offices
    // receive it before the general office loses its disk.
    for i in 0..30 {
        let k = format!("gov/after/{}", i % 20);
        written.insert(
            hub.put(COLL, &k, format!("after {i}").as_bytes()).version,
            k,
        );
    }
    hefei.put(COLL, "hefei/1", b"from hefei");
    assert_converged(&[&hub, &hefei, &beijing], Duration::from_secs(60));
    let expected = dots(&hub);

    hub.kill9();
    restore(&hub_cfg.config_path(), &file, true).expect_success("restore --force");
    hub.restart();
    let new_replica = hub.status()["replica"]
        .as_str()
        .expect("replica")
        .to_owned();
    assert_ne!(
        new_replica, old_replica,
        "a restore must be a new incarnation"
    );
    // The offices notice the old connection is gone after their idle timeout (30 s).
    wait_connected(&[(&hub, HEFEI), (&hub, BEIJING)], Duration::from_secs(90));
    assert_converged(&[&hub, &hefei, &beijing], Duration::from_secs(90));
    // Every live version of the old incarnation came back from the offices, with its content.
    let now = dots(&hub);
    for (version, kv) in &expected {
        assert_eq!(
            now.get(version),
            Some(kv),
            "{version} ({}) did not come back to the restored general office",
            kv.0
        );
    }
    assert!(
        expected
            .keys()
            .any(|v| v.starts_with(&format!("{old_replica}:"))
                && written.get(v).is_some_and(|k| k.starts_with("gov/after/"))),
        "the test wrote nothing after the copy"
    );
    // The restored general office writes under its new id, and that reaches the offices.
    let ack = hub.put(COLL, "gov/new", b"new");
    assert!(ack.version.starts_with(&format!("{new_replica}:")));
    assert_converged(&[&hub, &hefei, &beijing], Duration::from_secs(60));
}
