//! `backup --output FILE` (admin only): the running daemon's consistent copy of its store,
//! streamed to FILE and checked whole before it is kept; `restore FILE --config CONFIG` (the
//! daemon stopped) runs `officesyncd --restore`, which links the storage engine this CLI does
//! not.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Args;
use officesync_daemon::backup::frame;
use serde_json::json;
use ureq::http::Method;

use crate::exit::{CliError, Exit};
use crate::output::{escape_text, print_json, print_text};
use crate::Global;

/// Shortest wait for a backup: reading a large store takes a while.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// `backup --output FILE`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup (mode 0600; written whole or not at all).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
}

/// `restore FILE --config CONFIG [--force]`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (`officesync backup` wrote it).
    pub file: PathBuf,
    /// Move a data dir that holds anything aside (DATA_DIR.before-restore-TIME) instead of
    /// refusing.
    #[arg(long)]
    pub force: bool,
}

/// `backup`: streams `GET /v1/backup` into a temporary file beside FILE, checks its checksum,
/// then renames it into place.
pub fn backup(args: BackupArgs, global: &Global) -> Result<(), CliError> {
    let mut global = global.clone();
    global.timeout = global.timeout.max(BACKUP_TIMEOUT);
    let client = global.client()?;
    let reply = client.send(Method::GET, "/v1/backup", None)?.check(None)?;
    let tmp = temp_path(&args.output);
    let _ = fs::remove_file(&tmp);
    let written = (|| -> io::Result<u64> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let n = io::copy(&mut reply.into_reader(), &mut file)?;
        file.flush()?;
        file.sync_all()?;
        Ok(n)
    })();
    let fail = |message: String| {
        let _ = fs::remove_file(&tmp);
        CliError::failure(message)
    };
    written.map_err(|e| {
        fail(format!(
            "the backup from officesyncd at {} did not arrive whole ({e}); nothing was written \
             to {} (see the daemon's log)",
            client.addr(),
            args.output.display()
        ))
    })?;
    let checked = frame::check_file(&tmp).map_err(|e| {
        fail(format!(
            "the backup from officesyncd at {} is not whole: {e}; nothing was written to {}",
            client.addr(),
            args.output.display()
        ))
    })?;
    fs::rename(&tmp, &args.output)
        .map_err(|e| fail(format!("cannot write {}: {e}", args.output.display())))?;
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    let h = &checked.header;
    if global.json {
        return print_json(&json!({
            "file": args.output,
            "bytes": checked.bytes,
            "rows": checked.rows,
            "node": h.node,
            "replica": h.replica,
            "release": h.release,
            "created_unix_ms": h.created_unix_ms,
            "sealed": h.sealed,
        }));
    }
    print_text(&format!(
        "wrote {}: {} bytes, {} store rows of node {} (replica {}){}; checksum verified\n",
        args.output.display(),
        checked.bytes,
        checked.rows,
        escape_text(&h.node),
        escape_text(&h.replica),
        if h.sealed {
            ", values sealed as stored: restoring it needs the node's storage key"
        } else {
            ""
        }
    ))
}

/// `.NAME.tmpPID` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// `restore`: runs `officesyncd --config CONFIG --restore FILE [--force]` (the officesyncd
/// beside this program, else the one on PATH) and exits as it does.
pub fn restore(args: RestoreArgs, global: &Global) -> Result<(), CliError> {
    let Some(config) = &global.config else {
        return Err(CliError::usage(
            "restore needs the node's config: officesync restore FILE --config /etc/officesync/officesync.toml",
        ));
    };
    let daemon = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("officesyncd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("officesyncd"));
    let mut command = Command::new(&daemon);
    command
        .arg("--config")
        .arg(config)
        .arg("--restore")
        .arg(&args.file);
    if args.force {
        command.arg("--force");
    }
    let status = command.status().map_err(|e| {
        CliError::failure(format!(
            "cannot run {} (restore is done by officesyncd, installed beside officesync): {e}",
            daemon.display()
        ))
    })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(2) => Err(CliError::quiet(Exit::Usage)),
        _ => Err(CliError::quiet(Exit::Failure)),
    }
}
