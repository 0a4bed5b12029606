//! Building the Debian package for the suites that test it (`package.rs`, `systemd.rs`):
//! `deploy/package.sh` run on the debug binaries, and the tools that read packages.

#![allow(dead_code)] // each suite uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use officesync_tests::process::run_bounded;
use officesync_tests::{bins, OutputExt};

/// How long building the package may take (man pages, stripping, xz).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The package tools found on this machine.
#[derive(Debug, Clone, Copy)]
pub struct PackageTools;

impl PackageTools {
    /// The tools, or `None` after saying what is missing.
    pub fn find() -> Option<PackageTools> {
        for tool in ["dpkg-deb", "strip", "gzip"] {
            if !on_path(tool) {
                eprintln!("SKIP: {tool} is missing (apt-get install dpkg-dev binutils gzip)");
                return None;
            }
        }
        Some(PackageTools)
    }

    /// Runs `deploy/package.sh` on the built binaries into `out` (with `version`, or the
    /// workspace's) and returns the path it printed last.
    pub fn build(&self, out: &Path, version: Option<&str>) -> PathBuf {
        let bin_dir = bins::officesyncd_path()
            .parent()
            .expect("binary has a directory")
            .to_path_buf();
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("deploy/package.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(out)
            .args(["--compression", "gzip"]);
        if let Some(v) = version {
            cmd.args(["--version", v]);
        }
        let output = run_bounded(cmd, None, BUILD_TIMEOUT);
        output.expect_success("deploy/package.sh");
        let stdout = output.stdout_text();
        let last = stdout.lines().last().expect("package.sh printed nothing");
        let deb = PathBuf::from(last.trim());
        assert!(deb.is_file(), "package.sh printed {last:?}, not a file");
        deb
    }

    /// `dpkg-deb ARGS`'s stdout; panics unless it succeeds.
    pub fn dpkg_deb(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("dpkg-deb");
        cmd.args(args);
        let out = run_bounded(cmd, None, Duration::from_secs(60));
        out.expect_success(&format!("dpkg-deb {}", args.join(" ")));
        out.stdout_text()
    }

    /// lintian's report on `deb` (its tags, one a line), or `None` without lintian.
    pub fn lintian(&self, deb: &Path) -> Option<String> {
        if !on_path("lintian") {
            return None;
        }
        let mut cmd = Command::new("lintian");
        cmd.args(["--no-cfg", "--display-info", "--allow-root"])
            .arg(deb);
        let out = run_bounded(cmd, None, Duration::from_secs(300));
        // lintian exits non-zero when it emits errors; the caller judges the tags.
        Some(format!("{}{}", out.stdout_text(), out.stderr_text()))
    }
}
