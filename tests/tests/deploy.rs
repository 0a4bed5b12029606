//! The deployment artefacts in `deploy/`, checked for real: the example configs pass
//! `officesync config check`, the systemd unit passes `systemd-analyze verify` and keeps its
//! sandbox, and the container image built by `deploy/container/build.sh` runs a general
//! office and two city offices on a private Docker network that replicate and stop cleanly.
//!
//! Tests that need a tool this machine lacks (`systemd-analyze`, a Docker engine) say so and
//! return early.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use officesync_daemon::config::Config;
use officesync_tests::process::{run_bounded, wait_until, CLI_TIMEOUT};
use officesync_tests::{bins, officesync, ApiClient, OutputExt};

/// The general office's node name, as in `deploy/examples/general-office.toml`.
const HUB: &str = "general-office";
/// The city offices of `deploy/examples/`.
const OFFICES: [&str; 2] = ["hefei", "wuhu"];
/// The host name the city office examples dial the general office at.
const HUB_HOST: &str = "gov.example.cn";
/// Where the examples keep the bundle and the replica (and the container image expects them).
const ETC: &str = "/etc/officesync";
/// See [`ETC`].
const DATA: &str = "/var/lib/officesync";
/// The uid and gid of the daemon's user in the container image (deploy/container/build.sh).
const CONTAINER_UID: u32 = 10001;
/// How long a Docker command may take (an image build included).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the offices get to connect and replicate in containers.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository's `deploy/` directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("deploy")
}

/// `path` as a UTF-8 argument.
fn arg(path: &Path) -> &str {
    path.to_str().expect("paths under test are UTF-8")
}

/// The example config of `name` in `deploy/examples/`.
fn example(name: &str) -> PathBuf {
    deploy_dir().join("examples").join(format!("{name}.toml"))
}

/// Issues a bundle for `name` (admin for the general office) into `out` with the CLI.
fn issue(ca: &Path, name: &str, out: &Path) {
    let mut args = vec!["ca", "issue", name, "--ca-dir", arg(ca), "--out", arg(out)];
    if name == HUB {
        args.push("--admin");
    }
    officesync(&args).expect_success(&format!("ca issue {name}"));
}

/// Whether `program` exists on `PATH` and answers `--version`.
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn example_configs_pass_config_check() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ca = tmp.path().join("ca");
    officesync(&["ca", "init", "--dir", arg(&ca)]).expect_success("ca init");

    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("examples"))
        .expect("deploy/examples exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files.push(deploy_dir().join("officesync.example.toml"));

    let mut configs = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read example");
        let parsed = Config::load_offline(file)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let name = parsed.node.name.clone();
        assert_eq!(parsed.node.data_dir, Path::new(DATA), "{}", file.display());
        assert_eq!(parsed.tls.cert, Path::new(ETC).join("node.pem"));

        // The office's machine, under a temp dir: its bundle in etc/, its data dir in data/.
        let root = tmp.path().join(file.file_stem().expect("file name"));
        let etc = root.join("tls");
        issue(&ca, &name, &etc);
        let local = text
            .replace(&format!("{ETC}/"), &format!("{}/", arg(&etc)))
            .replace(DATA, arg(&root.join("data")));
        assert!(
            !local.contains(ETC) && !local.contains(DATA),
            "{}: a path outside the substitutions",
            file.display()
        );
        let config = etc.join("officesync.toml");
        std::fs::write(&config, local).expect("write config");

        let check = officesync(&["config", "check", arg(&config)]);
        check.expect_success(&format!("config check of {}", file.display()));
        assert!(
            check
                .stdout_text()
                .starts_with(&format!("ok: node {name}, ")),
            "{}",
            check.describe()
        );
        let mut daemon = Command::new(bins::officesyncd_path());
        daemon.args(["--config", arg(&config), "--check"]);
        run_bounded(daemon, None, CLI_TIMEOUT).expect_success("officesyncd --check");
        configs.insert(file.file_stem().expect("stem").to_owned(), parsed);
    }

    // The deployment the examples describe: a hub that dials nobody, offices that dial it,
    // the same admins everywhere, one example per node name.
    let hub = &configs[std::ffi::OsStr::new(HUB)];
    assert_eq!(hub.node.name, HUB);
    assert!(hub.sync.peers.is_empty(), "the general office dials nobody");
    for office in OFFICES {
        let config = &configs[std::ffi::OsStr::new(office)];
        assert_eq!(config.node.name, office);
        let peers: Vec<(&str, &str)> = config
            .sync
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.addr.as_str()))
            .collect();
        assert_eq!(
            peers,
            [(HUB, "gov.example.cn:7400")],
            "{office} dials the hub"
        );
    }
    for (file, config) in &configs {
        assert_eq!(config.cluster.admins, [HUB], "{file:?}: admins");
        assert!(
            config.api.listen.ip().is_loopback(),
            "{file:?}: the example API must stay on loopback"
        );
    }
}

