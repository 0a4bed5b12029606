//! Offline commands that need no daemon: `ca init`, `ca issue` and
//! `config check`, thin wrappers over the daemon library.
//!
//! `ca init` and `ca issue` warn when the host looks like an officesync node (see
//! [`node_config_here`]): the deployment CA belongs on an offline machine that is none.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use officesync_daemon::config::access::{Access, Account};
use officesync_daemon::config::{Config, ConfigError};
use officesync_daemon::pki::{self, IssueOptions, PkiError, DEFAULT_CERT_DAYS, MAX_CERT_DAYS};
use serde_json::json;

use crate::exit::{CliError, Exit};
use crate::output::{format_unix, print_json, print_text};
use crate::Global;

/// `ca ...`: the deployment's private certificate authority.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the deployment CA: DIR/ca.pem and DIR/ca.key (on an offline machine, never a node).
    Init(CaInitArgs),
    /// Issue a node bundle: OUT/node.pem, OUT/node.key and OUT/ca.pem.
    Issue(CaIssueArgs),
}

/// `ca init --dir DIR [--force]`.
#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// Directory for ca.pem and ca.key (created if missing); `--ca-dir` too, as `ca issue`
    /// names it.
    #[arg(long, value_name = "DIR", visible_alias = "ca-dir")]
    pub dir: PathBuf,
    /// Replace an existing CA in DIR (every issued certificate stops working).
    #[arg(long)]
    pub force: bool,
}

/// `ca issue NAME --ca-dir DIR --out DIR [--admin] [--force] [--days N]`.
#[derive(Debug, Args)]
pub struct CaIssueArgs {
    /// Node name to put in the certificate, e.g. hefei.
    pub name: String,
    /// Directory holding the CA's ca.pem and ca.key.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// Directory to write the bundle into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Make it an admin node's certificate (also list the node in [cluster] admins).
    #[arg(long)]
    pub admin: bool,
    /// Replace an existing bundle in the output directory.
    #[arg(long)]
    pub force: bool,
    /// Validity in days.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CERT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CERT_DAYS)))]
    pub days: u32,
    /// The node key's algorithm: ed25519 (default), or p256 as in bundles of 0.1.0.
    #[arg(long, value_name = "TYPE", default_value = "ed25519", value_parser = ["ed25519", "p256"])]
    pub key_type: String,
}

/// `config ...`: node configuration files.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a node config file, TLS bundle included, as officesyncd would, and that the
    /// daemon's user can read its files and write its data_dir.
    Check {
        /// The config file (TOML).
        file: PathBuf,
        /// The user officesyncd runs as, whose access to the files is checked [default:
        /// officesync, if that user exists].
        #[arg(long, env = "OFFICESYNC_USER", value_name = "NAME")]
        user: Option<String>,
    },
}

impl CaCommand {
    /// Runs `ca init` or `ca issue`.
    pub fn run(self, global: &Global) -> Result<(), CliError> {
        match self {
            CaCommand::Init(args) => ca_init(args, global),
            CaCommand::Issue(args) => ca_issue(args, global),
        }
    }
}

impl ConfigCommand {
    /// Runs `config check`.
    pub fn run(self, global: &Global) -> Result<(), CliError> {
        match self {
            ConfigCommand::Check { file, user } => config_check(file, user, global),
        }
    }
}

/// The exit code for a certificate error: bad input (exit 2) or a failure
/// of this machine (exit 4).
fn pki_exit(error: &PkiError) -> Exit {
    match error {
        PkiError::Write { .. } | PkiError::Generate(_) | PkiError::Random | PkiError::Time(_) => {
            Exit::Failure
        }
        _ => Exit::Usage,
    }
}

/// Turns a certificate error into the command's error.
fn pki_error(error: PkiError) -> CliError {
    CliError::new(pki_exit(&error), error.to_string())
}

