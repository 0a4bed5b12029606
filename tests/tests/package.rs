//! The Debian package built by `deploy/package.sh`: its control data (`dpkg-deb -I`) and
//! contents (`dpkg-deb -c`), the unit and the sysusers line it carries, the packaged binaries
//! answering `--version` with the commit, and lintian (when installed) finding no error.
//!
//! Skips, saying so, without `dpkg-deb`. The package is built from the debug binaries the
//! other suites run.

mod debian;

use std::process::Command;

use officesync_tests::process::run_bounded;
use officesync_tests::OutputExt;

#[test]
fn the_package_holds_binaries_unit_user_conffile_private_data_dir_man_pages_and_completions() {
    let Some(tools) = debian::PackageTools::find() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let deb = tools.build(tmp.path(), None);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().and_then(|n| n.to_str()),
        Some(format!("officesync_{version}_amd64.deb").as_str())
    );

    let info = tools.dpkg_deb(&["-I", deb.to_str().expect("utf-8")]);
    for line in [
        "Package: officesync".to_owned(),
        format!("Version: {version}"),
        "Architecture: amd64".to_owned(),
    ] {
        assert!(info.contains(&line), "dpkg-deb -I lacks {line:?}:\n{info}");
    }
    for script in ["postinst", "prerm", "postrm", "conffiles", "md5sums"] {
        assert!(info.contains(script), "no {script} in:\n{info}");
    }
    let conffiles = tools.dpkg_deb(&["-I", deb.to_str().expect("utf-8"), "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/officesync/officesync.toml");

    let listing = tools.dpkg_deb(&["-c", deb.to_str().expect("utf-8")]);
    let entry = |path: &str| -> (String, String) {
        listing
            .lines()
            .find_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.last() == Some(&path)).then(|| (fields[0].to_owned(), fields[1].to_owned()))
            })
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
    };
    for (path, mode) in [
        ("./usr/bin/officesyncd", "-rwxr-xr-x"),
        ("./usr/bin/officesync", "-rwxr-xr-x"),
        ("./lib/systemd/system/officesyncd.service", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/officesync.conf", "-rw-r--r--"),
        ("./etc/officesync/officesync.toml", "-rw-r-----"),
        ("./var/lib/officesync/", "drwx------"),
        ("./usr/share/man/man1/officesync.1.gz", "-rw-r--r--"),
        ("./usr/share/man/man1/officesync-backup.1.gz", "-rw-r--r--"),
        ("./usr/share/man/man1/officesync-restore.1.gz", "-rw-r--r--"),
        ("./usr/share/man/man8/officesyncd.8.gz", "-rw-r--r--"),
        (
            "./usr/share/bash-completion/completions/officesync",
            "-rw-r--r--",
        ),
        (
            "./usr/share/zsh/vendor-completions/_officesync",
            "-rw-r--r--",
        ),
        (
            "./usr/share/fish/vendor_completions.d/officesync.fish",
            "-rw-r--r--",
        ),
        ("./usr/share/doc/officesync/copyright", "-rw-r--r--"),
    ] {
        let (got_mode, owner) = entry(path);
        assert_eq!(
            (got_mode.as_str(), owner.as_str()),
            (mode, "root/root"),
            "{path}"
        );
    }

    // What the files say, unpacked.
    let root = tmp.path().join("unpacked");
    tools.dpkg_deb(&[
        "-x",
        deb.to_str().expect("utf-8"),
        root.to_str().expect("utf-8"),
    ]);
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/officesyncd.service")).expect("unit");
    for line in [
        "ExecStart=/usr/bin/officesyncd --config /etc/officesync/officesync.toml",
        "Type=notify",
        "User=officesync",
        "StateDirectoryMode=0700",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit lacks {line:?}:\n{unit}"
        );
    }
    let sysusers =
        std::fs::read_to_string(root.join("usr/lib/sysusers.d/officesync.conf")).expect("sysusers");
    assert!(
        sysusers.lines().any(|l| l.starts_with("u officesync - ")
            && l.ends_with("/var/lib/officesync /usr/sbin/nologin")),
        "{sysusers}"
    );
    let config =
        std::fs::read_to_string(root.join("etc/officesync/officesync.toml")).expect("config");
    let example = std::fs::read_to_string(debian::repo().join("deploy/officesync.example.toml"))
        .expect("example");
    assert_eq!(config, example, "the conffile is the example config");
    for bin in ["officesyncd", "officesync"] {
        let mut cmd = Command::new(root.join("usr/bin").join(bin));
        cmd.arg("--version");
        let out = run_bounded(cmd, None, std::time::Duration::from_secs(10));
        out.expect_success(&format!("packaged {bin} --version"));
        let text = out.stdout_text();
        assert!(
            text.starts_with(&format!("{bin} {version} (commit ")),
            "{bin} --version: {text}"
        );
    }
    let completion =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/officesync"))
            .expect("completion");
    assert!(completion.contains("backup") && completion.contains("restore"));

    match tools.lintian(&deb) {
        None => eprintln!("SKIP lintian: not installed (apt-get install lintian)"),
        Some(report) => {
            eprintln!("lintian:\n{report}");
            let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
            assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
        }
    }
}
