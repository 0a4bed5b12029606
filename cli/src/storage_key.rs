//! `officesync storage-key --out FILE [--force]`: a new key for encryption at rest, made
//! offline (no daemon), and the line `config check` prints about a config's storage keys.

use std::path::PathBuf;

use clap::Args;
use officesync_daemon::config::Config;
use officesync_daemon::storage_key::{KeyFileError, StorageKey, KEY_FILE_MODE};
use serde_json::json;

use crate::exit::{CliError, Exit};
use crate::output::{print_json, print_text};
use crate::Global;

/// `storage-key --out FILE [--force]`.
#[derive(Debug, Args)]
pub struct StorageKeyArgs {
    /// File to write the new key to (mode 0600). Keep it outside the data dir and its
    /// backups, e.g. /etc/officesync/storage.key, and keep a copy in a safe place.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing file: a store encrypted with the key in it can no longer be read.
    #[arg(long)]
    pub force: bool,
}

/// The exit code for a key file error: the user's choice of file (2) or this machine (4).
fn exit_for(error: &KeyFileError) -> Exit {
    match error {
        KeyFileError::Exists { .. } => Exit::Usage,
        _ => Exit::Failure,
    }
}

/// `storage-key`: writes a new random key and says where it must (not) be kept.
pub fn run(args: StorageKeyArgs, global: &Global) -> Result<(), CliError> {
    let fail = |e: KeyFileError| CliError::new(exit_for(&e), e.to_string());
    let key = StorageKey::generate().map_err(fail)?;
    key.write_new(&args.out, args.force).map_err(fail)?;
    if global.json {
        return print_json(&json!({
            "file": args.out.display().to_string(),
            "key_id": key.id().to_string(),
            "mode": format!("{KEY_FILE_MODE:04o}"),
        }));
    }
    print_text(&format!(
        "wrote a new storage key to {file} (key id {id}, mode {KEY_FILE_MODE:04o})\n  \
         keep it outside the data dir and out of its backups, readable only by officesyncd's \
         user,\n  and keep a copy in a safe place: without it the store cannot be read\n\
         next: set [storage] encryption_key_file = \"{file}\" in the node's config",
        file = args.out.display(),
        id = key.id(),
    ))
}

/// What `config check` says about encryption at rest: `None` when values are stored in clear,
/// else the key id of each key file (the config was validated, so they read).
pub fn summary(config: &Config) -> Option<String> {
    let current = config.storage.encryption_key_file.as_ref()?;
    let id = |path: &std::path::Path| {
        StorageKey::read(path).map_or_else(|e| format!("unreadable: {e}"), |k| k.id().to_string())
    };
    let mut line = format!(
        "ok: values are encrypted at rest with the key in {} (key id {})",
        current.display(),
        id(current)
    );
    for previous in &config.storage.previous_encryption_key_files {
        line.push_str(&format!(
            "; still read with {} (key id {}) until `officesyncd --rekey`",
            previous.display(),
            id(previous)
        ));
    }
    Some(line)
}

/// The key ids of a config's storage key files for `config check --json`: current first.
pub fn key_ids(config: &Config) -> Vec<String> {
    config
        .storage
        .encryption_key_file
        .iter()
        .chain(&config.storage.previous_encryption_key_files)
        .filter_map(|p| StorageKey::read(p).ok())
        .map(|k| k.id().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn an_existing_file_is_a_usage_error_and_a_failed_write_a_failure() {
        let exists = KeyFileError::Exists {
            path: PathBuf::from("k"),
        };
        assert_eq!(exit_for(&exists), Exit::Usage);
        let write = KeyFileError::Write {
            path: PathBuf::from("k"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(exit_for(&write), Exit::Failure);
    }

    #[test]
    fn summary_names_every_key_file_and_its_id() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b) = (tmp.path().join("a.key"), tmp.path().join("b.key"));
        let ka = StorageKey::generate().expect("key");
        ka.write_new(&a, false).expect("write");
        let kb = StorageKey::generate().expect("key");
        kb.write_new(&b, false).expect("write");
        let config = Config::builder("hefei", tmp.path().join("data"), Path::new("/t")).build();
        assert_eq!(summary(&config), None);
        assert!(key_ids(&config).is_empty());
        let config = Config::builder("hefei", tmp.path().join("data"), Path::new("/t"))
            .encryption_key_file(&a)
            .previous_encryption_key_file(&b)
            .build();
        let line = summary(&config).expect("encrypted");
        assert!(line.contains(&ka.id().to_string()), "{line}");
        assert!(line.contains(&kb.id().to_string()), "{line}");
        assert!(line.contains("a.key") && line.contains("b.key"), "{line}");
        assert_eq!(key_ids(&config), [ka.id().to_string(), kb.id().to_string()]);
    }
}