/// `ca init`.
fn ca_init(args: CaInitArgs, global: &Global) -> Result<(), CliError> {
    let existing = [pki::CA_CERT_FILE, pki::CA_KEY_FILE]
        .iter()
        .any(|f| args.dir.join(f).exists());
    if args.force && existing {
        eprintln!(
            "warning: replacing the deployment CA in {}: every certificate it issued stops \
             working, so every office is cut off until it installs a bundle issued by the new \
             CA (officesync ca issue, then INSTALL.md step 6 on each node)",
            args.dir.display()
        );
    }
    let ca = pki::init_ca(&args.dir, args.force).map_err(pki_error)?;
    warn_on_a_node(global, &ca.key_path, "");
    if global.json {
        return print_json(&json!({
            "cert": ca.cert_path.display().to_string(),
            "key": ca.key_path.display().to_string(),
            "fingerprint": ca.fingerprint,
            "serial": ca.serial_hex,
            "not_before": ca.not_before,
            "not_after": ca.not_after,
        }));
    }
    print_text(&format!(
        "created the deployment CA in {}\n  \
         certificate: {}\n  \
         private key: {} (keep it secret, on an offline machine)\n  \
         cluster id:  {}\n  \
         valid until: {}\n\
         next: officesync ca issue NAME --ca-dir {} --out DIR",
        args.dir.display(),
        ca.cert_path.display(),
        ca.key_path.display(),
        ca.fingerprint,
        format_unix(ca.not_after),
        args.dir.display(),
    ))
}

/// `ca issue`.
fn ca_issue(args: CaIssueArgs, global: &Global) -> Result<(), CliError> {
    let opts = IssueOptions {
        admin: args.admin,
        force: args.force,
        days: args.days,
        key_type: if args.key_type == "p256" {
            pki::KeyType::EcdsaP256
        } else {
            pki::KeyType::Ed25519
        },
    };
    let issued = pki::issue(&args.name, &args.ca_dir, &args.out, &opts).map_err(pki_error)?;
    warn_on_a_node(
        global,
        &args.ca_dir.join(pki::CA_KEY_FILE),
        &format!(
            "; the private key {} belongs on node {} alone",
            issued.key_path.display(),
            issued.name
        ),
    );
    if global.json {
        return print_json(&json!({
            "name": issued.name,
            "admin": issued.admin,
            "serial": issued.serial_hex,
            "not_before": issued.not_before,
            "not_after": issued.not_after,
            "cert": issued.cert_path.display().to_string(),
            "key": issued.key_path.display().to_string(),
            "ca": issued.ca_path.display().to_string(),
            "ca_fingerprint": issued.ca_fingerprint,
        }));
    }
    let role = if issued.admin { "admin node" } else { "node" };
    print_text(&format!(
        "issued a certificate for {role} {}\n  \
         certificate: {}\n  \
         private key: {}\n  \
         CA:          {}\n  \
         serial:      {}\n  \
         valid until: {}\n  \
         cluster id:  {}",
        issued.name,
        issued.cert_path.display(),
        issued.key_path.display(),
        issued.ca_path.display(),
        issued.serial_hex,
        format_unix(issued.not_after),
        issued.ca_fingerprint,
    ))
}

/// The node config of a host set up as `deploy/INSTALL.md` says (the systemd unit's
/// `--config`).
const NODE_CONFIG: &str = "/etc/officesync/officesync.toml";

/// Names the file probed in place of [`NODE_CONFIG`] (for tests; not in `--help`).
const NODE_CONFIG_PROBE_ENV: &str = "OFFICESYNC_NODE_CONFIG_PROBE";

/// A node config on this host, the sign of an officesync node: `--config` (or
/// `OFFICESYNC_CONFIG`) if that file exists, else [`NODE_CONFIG`] (or the file
/// [`NODE_CONFIG_PROBE_ENV`] names) if it exists.
fn node_config_here(global: &Global) -> Option<PathBuf> {
    if let Some(config) = global.config.as_ref().filter(|path| path.is_file()) {
        return Some(config.clone());
    }
    let probe = std::env::var_os(NODE_CONFIG_PROBE_ENV)
        .map_or_else(|| PathBuf::from(NODE_CONFIG), PathBuf::from);
    probe.is_file().then_some(probe)
}

/// Warns on stderr, in one line, when this host looks like a node ([`node_config_here`]): the
/// CA key `ca_key` belongs on an offline machine (`more` is added at the end).
fn warn_on_a_node(global: &Global, ca_key: &Path, more: &str) {
    if let Some(config) = node_config_here(global) {
        eprintln!(
            "warning: {} exists, so this host looks like an officesync node: the CA key {} \
             belongs on an offline machine that is never a node (move the CA directory there \
             and issue every bundle there: INSTALL.md step 4){more}",
            config.display(),
            ca_key.display(),
        );
    }
}

/// The user `config check` checks file access for when none is named.
const SERVICE_USER: &str = "officesync";

