//! The small ones, against a real daemon and the real CLI: `officesync import DIR` does not
//! follow a link planted in a folder others can write (a root-run import would otherwise
//! replicate `node.key`), `officesync scan` shows keys that carry terminal escapes escaped
//! (`--json` keeps them exact), and a data dir the daemon creates is its user's only.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use officesync_tests::Cluster;
use serde_json::Value;

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn import_of_a_folder_does_not_follow_a_planted_link_to_the_node_key() {
    let cluster = Cluster::new();
    let config = cluster.config("hefei");
    let node = cluster.start(&config);
    let key_file = config.tls_dir.join("node.key");
    let secret = fs::read(&key_file).expect("node.key");

    // A drop folder others can write: one honest file, a link to the node's key and a link
    // to the directory holding it.
    let drop = cluster.dir().join("drop");
    fs::create_dir_all(drop.join("reports")).expect("mkdir");
    fs::write(drop.join("reports/grain.txt"), b"100t").expect("write");
    symlink(&key_file, drop.join("reports/node.key")).expect("symlink");
    symlink(&config.tls_dir, drop.join("tls")).expect("symlink");

    let out = node.cli(&["import", "documents", drop.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for name in ["reports/node.key", "tls"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("drop/{name}:")))
            .unwrap_or_else(|| panic!("no word on {name}:\n{stderr}"));
        assert!(line.contains("symbolic link"), "{line}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 1 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        node.get("documents", "reports/grain.txt").map(|r| r.value),
        Some(b"100t".to_vec())
    );
    for key in ["reports/node.key", "tls/node.key"] {
        assert!(node.get("documents", key).is_none(), "{key} was imported");
    }
    let held = node.api().scan("documents", "");
    assert!(
        held.iter().all(|r| r.value.as_deref() != Some(&secret[..])),
        "the node key's bytes were imported"
    );
}

#[test]
fn scan_shows_keys_with_terminal_escapes_escaped_and_json_keeps_them() {
    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    // Set the window title, clear the screen and fake a second line.
    let hostile = "x\u{1b}]0;owned\u{7}\u{1b}[2J\nhefei/fake\tline";
    node.put("situation", hostile, b"v");
    node.put("situation", "plain", b"{\"t\":1}");

    let out = node.cli(&["scan", "situation"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one line per record: {text:?}");
    assert!(
        lines[1].starts_with("\"x\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\nhefei/fake\\tline\"\t"),
        "{text:?}"
    );
    assert!(lines[0].starts_with("plain\t"), "{text:?}");

    let out = node.cli(&["--json", "scan", "situation"]);
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys: Vec<&str> = json["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert_eq!(keys, ["plain", hostile], "--json keeps keys exact");
}

#[test]
fn the_data_dir_the_daemon_creates_is_owner_only() {
    let cluster = Cluster::new();
    let config = cluster.config("hefei");
    let data = config.data_dir.clone();
    assert!(!data.exists(), "the harness made {}", data.display());
    let node = cluster.start(&config);
    node.put("situation", "k", b"v");
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    assert_eq!(mode(&data.join("sled")), 0o700);
    for file in ["LOCK", "DURABLE"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    // sled's own files and directories follow the umask; the 0700 data dir is what keeps
    // others out of them. Listed for the log.
    let mut open_to_others = Vec::new();
    let mut dirs = vec![data.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if fs::symlink_metadata(&path).expect("stat").is_dir() {
                dirs.push(path.clone());
            }
            if mode(&path) & 0o077 != 0 {
                open_to_others.push(path.strip_prefix(&data).expect("inside").to_owned());
            }
        }
    }
    eprintln!("inside the 0700 data dir, open to others by their own mode: {open_to_others:?}");
    node.stop();
}
