//! End-to-end smoke test of the built binaries, driven exactly as a sysadmin would: make the
//! CA, issue a node bundle, write and check a config, start `officesyncd`, use the CLI, stop
//! it with SIGTERM and restart it on the same config; plus the start-ups that must be refused.

use std::path::Path;
use std::time::{Duration, Instant};

use officesync_tests::process::{free_tcp_port, free_udp_port, loopback, run_bounded};
use officesync_tests::{bins, officesync, Cluster, DaemonSpec, OutputExt, TestNode};
use serde_json::Value;

/// The collection the office writes to.
const COLL: &str = "situation";
/// A JSON value with non-ASCII text, stored and read back byte for byte.
const GRAIN: &str = r#"{"grain_t": 1200, "note": "收成好, harvest ok"}"#;

/// Every byte value, with NUL and 0xff up front and a CR/LF pair: what `put -` must keep.
fn binary_value() -> Vec<u8> {
    let mut bytes = vec![0x00, 0xff, b'\r', b'\n', 0x80, 0x00];
    bytes.extend(0..=255u8);
    bytes
}

/// Non-empty lines of `text`.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// The keys `officesync scan` printed (first tab-separated field of each line).
fn scanned_keys(stdout: &str) -> Vec<String> {
    lines(stdout)
        .iter()
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect()
}

/// `(value, version)` of `key` through the HTTP API, panicking when absent.
fn read(node: &TestNode, key: &str) -> (Vec<u8>, String) {
    let record = node
        .get(COLL, key)
        .unwrap_or_else(|| panic!("{key} is missing\n--- log ---\n{}", node.log()));
    (record.value, record.version)
}

/// `s` as a path argument.
fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

