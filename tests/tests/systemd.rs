//! The Debian package under a real systemd: a Debian bookworm root file system made by
//! mmdebstrap from apt packages, imported with `docker import` (no registry) and cached under
//! a tag named after its recipe, booted with systemd as PID 1 in a container (not
//! privileged). Inside it the package installs, `systemctl start` returns once the daemon is
//! ready (`Type=notify`), journald has its log, `kill -9` is answered by a restart,
//! `systemctl stop` stops it cleanly, and a newer package installed over it keeps the data
//! and the node's config.
//!
//! Skips, saying which, without a Docker engine, without mmdebstrap (when the image is not
//! cached yet) or without dpkg-deb. The container is always removed.

mod debian;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use officesync_tests::process::{run_bounded, wait_until};
use officesync_tests::{officesync, OutputExt};

/// The root file system's recipe; the image tag is named after its hash, so a changed recipe
/// builds a new image and an unchanged one is reused.
const MMDEBSTRAP_ARGS: &[&str] = &[
    "--variant=minbase",
    "--include=systemd,systemd-sysv,dbus",
    "bookworm",
];
/// The repository of the cached images.
const IMAGE_REPO: &str = "officesync-test-systemd";
/// How long building the root file system may take.
const MMDEBSTRAP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one `docker` command may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long systemd gets to boot, and the daemon to come back after a kill.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn docker(args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    run_bounded(cmd, None, DOCKER_TIMEOUT)
}

/// A running container, removed when dropped.
struct Container {
    name: String,
}