/// `config check`: exit 0 with a summary, or 2 with the one-line error.
fn config_check(file: PathBuf, user: Option<String>, global: &Global) -> Result<(), CliError> {
    let refused = |error: ConfigError| -> Result<(), CliError> {
        if global.json {
            print_json(&config_error_json(&error))?;
        }
        Err(CliError::usage(error.to_string()))
    };
    let config = match Config::load(&file) {
        Ok(config) => config,
        Err(error) => return refused(error),
    };
    let account = service_account(user.as_deref())?;
    let access = match &account {
        ServiceAccount::Found(account) => match config.check_access(account) {
            Ok(data_dir) => access_line(&config, account, data_dir),
            Err(error) => return refused(error),
        },
        ServiceAccount::Absent(note) => note.clone(),
    };
    let peers = config.sync.peers.len();
    if global.json {
        return print_json(&json!({
            "ok": true,
            "node": config.node.name,
            "data_dir": config.node.data_dir.display().to_string(),
            "api": config.api.listen.to_string(),
            "listen": config.sync.listen.to_string(),
            "peers": peers,
            "durability": config.storage.durability.as_str(),
            "user": match &account {
                ServiceAccount::Found(account) => Some(account.name.clone()),
                ServiceAccount::Absent(_) => None,
            },
            "access": access,
            "encryption_key_ids": crate::storage_key::key_ids(&config),
        }));
    }
    let encryption =
        crate::storage_key::summary(&config).map_or_else(String::new, |line| format!("\n{line}"));
    print_text(&format!(
        "ok: node {}, data_dir {}, api {}, {peers} {}\n{access}{encryption}",
        config.node.name,
        config.node.data_dir.display(),
        config.api.listen,
        if peers == 1 { "peer" } else { "peers" },
    ))
}

/// Whose access to its files `config check` checks.
enum ServiceAccount {
    /// This account's.
    Found(Account),
    /// Nobody's: there is no user [`SERVICE_USER`] and none was named; the line saying so.
    Absent(String),
}

/// The account whose access `config check` checks: `--user NAME`, or [`SERVICE_USER`] if it
/// exists; an error if `--user` names no user.
fn service_account(user: Option<&str>) -> Result<ServiceAccount, CliError> {
    let name = user.unwrap_or(SERVICE_USER);
    let found = Account::lookup(name).map_err(|e| {
        CliError::failure(format!(
            "cannot read the user database /etc/passwd: {e} (fix: pass --user NAME on a \
             machine that has it)"
        ))
    })?;
    match (found, user) {
        (Some(account), _) => Ok(ServiceAccount::Found(account)),
        (None, Some(name)) => Err(CliError::usage(format!(
            "--user {name}: no such user in /etc/passwd (fix: name the user officesyncd runs \
             as, or create it: INSTALL.md step 3)"
        ))),
        (None, None) => Ok(ServiceAccount::Absent(format!(
            "not checked: whether the daemon's user can read these files (there is no user \
             {SERVICE_USER} here: create it, INSTALL.md step 3, or pass --user NAME)"
        ))),
    }
}

/// The second line of `config check`: what `account` may use.
fn access_line(config: &Config, account: &Account, data_dir: Access) -> String {
    let who = account.describe();
    let dir = config.node.data_dir.display();
    match data_dir {
        Access::Unknown => format!(
            "ok: {who} can read the config and the [tls] files; data_dir {dir}: not checked, \
             this user may not look into it (run config check as root)"
        ),
        Access::Allowed => format!(
            "ok: {who} can read the config and the [tls] files, and write to data_dir {dir}"
        ),
        Access::Missing => format!(
            "ok: {who} can read the config and the [tls] files; data_dir {dir} does not exist \
             yet (the systemd unit creates it; to run officesyncd by hand, first: install -d \
             -o {user} -g {group} -m 0700 {dir})",
            user = account.name,
            group = account.group_name(),
        ),
    }
}

/// The `--json` form of a refused config.
fn config_error_json(error: &ConfigError) -> serde_json::Value {
    json!({ "ok": false, "key": error.key(), "error": error.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn pki_errors_split_into_usage_and_failure() {
        let exists = PkiError::Exists {
            path: PathBuf::from("ca.pem"),
        };
        assert_eq!(pki_exit(&exists), Exit::Usage);
        assert_eq!(pki_exit(&PkiError::InvalidDays(0)), Exit::Usage);
        let read = PkiError::Read {
            path: PathBuf::from("ca/ca.pem"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(pki_exit(&read), Exit::Usage);
        let write = PkiError::Write {
            path: PathBuf::from("out"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(pki_exit(&write), Exit::Failure);
        assert_eq!(pki_exit(&PkiError::Random), Exit::Failure);
    }
}
