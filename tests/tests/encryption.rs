//! Encryption at rest end to end, with the built binaries: keys made by
//! `officesync storage-key`, a hub and an office that each encrypt their store with their own
//! key, and a control office without encryption. Records carrying a marker (small ones and a
//! 1 MiB one that the store chunks) replicate everywhere; with the daemons stopped, no file
//! under an encrypted data dir holds the marker, while the control's data dir does (so the
//! search itself is shown to work). A wrong, missing or absent key is refused, naming the
//! file; the right key reads everything back. A store kept in clear is refused with a key
//! until `officesyncd --rekey` encrypts it, and a key is changed with
//! `previous_encryption_key_files` and `--rekey`.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_converged, hub_config, office_config, BEIJING, HEFEI};
use officesync_tests::process::{run_bounded, CLI_TIMEOUT};
use officesync_tests::{bins, officesync, Cluster, OutputExt, StartFailure, TestConfig, TestNode};

/// In every value written; must be found in no file of an encrypted data dir.
const MARKER: &str = "MARKER-at-rest-6c1e9b-wuhu-grain-ledger";
/// Records of ordinary size.
const SMALL: usize = 20;
/// The large value (the store keeps it in 8 KiB chunks).
const LARGE_BYTES: usize = 1 << 20;
/// Small data sets converge within this on a busy 2-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// `officesync storage-key --out DIR/keys/NAME`; checks the file is 0600 and returns it.
fn make_key(cluster: &Cluster, name: &str) -> PathBuf {
    let dir = cluster.dir().join("keys");
    std::fs::create_dir_all(&dir).expect("keys dir");
    let path = dir.join(name);
    let out = officesync(&["storage-key".as_ref(), "--out".as_ref(), path.as_os_str()]);
    out.expect_success("officesync storage-key");
    assert!(out.stdout_text().contains("key id"), "{}", out.describe());
    let mode = std::fs::metadata(&path)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    path
}

/// The records every test writes: `(key, value)`, the last one large.
fn records(tag: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = (0..SMALL)
        .map(|i| {
            let value = format!("{{\"office\":\"{tag}\",\"n\":{i},\"note\":\"{MARKER}\"}}");
            (format!("{tag}/report-{i:02}"), value.into_bytes())
        })
        .collect();
    let large: Vec<u8> = format!("{MARKER} {tag} ")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(LARGE_BYTES)
        .collect();
    out.push((format!("{tag}/archive"), large));
    out
}

fn write_all(node: &TestNode, records: &[(String, Vec<u8>)]) {
    for (key, value) in records {
        node.put("situation", key, value);
    }
}

fn assert_reads_back(node: &TestNode, records: &[(String, Vec<u8>)]) {
    for (key, value) in records {
        let read = node
            .get("situation", key)
            .unwrap_or_else(|| panic!("{}: {key} missing", node.name()));
        assert!(
            read.value == *value,
            "{}: {key} reads back changed",
            node.name()
        );
    }
}

/// Every file under `dir` that holds `needle`, and how many files were searched.
fn files_holding(dir: &Path, needle: &[u8]) -> (Vec<PathBuf>, usize) {
    let mut found = Vec::new();
    let mut searched = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let kind = std::fs::symlink_metadata(&path).expect("stat").file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                searched += 1;
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    (found, searched)
}

/// Starts `config` expecting a refused start; returns the failure's log.
fn refused(cluster: &Cluster, config: &TestConfig, what: &str) -> StartFailure {
    match cluster.try_start(config) {
        Ok(node) => panic!("{what}: the daemon started\n{}", node.log()),
        Err(failure) => {
            let status = failure
                .status
                .unwrap_or_else(|| panic!("{what}: the daemon hung instead of exiting: {failure}"));
            assert!(!status.success(), "{what}: exit {status}");
            failure
        }
    }
}

/// The log line officesyncd printed for a refused start (the one naming the problem).
fn error_line(failure: &StartFailure) -> &str {
    failure
        .log
        .lines()
        .rev()
        .find(|l| l.starts_with("officesyncd: "))
        .unwrap_or_else(|| panic!("no officesyncd error line in:\n{}", failure.log))
}

