//! The documentation `officesync` generates from its command line: manual pages
//! (`officesync man`) and shell completion scripts (`officesync completions`), checked
//! as a sysadmin would install and use them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::run_with;

/// Every subcommand path that must get its own page, as in the page's file name.
const PAGES: &[&str] = &[
    "officesync",
    "officesync-put",
    "officesync-get",
    "officesync-delete",
    "officesync-scan",
    "officesync-import",
    "officesync-export",
    "officesync-collections",
    "officesync-status",
    "officesync-peers",
    "officesync-verify",
    "officesync-cluster",
    "officesync-ca",
    "officesync-ca-init",
    "officesync-ca-issue",
    "officesync-config",
    "officesync-config-check",
    "officesync-demo",
    "officesync-completions",
    "officesync-man",
];

/// Whether `program` can be run (it answers `--version`).
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `man -l FILE` rendered as plain text (no pager, no terminal width games).
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("run man -l");
    assert!(out.status.success(), "man -l {}: {out:?}", page.display());
    // `man` overstrikes for bold when writing to a pipe on some systems: drop "X\bX".
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn man_writes_one_page_per_subcommand_with_its_options() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("man1");
    let dir_arg = dir.to_str().expect("UTF-8 temp path");
    let out = run_with(&["man", "--dir", dir_arg], b"", &[]);
    assert!(out.status.success(), "officesync man --dir: {out:?}");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the man dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("wrote {} manual pages to ", files.len())),
        "{stdout}"
    );
    // Subcommands added later get pages too; these must always be there, and nothing else
    // (no `help` pages, no stray files).
    for page in PAGES {
        assert!(
            files.contains(&format!("{page}.1")),
            "no {page}.1 in {files:?}"
        );
    }
    for file in &files {
        assert!(
            file.starts_with("officesync") && file.ends_with(".1") && !file.contains("help"),
            "unexpected page {file}"
        );
    }

    for file in &files {
        let page = file.trim_end_matches(".1");
        let text = std::fs::read_to_string(dir.join(file)).expect("read page");
        let title = format!(".TH {page} 1 ");
        assert!(
            text.lines().any(|l| l.starts_with(&title)),
            "{page}: no title line {title:?}"
        );
        assert!(
            text.contains(concat!("officesync ", env!("CARGO_PKG_VERSION"))),
            "{page}: no version"
        );
        assert!(text.contains(".SH NAME"), "{page}: no NAME section");
        assert!(text.contains(".SH SYNOPSIS"), "{page}: no SYNOPSIS section");
    }
    let issue = std::fs::read_to_string(dir.join("officesync-ca-issue.1")).expect("read");
    for option in ["ca\\-dir", "out", "admin", "days"] {
        assert!(
            issue.contains(&format!("\\-\\-{option}")),
            "ca issue page lacks --{option}"
        );
    }
    let main = std::fs::read_to_string(dir.join("officesync.1")).expect("read");
    assert!(
        main.contains("officesync\\-status(1)"),
        "the main page lists its subcommands' pages"
    );
    assert!(
        main.contains("Exit codes"),
        "the main page keeps the exit codes"
    );

    if !have("man") {
        eprintln!("skipping the rendering check: `man` is not installed");
        return;
    }
    let rendered = render(&dir.join("officesync-ca-issue.1"));
    assert!(rendered.contains("officesync-ca-issue"), "{rendered}");
    assert!(rendered.contains("--ca-dir <DIR>"), "{rendered}");
    assert!(rendered.contains("Directory holding the CA"), "{rendered}");
}

#[test]
fn man_without_dir_prints_the_main_page() {
    let out = run_with(&["man"], b"", &[]);
    assert!(out.status.success(), "officesync man: {out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8 page");
    assert!(text.contains("\n.TH officesync 1 "), "{text}");
    assert!(
        text.contains("completions"),
        "lists the subcommands: {text}"
    );
}

#[test]
fn completion_scripts_are_valid_for_their_shells() {
    for (shell, check) in [
        ("bash", &["-n"][..]),
        ("zsh", &["-n"][..]),
        ("fish", &["--no-execute"][..]),
    ] {
        let out = run_with(&["completions", shell], b"", &[]);
        assert!(out.status.success(), "completions {shell}: {out:?}");
        let script = String::from_utf8(out.stdout).expect("UTF-8 script");
        for sub in ["ca", "config", "status", "man", "completions"] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
        if !have(shell) {
            eprintln!("skipping the syntax check of the {shell} script: {shell} is not installed");
            continue;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let file = tmp.path().join(format!("officesync.{shell}"));
        std::fs::write(&file, &script).expect("write script");
        let status = Command::new(shell)
            .args(check)
            .arg(&file)
            .status()
            .expect("run the shell");
        assert!(status.success(), "{shell} rejects the script");
    }
    // bash: the script, once sourced, registers a completion for officesync.
    if have("bash") {
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"source <("$0" completions bash) && complete -p officesync"#)
            .arg(env!("CARGO_BIN_EXE_officesync"))
            .output()
            .expect("run bash");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("officesync"),
            "bash did not register the completion: {out:?}"
        );
    }
}