impl Container {
    fn boot(image: &str) -> Container {
        let name = format!(
            "officesync-systemd-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        let container = Container { name };
        docker(&[
            "run",
            "-d",
            "--name",
            &container.name,
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            image,
            "/lib/systemd/systemd",
        ])
        .expect_success("docker run (systemd)");
        container
    }

    /// `docker exec NAME sh -c SCRIPT`.
    fn sh(&self, script: &str) -> Output {
        docker(&["exec", &self.name, "sh", "-c", script])
    }

    /// [`Container::sh`], which must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.status.success() {
            let journal = self
                .sh("journalctl -u officesyncd --no-pager -n 50")
                .stdout_text();
            panic!(
                "in the container: {script}\n{}\njournal:\n{journal}",
                out.describe()
            );
        }
        out.stdout_text()
    }

    fn copy_in(&self, from: &Path, to: &str) {
        docker(&[
            "cp",
            from.to_str().expect("utf-8 path"),
            &format!("{}:{to}", self.name),
        ])
        .expect_success("docker cp");
    }

    fn show(&self, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value officesyncd"))
            .trim()
            .to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// The cached image, built now if missing; `None` (after saying why) when it cannot be.
fn image() -> Option<String> {
    let recipe = format!(
        "mmdebstrap {} (officesync systemd test 1)",
        MMDEBSTRAP_ARGS.join(" ")
    );
    // FNV-1a: stable across builds and toolchains, which is all a cache tag needs.
    let hash = recipe.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let image = format!("{IMAGE_REPO}:{hash:016x}");
    if docker(&["image", "inspect", &image]).status.success() {
        return Some(image);
    }
    if !debian::on_path("mmdebstrap") {
        eprintln!(
            "SKIP: mmdebstrap is missing (apt-get install mmdebstrap) and {image} is not cached"
        );
        return None;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let tar = tmp.path().join("rootfs.tar");
    let started = Instant::now();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--quiet"]).args(MMDEBSTRAP_ARGS).arg(&tar);
    let out = run_bounded(cmd, None, MMDEBSTRAP_TIMEOUT);
    if !out.status.success() {
        panic!(
            "mmdebstrap failed (is a Debian mirror reachable?):\n{}",
            out.describe()
        );
    }
    docker(&["import", tar.to_str().expect("utf-8"), &image]).expect_success("docker import");
    eprintln!("built {image} in {:?}", started.elapsed());
    Some(image)
}

/// The node's files for the container: a CA and hefei's bundle made on the host, and a config
/// with the paths of the package's layout.
fn node_files(dir: &Path) {
    let ca = dir.join("ca");
    let bundle = dir.join("bundle");
    officesync(&["ca", "init", "--dir", ca.to_str().expect("utf-8")]).expect_success("ca init");
    officesync(&[
        "ca",
        "issue",
        "hefei",
        "--ca-dir",
        ca.to_str().expect("utf-8"),
        "--out",
        bundle.to_str().expect("utf-8"),
    ])
    .expect_success("ca issue");
    std::fs::write(
        bundle.join("officesync.toml"),
        "# hefei, as the systemd test runs it\n\
         [node]\nname = \"hefei\"\ndata_dir = \"/var/lib/officesync\"\n\n\
         [sync]\nlisten = \"127.0.0.1:7400\"\npeers = []\n\n\
         [tls]\nca = \"/etc/officesync/ca.pem\"\ncert = \"/etc/officesync/node.pem\"\n\
         key = \"/etc/officesync/node.key\"\n\n\
         [api]\nlisten = \"127.0.0.1:7480\"\n\n\
         [storage]\ndurability = \"sync\"\n\n\
         [cluster]\nadmins = []\n",
    )
    .expect("write config");
}

#[test]
fn the_package_runs_under_systemd_restarts_after_kill_9_stops_cleanly_and_upgrades_in_place() {
    let started = Instant::now();
    if !docker(&["info"]).status.success() {
        eprintln!("SKIP: no Docker engine answers `docker info`");
        return;
    }
    let Some(tools) = debian::PackageTools::find() else {
        return;
    };
    let Some(image) = image() else {
        return;
    };
    let image_ready = started.elapsed();
    let tmp = tempfile::tempdir().expect("temp dir");
    let version = env!("CARGO_PKG_VERSION");
    let newer = format!("{version}+upgrade1");
    let deb = tools.build(&tmp.path().join("v1"), None);
    let deb2 = tools.build(&tmp.path().join("v2"), Some(&newer));
    node_files(tmp.path());

    let c = Container::boot(&image);
    assert!(
        wait_until(BOOT_TIMEOUT, Duration::from_millis(300), || {
            let state = c.sh("systemctl is-system-running").stdout_text();
            matches!(state.trim(), "running" | "degraded")
        }),
        "systemd did not boot: {}",
        c.sh("systemctl is-system-running; systemctl --failed --no-pager")
            .describe()
    );

    // Install: the user, the private data dir, the conffile; nothing started yet.
    c.copy_in(&deb, "/var/tmp/officesync.deb");
    c.ok("dpkg -i /var/tmp/officesync.deb");
    assert_eq!(c.ok("id -un officesync").trim(), "officesync");
    assert_eq!(
        c.ok("stat -c '%a %U:%G' /var/lib/officesync /etc/officesync/officesync.toml"),
        "700 officesync:officesync\n640 root:officesync\n"
    );
    assert_eq!(
        c.ok("systemctl is-active officesyncd || true").trim(),
        "inactive"
    );
    assert!(c
        .ok("officesyncd --version")
        .starts_with(&format!("officesyncd {version} (commit ")));

    // The node's bundle and config, as INSTALL.md installs them.
    let bundle = tmp.path().join("bundle");
    for file in ["ca.pem", "node.pem", "node.key", "officesync.toml"] {
        c.copy_in(&bundle.join(file), &format!("/etc/officesync/{file}"));
    }
    c.ok(
        "cd /etc/officesync && chown root:officesync ca.pem node.pem node.key officesync.toml \
          && chmod 0644 ca.pem node.pem && chmod 0640 node.key officesync.toml",
    );

    // Start: `systemctl start` returns only once the daemon said READY=1.
    c.ok("systemctl start officesyncd");
    assert_eq!(c.ok("systemctl is-active officesyncd").trim(), "active");
    assert_eq!(
        c.show("StatusText"),
        "serving",
        "READY and STATUS came by sd_notify"
    );
    c.ok("officesync --config /etc/officesync/officesync.toml put situation hefei/grain ok");
    let journal = c.ok("journalctl -u officesyncd --no-pager -o cat");
    assert!(journal.contains("node started"), "journal:\n{journal}");
    assert!(journal.contains("Started officesyncd.service") || c.show("ActiveState") == "active");

    // kill -9: systemd restarts it (Restart=on-failure, RestartSec=5).
    let pid = c.show("MainPID");
    assert_ne!(pid, "0");
    c.ok(&format!("kill -9 {pid}"));
    let killed = Instant::now();
    assert!(
        wait_until(BOOT_TIMEOUT, Duration::from_millis(300), || {
            let now = c.show("MainPID");
            now != "0" && now != pid && c.show("ActiveState") == "active"
        }),
        "not restarted after kill -9: {}",
        c.sh("systemctl status officesyncd --no-pager").describe()
    );
    let restarted_after = killed.elapsed();
    assert_eq!(c.show("NRestarts"), "1");
    assert_eq!(
        c.ok("officesync --config /etc/officesync/officesync.toml get situation hefei/grain"),
        "ok"
    );

    // systemctl stop: SIGTERM, the store flushed, exit 0.
    c.ok("systemctl stop officesyncd");
    assert_eq!(
        c.ok("systemctl is-active officesyncd || true").trim(),
        "inactive"
    );
    assert_eq!(c.show("ExecMainStatus"), "0");
    assert_eq!(c.show("Result"), "success");
    let journal = c.ok("journalctl -u officesyncd --no-pager -o cat");
    assert!(
        journal.contains("node stopped; store flushed"),
        "journal:\n{journal}"
    );

    // A newer package over a running daemon: restarted, data and config kept.
    c.ok("systemctl start officesyncd");
    let config_before = c.ok("cat /etc/officesync/officesync.toml");
    let pid_before = c.show("MainPID");
    c.copy_in(&deb2, "/var/tmp/officesync2.deb");
    c.ok("dpkg -i /var/tmp/officesync2.deb");
    assert_eq!(c.ok("dpkg-query -W -f '${Version}' officesync"), newer);
    assert_eq!(c.ok("cat /etc/officesync/officesync.toml"), config_before);
    assert_eq!(c.show("ActiveState"), "active");
    assert_ne!(
        c.show("MainPID"),
        pid_before,
        "the upgrade restarts a running daemon"
    );
    assert_eq!(
        c.ok("officesync --config /etc/officesync/officesync.toml get situation hefei/grain"),
        "ok"
    );
    assert_eq!(
        c.ok("stat -c '%a %U:%G' /var/lib/officesync"),
        "700 officesync:officesync\n"
    );
    eprintln!(
        "image ready after {image_ready:?}; restarted {restarted_after:?} after kill -9; \
         whole test {:?}",
        started.elapsed()
    );
}
