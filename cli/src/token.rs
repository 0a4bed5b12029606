//! Which token the CLI sends: `--token` (or `OFFICESYNC_TOKEN`), else the file of
//! `--token-file` (or `OFFICESYNC_TOKEN_FILE`), else the admin token the daemon of `--config`
//! wrote in its data dir, else the one in the default data dir ([`DEFAULT_DATA_DIR`]),
//! each only when the user running the CLI may read it (root on the node); else none.

use std::path::Path;

use officesync_daemon::config::{read_admin_token, Config};

use crate::exit::CliError;

/// The token to send, if any. A named token file that cannot be read is a usage error; the
/// config's admin token is only taken when it is readable (root on the node, or the daemon's
/// user), and the default data dir's only when the API is this host's own (`local_api`), so a
/// node's admin token is never sent to another host.
pub fn resolve(
    token: Option<&str>,
    token_file: Option<&Path>,
    config: Option<&Path>,
    local_api: bool,
) -> Result<Option<String>, CliError> {
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_owned()));
    }
    if let Some(file) = token_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            CliError::usage(format!(
                "--token-file {}: {e} (the file holds one token, as `officesync user add` \
                 printed it)",
                file.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::usage(format!(
                "--token-file {}: the file is empty",
                file.display()
            )));
        }
        return Ok(Some(token.to_owned()));
    }
    if let Some(config) = config {
        return Ok(admin_token_of(config));
    }
    Ok(local_api
        .then(|| read_admin_token(Path::new(DEFAULT_DATA_DIR)).ok())
        .flatten())
}

/// The data dir of a node set up as `deploy/INSTALL.md` says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/officesync";

/// The admin token in the data dir of the node whose config is `config`, when readable.
fn admin_token_of(config: &Path) -> Option<String> {
    let config = Config::load_offline(config).ok()?;
    read_admin_token(&config.node.data_dir).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_token_wins_over_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t");
        std::fs::write(&file, "ost_file\n").expect("write");
        assert_eq!(
            resolve(Some("ost_flag"), Some(&file), None, true).expect("ok"),
            Some("ost_flag".to_owned())
        );
        assert_eq!(
            resolve(None, Some(&file), None, true).expect("ok"),
            Some("ost_file".to_owned())
        );
        assert_eq!(resolve(Some("  "), None, None, false).expect("ok"), None);
        let missing = resolve(None, Some(&dir.path().join("nope")), None, true)
            .expect_err("a missing token file");
        assert!(missing.to_string().contains("--token-file"), "{missing}");
        std::fs::write(&file, "\n").expect("write");
        assert!(resolve(None, Some(&file), None, true).is_err());
    }
}