/// The `Key=value` lines of a unit file's `[section]`, in order.
fn unit_section<'u>(unit: &'u str, section: &str) -> Vec<(&'u str, &'u str)> {
    let header = format!("[{section}]");
    let mut inside = false;
    let mut lines = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
        } else if inside && !line.starts_with('#') {
            if let Some((key, value)) = line.split_once('=') {
                lines.push((key, value));
            }
        }
    }
    lines
}

#[test]
fn systemd_unit_is_hardened_and_passes_systemd_analyze() {
    let unit_path = deploy_dir().join("officesyncd.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the unit");
    let service = unit_section(&unit, "Service");
    let value = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let exec = "/usr/local/bin/officesyncd --config /etc/officesync/officesync.toml";
    for (key, expected) in [
        ("ExecStart", exec),
        ("User", "officesync"),
        ("Group", "officesync"),
        ("StateDirectory", "officesync"),
        ("StateDirectoryMode", "0700"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(value(key), [expected], "{key}= in the unit");
    }
    assert_eq!(
        unit_section(&unit, "Install"),
        [("WantedBy", "multi-user.target")]
    );

    if !have("systemd-analyze") {
        eprintln!("skipping systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    // verify checks that ExecStart's binary exists and that Documentation= resolves: install
    // the unit pointing at the built daemon, and the man pages where `man` finds them.
    let tmp = tempfile::tempdir().expect("temp dir");
    let daemon = bins::officesyncd_path();
    let local = unit.replace("/usr/local/bin/officesyncd", arg(&daemon));
    assert_ne!(local, unit, "ExecStart names /usr/local/bin/officesyncd");
    let installed = tmp.path().join("officesyncd.service");
    std::fs::write(&installed, &local).expect("write unit");
    let man = tmp.path().join("man");
    officesync(&["man", "--dir", arg(&man.join("man1"))]).expect_success("officesync man");

    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if !have("man") {
        // verify looks Documentation=man:... up with `man`, which this machine lacks.
        eprintln!("`man` is not installed: systemd-analyze verify skips Documentation=");
        verify.arg("--man=no");
    }
    verify
        .arg(arg(&installed))
        .env("MANPATH", arg(&man))
        .env("SYSTEMD_LOG_COLOR", "0");
    let out = run_bounded(verify, None, CLI_TIMEOUT);
    out.expect_success("systemd-analyze verify");
    assert!(
        !out.stderr_text().contains("officesyncd.service"),
        "systemd-analyze verify warns about the unit: {}",
        out.describe()
    );

    // The sandbox, scored by systemd itself (0 = fully sandboxed, 10 = none).
    let mut security = Command::new("systemd-analyze");
    security.args(["security", "--offline=true", "--no-pager", arg(&installed)]);
    let out = run_bounded(security, None, CLI_TIMEOUT);
    let text = format!("{}{}", out.stdout_text(), out.stderr_text());
    let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) else {
        eprintln!("skipping the exposure score: this systemd-analyze has no `security --offline`");
        return;
    };
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    eprintln!("systemd-analyze security: {}", line.trim());
    assert!(
        score < 2.0,
        "the unit's sandbox got weaker (systemd rates < 2.0 as OK): {line}\n{text}"
    );
}

#[test]
fn image_context_holds_the_binaries_and_everything_they_load() {
    // What `docker build` gets, checked without Docker: `build.sh --context DIR`.
    let tmp = tempfile::tempdir().expect("temp dir");
    let context = tmp.path().join("context");
    let bin_dir = bins::officesyncd_path()
        .parent()
        .expect("binary dir")
        .to_owned();
    let mut build = Command::new(deploy_dir().join("container").join("build.sh"));
    build.args(["--bin-dir", arg(&bin_dir), "--context", arg(&context)]);
    let out = run_bounded(build, None, DOCKER_TIMEOUT);
    out.expect_success("build.sh --context");
    assert!(
        out.stdout_text().contains("docker build -t officesync:"),
        "{}",
        out.describe()
    );
    let dockerfile = std::fs::read_to_string(context.join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.lines().any(|l| l == "FROM scratch"),
        "{dockerfile}"
    );

    let root = context.join("rootfs");
    for bin in [bins::DAEMON, bins::CLI] {
        let path = root.join("usr/local/bin").join(bin);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{bin} mode");
        // Every library (and the loader) the binary loads is in the image at the same path.
        let ldd = Command::new("ldd").arg(&path).output().expect("run ldd");
        let listed = String::from_utf8_lossy(&ldd.stdout).into_owned();
        for lib in listed.split_whitespace().filter(|w| w.starts_with('/')) {
            let inside = root.join(lib.trim_start_matches('/'));
            assert!(inside.is_file(), "{bin} loads {lib}, missing in the image");
        }
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(
        passwd.contains(&format!("officesync:x:{CONTAINER_UID}:{CONTAINER_UID}:")),
        "{passwd}"
    );
    assert!(
        dockerfile.contains(&format!("USER {CONTAINER_UID}:{CONTAINER_UID}")),
        "the image runs as the officesync user"
    );
    let data = std::fs::metadata(context.join("data")).expect("data dir");
    assert_eq!(data.permissions().mode() & 0o777, 0o700, "data dir mode");

    // A second run refuses to write over a context.
    let mut again = Command::new(deploy_dir().join("container").join("build.sh"));
    again.args(["--bin-dir", arg(&bin_dir), "--context", arg(&context)]);
    run_bounded(again, None, DOCKER_TIMEOUT).expect_code(2, "build.sh into a non-empty context");
}

/// Runs `docker ARGS`, bounded by [`DOCKER_TIMEOUT`].
fn docker(args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    run_bounded(cmd, None, DOCKER_TIMEOUT)
}

/// Runs `docker ARGS`, panicking with its output unless it succeeds; returns trimmed stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    out.expect_success(&format!("docker {}", args.join(" ")));
    out.stdout_text().trim().to_owned()
}

/// Everything a test made in Docker, removed when dropped (also when the test panics).
#[derive(Default)]
struct DockerScope {
    containers: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Drop for DockerScope {
    fn drop(&mut self) {
        for container in &self.containers {
            // -v: the anonymous data volume of the image's VOLUME goes too.
            let _ = docker(&["rm", "--force", "--volumes", container]);
        }
        for network in &self.networks {
            let _ = docker(&["network", "rm", network]);
        }
        for image in &self.images {
            let _ = docker(&["rmi", "--force", image]);
        }
    }
}

/// The Docker label on this test's containers and networks: the pid of the test process.
const LABEL: &str = "officesync-test-pid";

/// Whether process `pid` is alive on this machine.
fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid.trim()).exists()
}

/// Removes what an earlier run of this test left behind when it was killed before its
/// [`DockerScope`] could clean up: containers, networks and images of dead test processes.
fn remove_leftovers() {
    let listed = |args: &[&str]| -> Vec<(String, String)> {
        let out = docker(args);
        out.stdout_text()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(id, pid)| (id.to_owned(), pid.to_owned()))
            .collect()
    };
    let label_format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}");
    let filter = format!("label={LABEL}");
    for (id, pid) in listed(&["ps", "-a", "--filter", &filter, "--format", &label_format]) {
        if !alive(&pid) {
            let _ = docker(&["rm", "--force", "--volumes", &id]);
        }
    }
    for (id, pid) in listed(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        &label_format,
    ]) {
        if !alive(&pid) {
            let _ = docker(&["network", "rm", &id]);
        }
    }
    // Images are named officesync-test-PID-NANOS:latest.
    let images = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for image in images.stdout_text().lines() {
        let Some(rest) = image.strip_prefix("officesync-test-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && !alive(pid) {
            let _ = docker(&["rmi", "--force", image]);
        }
    }
}