#[test]
fn sysadmin_installs_an_office_node_uses_it_and_restarts_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ca = tmp.path().join("ca");
    let etc = tmp.path().join("etc");
    let data = tmp.path().join("var").join("officesync");

    // 1. The CA and the office's bundle, with the CLI.
    officesync(&["ca", "init", "--dir", arg(&ca)]).expect_success("ca init");
    for file in ["ca.pem", "ca.key"] {
        assert!(ca.join(file).is_file(), "ca init did not write {file}");
    }
    officesync(&[
        "ca",
        "issue",
        "hefei",
        "--ca-dir",
        arg(&ca),
        "--out",
        arg(&etc),
    ])
    .expect_success("ca issue hefei");
    for file in ["node.pem", "node.key", "ca.pem"] {
        assert!(etc.join(file).is_file(), "ca issue did not write {file}");
    }

    // 2. The config, as in DESIGN.md, on free loopback ports; `config check` accepts it.
    let api = loopback(free_tcp_port());
    let sync = loopback(free_udp_port());
    let config = etc.join("officesync.toml");
    let toml = format!(
        r#"# hefei city office
[node]
name = "hefei"
data_dir = "{data}"

[sync]
listen = "{sync}"
peers = []

[tls]
ca = "{etc}/ca.pem"
cert = "{etc}/node.pem"
key = "{etc}/node.key"

[api]
listen = "{api}"

[storage]
durability = "sync"

[cluster]
admins = ["general-office"]
"#,
        data = arg(&data),
        etc = arg(&etc),
    );
    std::fs::write(&config, &toml).expect("write config");
    let check = officesync(&["config", "check", arg(&config)]);
    check.expect_success("config check of a good config");
    assert!(
        check.stdout_text().contains("hefei"),
        "{}",
        check.describe()
    );

    // 3. Start the daemon; the harness waits for GET /health.
    let node = TestNode::start(DaemonSpec {
        name: "hefei".into(),
        config_path: config.clone(),
        api_addr: api,
        log_path: tmp.path().join("officesyncd.log"),
    });

    // 4. The CLI, against OFFICESYNC_API.
    let put = node.cli(&["put", COLL, "hefei/grain", GRAIN]);
    put.expect_success("put hefei/grain");
    let grain_version = put.stdout_text().trim().to_owned();
    assert!(
        grain_version.starts_with("hefei") && grain_version.contains(':'),
        "put should print the new version origin:counter: {}",
        put.describe()
    );
    let get = node.cli(&["get", COLL, "hefei/grain"]);
    get.expect_success("get hefei/grain");
    assert_eq!(
        get.stdout,
        GRAIN.as_bytes(),
        "get must print the value exactly, no newline added: {}",
        get.describe()
    );

    let photo = binary_value();
    node.cli_stdin(&["put", COLL, "hefei/photo", "-"], &photo)
        .expect_success("put hefei/photo from stdin");
    let get = node.cli(&["get", COLL, "hefei/photo"]);
    get.expect_success("get hefei/photo");
    assert_eq!(get.stdout, photo, "binary value changed on the way");

    node.cli(&["put", COLL, "beijing-office/grain", "not hefei's"])
        .expect_success("put outside the prefix");
    node.cli(&["put", COLL, "hefei/obsolete", "to be deleted"])
        .expect_success("put hefei/obsolete");
    let scan = node.cli(&["scan", COLL, "--prefix", "hefei/"]);
    scan.expect_success("scan --prefix hefei/");
    assert_eq!(
        scanned_keys(&scan.stdout_text()),
        ["hefei/grain", "hefei/obsolete", "hefei/photo"],
        "{}",
        scan.describe()
    );

    node.cli(&["delete", COLL, "hefei/obsolete"])
        .expect_success("delete hefei/obsolete");
    let gone = node.cli(&["get", COLL, "hefei/obsolete"]);
    gone.expect_code(1, "get of a deleted key");
    assert!(gone.stdout.is_empty(), "{}", gone.describe());
    node.cli(&["get", COLL, "hefei/never-written"])
        .expect_code(1, "get of a never-written key");
    let scan = node.cli(&["scan", COLL, "--prefix", "hefei/"]);
    assert_eq!(
        scanned_keys(&scan.stdout_text()),
        ["hefei/grain", "hefei/photo"],
        "deleted key still scanned: {}",
        scan.describe()
    );

    node.cli(&["get", "Bad_Collection", "hefei/grain"])
        .expect_code(2, "get from an invalid collection name");
    node.cli(&["put", "Bad_Collection", "k", "v"])
        .expect_code(2, "put to an invalid collection name");
    node.cli(&["put", COLL, "k"])
        .expect_code(2, "put without a value");
    let dead = loopback(free_tcp_port()).to_string();
    let unreachable = node.cli(&["--api", &dead, "get", COLL, "hefei/grain"]);
    unreachable.expect_code(3, "--api at a port nobody listens on");
    assert_eq!(
        lines(&unreachable.stderr_text()).len(),
        1,
        "one line explains it: {}",
        unreachable.describe()
    );

    let status = node.cli(&["status", "--json"]);
    status.expect_success("status --json");
    let status: Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", status.describe()));
    assert_eq!(status["node"], "hefei", "{status:#}");
    assert!(status["vv"][COLL].is_object(), "no vv.{COLL}: {status:#}");
    let records = status["collections"][COLL]["records"].as_u64();
    assert!(
        records.is_some_and(|n| n >= 3),
        "collections.{COLL}.records should count 3 live records: {status:#}"
    );
    let digest = status["collections"][COLL]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no collections.{COLL}.digest: {status:#}"))
        .to_owned();
    assert!(!digest.is_empty(), "{status:#}");

    // What must survive the restart, read through the API with versions.
    let keys = ["hefei/grain", "hefei/photo", "beijing-office/grain"];
    let before: Vec<(Vec<u8>, String)> = keys.iter().map(|k| read(&node, k)).collect();
    assert_eq!(
        before[0].1, grain_version,
        "get's version differs from put's"
    );
    let status_before = node.status();

    // 5. SIGTERM: exit 0, promptly, saying it flushed and stopped.
    let asked = Instant::now();
    node.sigterm();
    let exit = node.wait_exit(Duration::from_secs(15));
    let took = asked.elapsed();
    assert!(
        exit.success(),
        "officesyncd exited with {exit} on SIGTERM\n--- log ---\n{}",
        node.current_log()
    );
    let log = node.current_log().to_lowercase();
    assert!(
        log.contains("flushed") || log.contains("stopped"),
        "the log should say the store was flushed / the node stopped:\n{log}"
    );
    eprintln!("officesyncd stopped {took:?} after SIGTERM");
    node.cli(&["get", COLL, "hefei/grain"])
        .expect_code(3, "get while the daemon is down");

    // 6. Restart with the same config: everything is still there, same versions, same digest.
    node.restart();
    for (key, (value, version)) in keys.iter().zip(&before) {
        let (v, ver) = read(&node, key);
        assert_eq!(&v, value, "value of {key} changed across the restart");
        assert_eq!(&ver, version, "version of {key} changed across the restart");
    }
    let get = node.cli(&["get", COLL, "hefei/photo"]);
    get.expect_success("get after restart");
    assert_eq!(get.stdout, photo);
    node.cli(&["get", COLL, "hefei/obsolete"])
        .expect_code(1, "deleted key after restart");
    let status_after = node.status();
    for field in ["digest", "records", "keys", "versions"] {
        assert_eq!(
            status_after["collections"][COLL][field], status_before["collections"][COLL][field],
            "collections.{COLL}.{field} changed across the restart"
        );
    }
    assert_eq!(status_after["vv"], status_before["vv"], "vv changed");
    assert_eq!(
        status_after["replica"], status_before["replica"],
        "replica id changed"
    );

    // A new write continues the counter: no dot is reused after a restart.
    let max_before = status_before["vv"][COLL]
        .as_object()
        .and_then(|o| o.values().filter_map(Value::as_u64).max())
        .expect("a counter in vv");
    let ack = node.put(COLL, "hefei/after-restart", b"x");
    let (_, counter) = officesync_tests::http::split_version(&ack.version);
    assert!(
        counter > max_before,
        "write after restart got {} but counters up to {max_before} were already used",
        ack.version
    );

    let exit = node.stop();
    assert!(
        exit.success(),
        "second SIGTERM: {exit}\n{}",
        node.current_log()
    );
}

