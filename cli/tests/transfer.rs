//! `officesync import` and `export` against a real `officesyncd` started from
//! the workspace's target directory (built by `cargo build --workspace --bins`).

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::run_with;
use officesync_daemon::config::{Config, Durability};
use officesync_daemon::net::free_udp_port;
use serde_json::{json, Value};

/// How long the daemon may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running daemon, killed when dropped (also when the test panics).
struct Daemon {
    child: Child,
    api: String,
    /// The config file: `--config` gives the CLI the API address and the admin token the
    /// daemon wrote in its data dir.
    config: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// The daemon's log so far, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `officesyncd` next to this test's executable, if built.
fn daemon_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let dir = if deps.ends_with("deps") {
        deps.parent()?
    } else {
        deps
    };
    let bin = dir.join(format!("officesyncd{}", std::env::consts::EXE_SUFFIX));
    bin.is_file().then_some(bin)
}

fn free_tcp_port() -> u16 {
    officesync_daemon::net::free_tcp_port().expect("free tcp port")
}

/// Runs `officesync` with `args` and `stdin` against no inherited API.
fn officesync(args: &[&str], stdin: &[u8]) -> Output {
    run_with(args, stdin, &[])
}

fn succeed(args: &[&str]) -> Output {
    let out = officesync(args, b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "officesync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Issues a bundle, writes a config and starts `officesyncd`; `None` when the
/// daemon binary has not been built.
fn start_daemon() -> Option<Daemon> {
    start_daemon_with(None)
}

/// [`start_daemon`] with `[storage] max_value_bytes` set to `max_value_bytes`
/// when given.
fn start_daemon_with(max_value_bytes: Option<usize>) -> Option<Daemon> {
    let Some(bin) = daemon_binary() else {
        eprintln!(
            "skipping: officesyncd is not built next to the test executable; \
             run `cargo build --workspace --bins` first"
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    let tls = dir.path().join("tls");
    let path = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();
    succeed(&["ca", "init", "--dir", &path(&ca)]);
    succeed(&[
        "ca",
        "issue",
        "hefei",
        "--ca-dir",
        &path(&ca),
        "--out",
        &path(&tls),
    ]);
    let api = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let sync = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port().expect("free udp port")));
    let mut builder = Config::builder("hefei", dir.path().join("data"), &tls)
        .api_listen(api)
        .sync_listen(sync)
        .durability(Durability::Periodic);
    if let Some(bytes) = max_value_bytes {
        builder = builder.max_value_bytes(bytes);
    }
    let config = builder.build();
    let config_path = dir.path().join("officesyncd.toml");
    std::fs::write(&config_path, config.to_toml_string()).expect("write config");
    let log = dir.path().join("officesyncd.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("spawn officesyncd");
    let mut daemon = Daemon {
        child,
        api: api.to_string(),
        config: config_path.to_str().expect("utf-8 temp path").to_owned(),
        log,
        _dir: dir,
    };

    let agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .new_agent();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if agent
            .get(format!("http://{}/health", daemon.api))
            .call()
            .is_ok()
        {
            return Some(daemon);
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("officesyncd exited with {status}:\n{}", daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "officesyncd not healthy within {START_TIMEOUT:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every live record of a collection: key and raw value.
fn records(daemon: &Daemon, collection: &str) -> Vec<(String, Vec<u8>)> {
    let out = succeed(&["--config", &daemon.config, "export", collection]);
    let text = String::from_utf8(out.stdout).expect("utf-8 export");
    text.lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("JSON line");
            let key = record["key"].as_str().expect("key").to_owned();
            let value = match record.get("value") {
                Some(value) => value.to_string().into_bytes(),
                None => base64::engine::general_purpose::STANDARD
                    .decode(record["value_base64"].as_str().expect("value_base64"))
                    .expect("base64"),
            };
            (key, value)
        })
        .collect()
}

/// The raw value of one record, with `get`.
fn get(daemon: &Daemon, collection: &str, key: &str) -> Vec<u8> {
    succeed(&["--config", &daemon.config, "get", collection, key]).stdout
}

#[test]
fn import_and_export_round_trip_against_a_real_daemon() {
    let Some(daemon) = start_daemon() else {
        return;
    };
    let api = daemon.config.clone();
    let work = tempfile::tempdir().expect("tempdir");

    // 2,000 good lines (JSON and binary values), 3 bad ones, a blank line.
    let mut lines = Vec::new();
    let mut bad_lines = Vec::new();
    for i in 0..2000 {
        if i == 10 {
            lines.push("{not json".to_owned());
            bad_lines.push(lines.len());
        }
        if i == 500 {
            lines.push(json!({"value": 1}).to_string());
            bad_lines.push(lines.len());
        }
        if i == 1500 {
            lines.push(json!({"key": "", "value": 1}).to_string());
            bad_lines.push(lines.len());
            lines.push(String::new());
        }
        let key = format!("k/{i:05} é?#%");
        let line = if i % 3 == 0 {
            let bytes = [0u8, 0xff, (i % 256) as u8, b'\n'];
            json!({"key": key, "value_base64": base64::engine::general_purpose::STANDARD.encode(bytes)})
        } else {
            json!({"key": key, "value": {"n": i, "name": format!("rec {i}"), "list": [1.5, null, true]}})
        };
        lines.push(line.to_string());
    }
    let file = work.path().join("in.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write input");
    let out = officesync(
        &[
            "--config",
            &api,
            "import",
            "source",
            file.to_str().expect("utf-8"),
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for line in &bad_lines {
        assert!(
            stderr.contains(&format!("line {line}:")),
            "line {line}: {stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 2000 records, 3 bad lines, 0 failed"
    );
    let source = records(&daemon, "source");
    assert_eq!(source.len(), 2000);
    assert_eq!(
        get(&daemon, "source", "k/00000 é?#%"),
        [0u8, 0xff, 0, b'\n']
    );
    assert_eq!(
        get(&daemon, "source", "k/00001 é?#%"),
        br#"{"list":[1.5,null,true],"n":1,"name":"rec 1"}"#
    );

    // Non-canonical JSON and text stored by `put` survive the round trip too.
    succeed(&[
        "--config",
        &api,
        "put",
        "source",
        "spaced",
        "{\"b\": 1, \"a\": 2}",
    ]);
    succeed(&["--config", &api, "put", "source", "text", "plain text"]);
    let source = records(&daemon, "source");

    // Export to a file, import into another collection: identical values.
    let exported = work.path().join("export.jsonl");
    succeed(&[
        "--config",
        &api,
        "export",
        "source",
        "--output",
        exported.to_str().expect("utf-8"),
    ]);
    let out = succeed(&[
        "--config",
        &api,
        "--json",
        "import",
        "copy",
        exported.to_str().expect("utf-8"),
    ]);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["imported"], 2002);
    assert_eq!(summary["bad_lines"], 0);
    assert_eq!(summary["failed"], 0);
    assert_eq!(records(&daemon, "copy"), source);
    assert_eq!(get(&daemon, "copy", "spaced"), b"{\"b\": 1, \"a\": 2}");

    // A directory tree: keys are relative paths with `/`.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("hefei/grain")).expect("mkdir");
    std::fs::write(tree.join("readme.txt"), "hello\n").expect("write");
    std::fs::write(tree.join("hefei/grain/2024.bin"), [1u8, 2, 0, 255]).expect("write");
    std::fs::write(tree.join("hefei/empty"), b"").expect("write");
    let out = succeed(&[
        "--config",
        &api,
        "import",
        "files",
        tree.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 3 records, 0 bad lines, 0 failed"
    );
    assert_eq!(
        records(&daemon, "files"),
        vec![
            ("hefei/empty".to_owned(), Vec::new()),
            ("hefei/grain/2024.bin".to_owned(), vec![1u8, 2, 0, 255]),
            ("readme.txt".to_owned(), b"hello\n".to_vec()),
        ]
    );

    // Standard input.
    let input = b"{\"key\": \"a\", \"value\": [1, 2]}\n{\"key\": \"b\", \"value\": \"x\"}\n";
    let out = officesync(&["--config", &api, "import", "stdin", "-"], input);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&daemon, "stdin", "a"), b"[1,2]");
    assert_eq!(get(&daemon, "stdin", "b"), b"\"x\"");

    // A refused record (invalid collection name) is reported by line.
    let out = officesync(&["--config", &api, "import", "bad name!", "-"], input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 1:") && stderr.contains("line 2:"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 0 records, 0 bad lines, 2 failed"
    );
}

#[test]
fn import_into_an_unreachable_daemon_exits_3() {
    let api = format!("127.0.0.1:{}", free_tcp_port());
    let input = b"{\"key\": \"a\", \"value\": 1}\n{\"key\": \"b\", \"value\": 2}\n";
    let out = officesync(&["--api", &api, "import", "c", "-"], input);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = officesync(&["--api", &api, "export", "c"], b"");
    assert_eq!(out.status.code(), Some(3));
}

/// Lines in the bulk import test.
const BULK_LINES: usize = 100_000;

#[test]
fn import_of_100k_lines_reports_every_bad_line_and_imports_the_rest() {
    // A 64 KiB value limit, so the daemon itself refuses one record.
    let Some(daemon) = start_daemon_with(Some(64 * 1024)) else {
        return;
    };
    let started = Instant::now();
    // Bad lines at the start, in the middle and at the end; each kind of fault once. The
    // numbers are 1-based line numbers in the file.
    let bad_at: BTreeMap<usize, String> = [
        (1, "{\"key\": \"bad/1\", \"value\": ".to_owned()),
        (
            37_001,
            "{\"key\": \"bad/2\", \"value_base64\": \"not base64!\"}".to_owned(),
        ),
        (50_000, "{\"value\": 1}".to_owned()),
        (
            77_777,
            json!({"key": "bad/4", "value": 1, "value_base64": "AA=="}).to_string(),
        ),
        (BULK_LINES, "[1, 2, 3]".to_owned()),
    ]
    .into_iter()
    .collect();
    // Refused by the daemon (over its value limit), reported by line as not imported.
    let refused_at = 64_000;
    let mut text = String::with_capacity(BULK_LINES * 48);
    let mut good = 0;
    for line in 1..=BULK_LINES {
        if let Some(bad) = bad_at.get(&line) {
            text.push_str(bad);
        } else if line == refused_at {
            let big = "x".repeat(80 * 1024);
            text.push_str(&json!({"key": "big", "value": big}).to_string());
        } else {
            good += 1;
            text.push_str(&json!({"key": format!("r/{line:06}"), "value": line}).to_string());
        }
        text.push('\n');
    }
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("bulk.jsonl");
    std::fs::write(&file, &text).expect("write input");
    let out = officesync(
        &[
            "--config",
            &daemon.config,
            "import",
            "bulk",
            file.to_str().expect("utf-8"),
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let reported: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        reported.len(),
        bad_at.len() + 1,
        "one line per bad or refused line:\n{stderr}"
    );
    for line in bad_at.keys() {
        assert!(
            reported
                .iter()
                .any(|r| r.starts_with(&format!("line {line}: skipped:"))),
            "line {line} not reported:\n{stderr}"
        );
    }
    assert!(
        reported
            .iter()
            .any(|r| r.starts_with(&format!("line {refused_at}: not imported:"))),
        "line {refused_at} not reported:\n{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "imported {good} records, {} bad lines, 1 failed",
            bad_at.len()
        )
    );

    // Exactly the good lines are in the store: the count, both ends, and no bad key.
    let agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let token = officesync_daemon::config::read_admin_token(
        &Path::new(&daemon.config).with_file_name("data"),
    )
    .expect("admin.token");
    let body = agent
        .get(format!("http://{}/v1/collections", daemon.api))
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .expect("GET /v1/collections")
        .into_body()
        .read_to_string()
        .expect("body");
    let collections: Value = serde_json::from_str(&body).expect("JSON");
    let bulk = collections["collections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "bulk"))
        .unwrap_or_else(|| panic!("no bulk collection: {collections}"));
    assert_eq!(bulk["records"], good, "{bulk}");
    assert_eq!(get(&daemon, "bulk", "r/000002"), b"2");
    assert_eq!(get(&daemon, "bulk", "r/099999"), b"99999");
    for key in ["bad/1", "bad/2", "bad/4", "big"] {
        let out = officesync(&["--config", &daemon.config, "get", "bulk", key], b"");
        assert_eq!(out.status.code(), Some(1), "{key} must be absent");
    }
    eprintln!(
        "imported {good} of {BULK_LINES} lines in {:?}",
        started.elapsed()
    );
}