/// `officesyncd --config CONFIG --rekey`.
fn rekey(config: &TestConfig) -> std::process::Output {
    let mut cmd = Command::new(bins::officesyncd_path());
    cmd.arg("--config")
        .arg(config.config_path())
        .arg("--rekey")
        .env("RUST_LOG", "warn");
    run_bounded(cmd, None, CLI_TIMEOUT)
}

#[test]
fn encrypted_nodes_keep_no_value_in_clear_and_refuse_a_wrong_key() {
    let cluster = Cluster::new();
    let hub_key = make_key(&cluster, "general-office.key");
    let hefei_key = make_key(&cluster, "hefei.key");

    let mut hub_cfg = hub_config(&cluster);
    hub_cfg.encryption_key_file = Some(hub_key.clone());
    let hub = cluster.start(&hub_cfg);
    let mut hefei_cfg = office_config(&cluster, HEFEI, hub_cfg.sync_listen);
    hefei_cfg.encryption_key_file = Some(hefei_key.clone());
    let hefei = cluster.start(&hefei_cfg);
    // The control: same data, no encryption.
    let control_cfg = office_config(&cluster, BEIJING, hub_cfg.sync_listen);
    let control = cluster.start(&control_cfg);

    let at_hub = records("hub");
    let at_hefei = records("hefei");
    write_all(&hub, &at_hub);
    write_all(&hefei, &at_hefei);
    assert_converged(&[&hub, &hefei, &control], CONVERGE_TIMEOUT);
    for node in [&hub, &hefei, &control] {
        assert_reads_back(node, &at_hub);
        assert_reads_back(node, &at_hefei);
    }
    let digest = hefei.status()["collections"]["situation"]["digest"].clone();
    for node in [&control, &hefei, &hub] {
        let exit = node.stop();
        assert!(exit.success(), "{}: {exit}\n{}", node.name(), node.log());
    }

    // No file of an encrypted data dir holds a value; the control's does.
    for cfg in [&hub_cfg, &hefei_cfg] {
        let (found, searched) = files_holding(&cfg.data_dir, MARKER.as_bytes());
        assert!(searched > 0, "{}: no files", cfg.data_dir.display());
        assert!(
            found.is_empty(),
            "{}: values in clear in {found:?}",
            cfg.name
        );
    }
    let (found, _) = files_holding(&control_cfg.data_dir, MARKER.as_bytes());
    assert!(
        !found.is_empty(),
        "the search finds nothing even in the control's data dir"
    );
    // A key file stays outside the data dir (the config refuses one inside it).
    assert!(!hefei_key.starts_with(&hefei_cfg.data_dir));

    // A wrong key: refused, naming the key file.
    let mut wrong = hefei_cfg.clone();
    wrong.encryption_key_file = Some(make_key(&cluster, "wrong.key"));
    let failure = refused(&cluster, &wrong, "wrong key");
    let line = error_line(&failure);
    assert!(line.contains("wrong.key"), "{line}");
    assert!(line.contains("is not the key the store"), "{line}");

    // No key at all: refused, saying the store is encrypted.
    let mut none = hefei_cfg.clone();
    none.encryption_key_file = None;
    let line = error_line(&refused(&cluster, &none, "no key")).to_owned();
    assert!(line.contains("is encrypted"), "{line}");
    assert!(line.contains("storage.encryption_key_file"), "{line}");

    // A key file that is not there: the config is refused (exit 2), naming the file.
    let mut missing = hefei_cfg.clone();
    missing.encryption_key_file = Some(cluster.dir().join("keys/lost.key"));
    let failure = refused(&cluster, &missing, "missing key file");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(2));
    let line = error_line(&failure);
    assert!(line.contains("lost.key"), "{line}");
    assert!(line.contains("storage.encryption_key_file"), "{line}");

    // The right key: everything reads back, the same versions as before.
    let hefei = cluster.start(&hefei_cfg);
    assert_reads_back(&hefei, &at_hub);
    assert_reads_back(&hefei, &at_hefei);
    assert_eq!(hefei.status()["collections"]["situation"]["digest"], digest);
    hefei.stop();
}