#[test]
fn config_with_an_unknown_key_is_refused_in_one_line() {
    let cluster = Cluster::new();
    let config = cluster.config("hefei");
    let toml = config
        .to_toml()
        .replace("[storage]\n", "[storage]\ncompresion = \"zstd\"\n");
    assert!(toml.contains("compresion"));
    let path = cluster.dir().join("bad.toml");
    std::fs::write(&path, toml).expect("write bad config");

    let check = officesync(&["config", "check", arg(&path)]);
    assert_ne!(
        check.code(),
        Some(0),
        "config check accepted an unknown key"
    );
    let err = check.stderr_text();
    assert_eq!(
        lines(&err).len(),
        1,
        "one line on stderr: {}",
        check.describe()
    );
    assert!(err.contains("compresion"), "names the key: {err}");

    // The daemon refuses it the same way, before touching the data dir.
    let mut cmd = std::process::Command::new(bins::officesyncd_path());
    cmd.arg("--config").arg(&path);
    let run = run_bounded(cmd, None, Duration::from_secs(20));
    assert_ne!(run.code(), Some(0), "officesyncd started on an unknown key");
    let err = run.stderr_text();
    assert_eq!(
        lines(&err).len(),
        1,
        "one line on stderr: {}",
        run.describe()
    );
    assert!(err.contains("compresion"), "names the key: {err}");
    assert!(
        !config.data_dir.exists(),
        "data dir created by a refused start"
    );
}

#[test]
fn second_daemon_on_the_same_data_dir_is_refused() {
    let cluster = Cluster::new();
    let first = cluster.config("hefei");
    let node = cluster.start(&first);
    let ack = node.put(COLL, "hefei/grain", GRAIN.as_bytes());

    let mut second = cluster.config("hefei");
    second.data_dir = first.data_dir.clone();
    match cluster.try_start(&second) {
        Ok(other) => panic!(
            "a second officesyncd came up on {} (its log:\n{})",
            first.data_dir.display(),
            other.log()
        ),
        Err(failure) => {
            let status = failure.status.unwrap_or_else(|| panic!("{failure}"));
            assert!(!status.success(), "{failure}");
            let data_dir = first.data_dir.display().to_string();
            assert!(
                failure.log.to_lowercase().contains("in use") && failure.log.contains(&data_dir),
                "the refusal should say the data dir is in use: {failure}"
            );
        }
    }

    // The first daemon is unharmed.
    let record = node.get(COLL, "hefei/grain").expect("still there");
    assert_eq!(record.value, GRAIN.as_bytes());
    assert_eq!(record.version, ack.version);
    assert!(node.stop().success());
}

#[test]
fn node_name_not_matching_the_certificate_is_refused_in_one_line() {
    let cluster = Cluster::new();
    let mut config = cluster.config("hefei");
    config.name = "beijing-office".into(); // but the bundle is hefei's
    let path = config.write();

    let check = officesync(&["config", "check", arg(&path)]);
    assert_ne!(
        check.code(),
        Some(0),
        "config check accepted the wrong name"
    );

    let mut cmd = std::process::Command::new(bins::officesyncd_path());
    cmd.arg("--config").arg(&path);
    let started = Instant::now();
    let run = run_bounded(cmd, None, Duration::from_secs(20));
    assert_ne!(run.code(), Some(0), "officesyncd started as the wrong node");
    let err = run.stderr_text();
    assert_eq!(
        lines(&err).len(),
        1,
        "one line on stderr: {}",
        run.describe()
    );
    assert!(
        err.contains("beijing-office") && err.contains("hefei"),
        "names both the configured and the certificate's name: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !config.data_dir.exists(),
        "data dir created by a refused start"
    );
}