/// The node's log (`docker logs`, which holds its stderr).
fn container_log(container: &str) -> String {
    let out = docker(&["logs", container]);
    format!("{}{}", out.stdout_text(), out.stderr_text())
}

/// Runs the CLI inside `container` (`docker exec`), against the node's own API.
fn exec_cli(container: &str, args: &[&str]) -> Output {
    let mut all = vec!["exec", container, "/usr/local/bin/officesync"];
    all.extend_from_slice(args);
    docker(&all)
}

/// Prepares the `/etc/officesync` of `name` in `dir`: its bundle and its example config,
/// readable by the container's user and no one else.
fn container_etc(ca: &Path, name: &str, dir: &Path, config: &str) {
    issue(ca, name, dir);
    std::fs::write(dir.join("officesync.toml"), config).expect("write config");
    // As root (the usual way to run Docker), hand the files to the container's group;
    // otherwise make the temp copies world-readable (they are throwaway test keys).
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let (dir_mode, file_mode) = if root { (0o750, 0o640) } else { (0o755, 0o644) };
    for entry in std::fs::read_dir(dir).expect("read bundle dir") {
        let path = entry.expect("entry").path();
        if root {
            std::os::unix::fs::chown(&path, Some(0), Some(CONTAINER_UID)).expect("chown");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).expect("chmod");
    }
    if root {
        std::os::unix::fs::chown(dir, Some(0), Some(CONTAINER_UID)).expect("chown");
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).expect("chmod");
}