#[test]
fn storage_key_refuses_to_replace_a_key_unless_forced() {
    let cluster = Cluster::new();
    let path = make_key(&cluster, "storage.key");
    let before = std::fs::read(&path).expect("key");
    let again = officesync(&["storage-key".as_ref(), "--out".as_ref(), path.as_os_str()]);
    again.expect_code(2, "storage-key over an existing key");
    assert!(
        again.stderr_text().contains("already exists"),
        "{}",
        again.describe()
    );
    assert_eq!(
        std::fs::read(&path).expect("key"),
        before,
        "the key was replaced"
    );
    officesync(&[
        "storage-key".as_ref(),
        "--out".as_ref(),
        path.as_os_str(),
        "--force".as_ref(),
    ])
    .expect_success("storage-key --force");
    assert_ne!(std::fs::read(&path).expect("key"), before);
    let mode = std::fs::metadata(&path).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_store_in_clear_is_encrypted_by_rekey_and_keys_change_with_rekey() {
    let cluster = Cluster::new();
    let mut cfg = cluster.config(HEFEI);
    let node = cluster.start(&cfg);
    let first = records("before");
    write_all(&node, &first);
    assert!(node.stop().success());

    // A key on a store kept in clear: refused, pointing at --rekey.
    let key1 = make_key(&cluster, "key1");
    cfg.encryption_key_file = Some(key1.clone());
    let failure = refused(&cluster, &cfg, "plaintext store with a key");
    let line = error_line(&failure);
    assert!(
        line.contains("not encrypted") && line.contains("--rekey"),
        "{line}"
    );

    // --rekey encrypts it in place; then it starts and reads back.
    let out = rekey(&cfg);
    out.expect_success("officesyncd --rekey");
    assert!(
        out.stdout_text().contains("encrypted"),
        "{}",
        out.describe()
    );
    let check = officesync(&[
        "config".as_ref(),
        "check".as_ref(),
        cfg.config_path().as_os_str(),
    ]);
    check.expect_success("config check");
    assert!(
        check.stdout_text().contains("encrypted at rest"),
        "{}",
        check.describe()
    );
    let node = cluster.start(&cfg);
    assert_reads_back(&node, &first);
    let second = records("after");
    write_all(&node, &second);
    assert!(node.stop().success());

    // A new key, the old one kept as previous: reads everything, writes with the new one.
    let key2 = make_key(&cluster, "key2");
    cfg.encryption_key_file = Some(key2.clone());
    let with_previous = |cfg: &TestConfig| {
        cfg.write();
        let text = std::fs::read_to_string(cfg.config_path()).expect("config");
        let text = text.replacen(
            "[storage]\n",
            &format!(
                "[storage]\nprevious_encryption_key_files = [{}]\n",
                officesync_tests::cluster::toml_path(&key1)
            ),
            1,
        );
        std::fs::write(cfg.config_path(), text).expect("config");
    };
    with_previous(&cfg);
    let node = TestNode::start(cfg.spec());
    assert_reads_back(&node, &first);
    let third = records("rotated");
    write_all(&node, &third);
    assert!(node.stop().success());

    // Without the old key the store is refused: values it sealed remain.
    let failure = refused(&cluster, &cfg, "old key dropped before --rekey");
    let line = error_line(&failure);
    assert!(line.contains("previous_encryption_key_files"), "{line}");

    // --rekey re-seals them with the new key; then the new key alone opens everything.
    with_previous(&cfg);
    let out = rekey(&cfg);
    out.expect_success("officesyncd --rekey (rotation)");
    assert!(
        out.stdout_text().contains("re-sealed"),
        "{}",
        out.describe()
    );
    let node = cluster.start(&cfg);
    for set in [&first, &second, &third] {
        assert_reads_back(&node, set);
    }
    assert!(node.stop().success());
    // And the first key no longer opens it.
    cfg.encryption_key_file = Some(key1);
    let line = error_line(&refused(&cluster, &cfg, "retired key")).to_owned();
    assert!(
        line.contains("key1") && line.contains("is not the key"),
        "{line}"
    );
}