#[test]
fn daemon_log_into_a_file_has_no_colour_codes() {
    // systemd's journal and log files get stderr, not a terminal: escape codes are noise there.
    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    assert!(node.stop().success());
    let raw = std::fs::read_to_string(&node.spec().log_path).expect("read the daemon log");
    assert!(raw.contains("started"), "{raw}");
    assert!(
        !raw.contains('\u{1b}'),
        "officesyncd writes ANSI colour codes to a stderr that is not a terminal:\n{raw:?}"
    );
}

#[test]
fn sigterm_is_not_held_up_by_a_stalled_client() {
    // A client that stopped mid-request (flaky WAN, crashed script) must not keep the daemon
    // from stopping: systemd would SIGKILL it after TimeoutStopSec instead of a clean stop.
    use std::io::Write as _;
    use std::net::TcpStream;

    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    let mut headers = TcpStream::connect(node.api_addr()).expect("connect");
    headers
        .write_all(b"GET /health HTTP/1.1\r\nHost: hefei\r\n")
        .expect("send half the headers");
    let mut body = TcpStream::connect(node.api_addr()).expect("connect");
    body.write_all(
        b"PUT /v1/collections/situation/records/k HTTP/1.1\r\nHost: hefei\r\n\
          Content-Length: 100\r\n\r\nabc",
    )
    .expect("send a third of the body");
    std::thread::sleep(Duration::from_millis(200));

    let asked = Instant::now();
    node.sigterm();
    let exit = node.wait_exit(officesync_tests::node::STOP_TIMEOUT);
    assert!(exit.success(), "{exit}\n{}", node.current_log());
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    drop((headers, body));
}

/// Under a `Type=notify` unit: READY=1 once the API serves, STOPPING=1 on SIGTERM.
#[test]
fn tells_systemd_when_it_serves_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let cluster = Cluster::new();
    let config = cluster.config("hefei");
    let path = config.write();
    let socket_path = cluster.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut child = std::process::Command::new(bins::officesyncd_path())
        .arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start officesyncd");
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY within 30 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // By then the API answers.
    let api = officesync_tests::ApiClient::new(config.api_listen);
    assert!(api.healthy(), "READY came before the API served");
    let pid = child.id().to_string();
    let mut kill = std::process::Command::new("kill");
    kill.args(["-TERM", &pid]);
    run_bounded(kill, None, Duration::from_secs(5)).expect_success("kill -TERM");
    let n = socket.recv(&mut buf).expect("STOPPING within 30 s");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The CLI finds a node whose API moved off 127.0.0.1:7480 through `--config` alone, reading
/// only the config file (here it names a key that does not exist); the daemon's answers name
/// it (`server: officesyncd/...`), and `verify` on a node without peers says so in words.
#[test]
fn the_cli_finds_a_moved_api_through_the_config_without_the_key() {
    let cluster = Cluster::new();
    let config = cluster.config("hefei");
    let node = cluster.start(&config);
    let text = std::fs::read_to_string(node.config_path()).expect("config");
    let key = config.tls_dir.join("node.key");
    let keyless = text.replace(arg(&key), "/nonexistent/node.key");
    assert_ne!(keyless, text, "the config names {}", key.display());
    let keyless_path = cluster.dir().join("keyless.toml");
    std::fs::write(&keyless_path, keyless).expect("write config");

    let status = officesync(&["--config", arg(&keyless_path), "status", "--json"]);
    status.expect_success("status --config");
    let json: Value = serde_json::from_str(&status.stdout_text()).expect("JSON");
    assert_eq!(json["node"], "hefei", "{json}");

    let verify = officesync(&["--config", arg(node.config_path()), "verify"]);
    verify.expect_success("verify --config");
    assert_eq!(
        verify.stdout_text(),
        "nothing to verify: no peer is connected (see `officesync peers`)\n"
    );

    let reply = node.api().call("GET", "/health", None);
    let server = reply.header("server").unwrap_or_default();
    assert!(server.starts_with("officesyncd/"), "server: {server:?}");
}