#[test]
fn container_image_runs_a_general_office_and_two_offices() {
    // `docker info` asks the engine; a missing client counts as no engine.
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        eprintln!("skipping the container test: no Docker engine answers `docker info`");
        return;
    }
    let started = Instant::now();
    remove_leftovers();
    let id = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    );
    // Declared before the scope, so that the containers go before their mounted files.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut scope = DockerScope::default();

    // The image, from the binaries this test run uses, by the script sysadmins use.
    let image = format!("officesync-test-{id}:latest");
    let bin_dir = bins::officesyncd_path()
        .parent()
        .expect("binary dir")
        .to_owned();
    scope.images.push(image.clone());
    let mut build = Command::new(deploy_dir().join("container").join("build.sh"));
    build.args(["--bin-dir", arg(&bin_dir), "--tag", &image]);
    run_bounded(build, None, DOCKER_TIMEOUT).expect_success("deploy/container/build.sh");
    let built = started.elapsed();

    // The CA and the bundles, as on the CA machine; each node's /etc/officesync is its
    // bundle plus its example config, unchanged but for wuhu's API, which listens on all of
    // the container's interfaces so that the host can reach it through a port published on
    // the host's loopback only.
    let ca = tmp.path().join("ca");
    officesync(&["ca", "init", "--dir", arg(&ca)]).expect_success("ca init");
    let mut etcs = BTreeMap::new();
    for name in [HUB, OFFICES[0], OFFICES[1]] {
        let mut config = std::fs::read_to_string(example(name)).expect("read example");
        if name == "wuhu" {
            let published =
                config.replace("listen = \"127.0.0.1:7480\"", "listen = \"0.0.0.0:7480\"");
            assert_ne!(published, config, "wuhu.toml has the loopback API address");
            config = published;
        }
        let dir = tmp.path().join(name);
        container_etc(&ca, name, &dir, &config);
        etcs.insert(name, dir);
    }

    let network = format!("officesync-test-{id}");
    let label = format!("{LABEL}={}", std::process::id());
    docker_ok(&["network", "create", "--label", &label, &network]);
    scope.networks.push(network.clone());
    let container = |name: &str| format!("officesync-test-{id}-{name}");
    for name in [HUB, OFFICES[0], OFFICES[1]] {
        let c = container(name);
        let mount = format!("{}:{ETC}:ro", arg(&etcs[name]));
        let mut args = vec!["run", "--detach", "--label", &label, "--name", &c];
        args.extend(["--network", &network]);
        if name == HUB {
            // The offices' configs dial gov.example.cn:7400: the hub answers to that name
            // on this network (and to its node name, for the API check below).
            args.extend(["--network-alias", HUB_HOST, "--network-alias", HUB]);
            // The image's health check, run every second instead of every 30 s.
            args.extend(["--health-interval", "1s"]);
        }
        if name == "wuhu" {
            args.extend(["--publish", "127.0.0.1::7480"]);
        }
        args.extend(["--volume", &mount, &image]);
        scope.containers.push(c.clone());
        docker_ok(&args);
    }

    // The offices dial the hub by name and replicate through it: hefei writes with the CLI
    // inside its container, the host reads at wuhu through the published port, and back.
    let wuhu_api = docker_ok(&["port", &container("wuhu"), "7480/tcp"]);
    let wuhu_api: std::net::SocketAddr = wuhu_api
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address in `docker port`: {wuhu_api}"));
    assert!(wuhu_api.ip().is_loopback(), "published on {wuhu_api}");
    // A user for this test, added inside the container, where `officesync` signs in with the
    // node's admin token by default (the image has no shell or cat to read it).
    let token = docker_ok(&[
        "exec",
        &container("wuhu"),
        "/usr/local/bin/officesync",
        "user",
        "add",
        "deploy-test",
        "--role",
        "writer",
    ]);
    let wuhu = ApiClient::new(wuhu_api).with_token(Some(token));
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            wuhu.healthy()
        }),
        "wuhu's API never answered on {wuhu_api}\n{}",
        container_log(&container("wuhu"))
    );

    let value = r#"{"grain_t": 12500, "note": "合肥"}"#;
    let put = exec_cli(
        &container("hefei"),
        &["put", "situation", "hefei/grain", value],
    );
    put.expect_success("officesync put inside the hefei container");
    assert!(put.stdout_text().starts_with("hefei"), "{}", put.describe());
    let arrived = wait_until(REPLICATION_TIMEOUT, Duration::from_millis(200), || {
        wuhu.get("situation", "hefei/grain")
            .is_some_and(|r| r.value == value.as_bytes())
    });
    assert!(
        arrived,
        "hefei's write never reached wuhu\n--- hub ---\n{}\n--- hefei ---\n{}\n--- wuhu ---\n{}",
        container_log(&container(HUB)),
        container_log(&container("hefei")),
        container_log(&container("wuhu"))
    );
    let replicated = started.elapsed();
    wuhu.put("situation", "wuhu/grain", b"8000");
    let back = wait_until(REPLICATION_TIMEOUT, Duration::from_millis(200), || {
        let get = exec_cli(&container("hefei"), &["get", "situation", "wuhu/grain"]);
        get.code() == Some(0) && get.stdout == b"8000"
    });
    assert!(back, "wuhu's write never reached hefei");
    let hub_get = exec_cli(&container(HUB), &["get", "situation", "hefei/grain"]);
    hub_get.expect_success("get at the general office");
    assert_eq!(hub_get.stdout, value.as_bytes());

    // The image's HEALTHCHECK (`officesync status` inside the container) finds the hub healthy.
    let healthy = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        docker(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &container(HUB),
        ])
        .stdout_text()
        .trim()
            == "healthy"
    });
    assert!(
        healthy,
        "the hub never became healthy: {}",
        docker(&[
            "inspect",
            "--format",
            "{{json .State.Health}}",
            &container(HUB)
        ])
        .stdout_text()
    );

    // The hub's API is on its loopback (as its config says): another container cannot use it.
    let from_wuhu = exec_cli(
        &container("wuhu"),
        &["--api", &format!("{HUB}:7480"), "--timeout", "3s", "status"],
    );
    from_wuhu.expect_code(3, "the hub's API from another container (unreachable)");

    // `docker stop` sends SIGTERM: the node flushes its store and exits 0.
    let stop_started = Instant::now();
    docker_ok(&["stop", &container("hefei")]);
    let stop_took = stop_started.elapsed();
    let state = docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}",
        &container("hefei"),
    ]);
    let log = container_log(&container("hefei"));
    assert_eq!(state, "exited 0 false", "hefei after docker stop\n{log}");
    assert!(
        log.contains("shutting down signal=\"SIGTERM\"")
            && log.contains("node stopped; store flushed"),
        "no clean-shutdown lines in hefei's log:\n{log}"
    );
    // The daemon, not Docker's 10 s kill timeout, ended it.
    assert!(
        stop_took < Duration::from_secs(9),
        "docker stop took {stop_took:?}"
    );

    // The stopped office's data survives in its volume: it starts again with what it had.
    docker_ok(&["start", &container("hefei")]);
    let kept = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let get = exec_cli(&container("hefei"), &["get", "situation", "wuhu/grain"]);
        get.code() == Some(0) && get.stdout == b"8000"
    });
    assert!(
        kept,
        "hefei lost its data over a restart\n{}",
        container_log(&container("hefei"))
    );

    eprintln!(
        "container test: image built in {built:?}, first write replicated at {replicated:?}, \
         docker stop took {stop_took:?}, total {:?}",
        started.elapsed()
    );
}
