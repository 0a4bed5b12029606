//! `officesync`: the control CLI of officesync nodes.
//!
//! Most commands are thin clients of the local officesyncd HTTP API
//! (`--api`, `OFFICESYNC_API`, or `[api] listen` of the node config named by
//! `--config`); `ca`, `config` and `storage-key` work offline through the daemon library. Exit codes are documented on [`exit::Exit`].
//!
//! Adding a subcommand `foo` takes three lines here: `mod foo;`, a variant
//! `Foo(foo::FooArgs),` in [`Command`] (its help comes from the doc comment
//! of `FooArgs`), and the arm `Command::Foo(args) => foo::run(args, global),`
//! in [`Command::run`], where `run(args, &Global) -> Result<(), CliError>`.

mod backup;
mod bundle;
mod client;
mod cluster;
mod completions;
mod conflicts;
mod demo;
mod exit;
mod history;
mod node;
mod offline;
mod output;
mod policy;
mod records;
mod search;
mod storage_key;
mod token;
mod transfer;
mod urlenc;
mod users;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{ApiAddr, Client};
use crate::exit::{CliError, Exit};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "officesync",
    version = officesync_daemon::VERSION,
    about = "Control an officesync node: read and write records, check status, manage certificates.",
    after_help = "Exit codes: 0 success, 1 key not found, 2 usage error or request rejected \
                  by the daemon, 3 daemon unreachable, 4 other failure, 5 not authenticated \
                  (no token, a wrong one, or too many failed attempts), 6 forbidden (the \
                  user may not do this)."
)]
struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    global: Global,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Help heading of the options in [`Global`].
const GLOBAL: &str = "Global options";

/// Options every subcommand takes, before or after its name.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Address of the officesyncd HTTP API: host:port or http://host:port [default: the
    /// [api] listen of --config, else 127.0.0.1:7480].
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "OFFICESYNC_API",
        value_name = "ADDR"
    )]
    pub api: Option<ApiAddr>,
    /// The node's config file: the API address is its [api] listen, unless --api is given.
    /// Only the file itself is read (not the key or certificates).
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "OFFICESYNC_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// The token of the user to act as (as `officesync user add` printed it). Prefer
    /// OFFICESYNC_TOKEN or --token-file: a command line is visible to other local users.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "OFFICESYNC_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A file holding the token [default: the admin.token in the data dir of --config, else
    /// /var/lib/officesync/admin.token when readable and the API is on this host's loopback].
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "OFFICESYNC_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// Give up on a request after this long: seconds, or 500ms, 30s, 2m.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = client::parse_timeout
    )]
    pub timeout: Duration,
}

impl Global {
    /// A client of the daemon at [`Global::api_addr`].
    pub fn client(&self) -> Result<Client, CliError> {
        let addr = self.api_addr()?;
        let token = self.token_for(&addr)?;
        Ok(Client::new(addr, self.timeout).with_token(token))
    }

    /// The token to send to the API at `addr` ([`token::resolve`]).
    pub fn token_for(&self, addr: &ApiAddr) -> Result<Option<String>, CliError> {
        token::resolve(
            self.token.as_deref(),
            self.token_file.as_deref(),
            self.config.as_deref(),
            addr.is_loopback(),
        )
    }

    /// Where the daemon's API listens: `--api` (or `OFFICESYNC_API`) if given, else the
    /// `[api] listen` of `--config` (or `OFFICESYNC_CONFIG`), else [`client::DEFAULT_API`].
    pub fn api_addr(&self) -> Result<ApiAddr, CliError> {
        if let Some(api) = &self.api {
            return Ok(api.clone());
        }
        match &self.config {
            Some(path) => client::api_from_config(path),
            None => client::DEFAULT_API
                .parse()
                .map_err(|e: String| CliError::failure(format!("default API address: {e}"))),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Write a record: VALUE, --file FILE, or - for stdin, stored byte for byte.
    Put(records::PutArgs),
    /// Print a record's value exactly as stored (notes siblings on stderr).
    Get(records::GetArgs),
    /// Delete a record (writes a tombstone that replicates).
    Delete(records::DeleteArgs),
    /// List records of a collection in key order: key, version, value.
    Scan(records::ScanArgs),
    /// Print one line per change of a collection as it happens (reconnects by itself; Ctrl-C
    /// stops).
    Watch(watch::WatchArgs),
    /// List the versions of a record this node holds, newest first, superseded ones included.
    History(history::HistoryArgs),
    /// Search a collection's records for words, Chinese or English, best matches first.
    Search(search::SearchArgs),
    /// List the keys of a collection with two or more siblings (concurrent versions).
    Conflicts(conflicts::ConflictsArgs),
    /// Resolve a conflict: write one sibling's value (--keep), or a new one, over every sibling.
    Resolve(conflicts::ResolveArgs),
    /// Load records from JSON Lines (or - for stdin) or a directory tree into a collection.
    Import(transfer::ImportArgs),
    /// Write a collection as JSON Lines on stdout or to --output FILE.
    Export(transfer::ExportArgs),
    /// List the collections this node holds.
    Collections,
    /// Show the node: uptime, collections with digests, peers.
    Status,
    /// Show the replication peers: connected, last seen, lag, traffic.
    Peers,
    /// Compare collection digests with peers now and repair differences.
    Verify,
    /// Show the province as a tree: every node fresh, behind, refusing or silent (admin).
    Cluster(cluster::ClusterArgs),
    /// Manage the API's users and their tokens (admin only).
    #[command(subcommand)]
    User(users::UserCommand),
    /// List this node's audit log, or verify its hash chain (admin only).
    Audit(users::AuditArgs),
    /// Carry versions to an office whose link is down: want, export, import (admin only).
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Show or change the access policy (`_policy`): grants, revocations.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Write a consistent copy of the running node's store to --output FILE (admin only).
    Backup(backup::BackupArgs),
    /// With the daemon stopped: rebuild the data dir of --config from a backup, as a new
    /// incarnation (runs officesyncd --restore).
    Restore(backup::RestoreArgs),
    /// Manage the deployment CA and node certificates (offline).
    #[command(subcommand)]
    Ca(offline::CaCommand),
    /// Check node configuration files (offline).
    #[command(subcommand)]
    Config(offline::ConfigCommand),
    /// Write a new key for encryption at rest to --out FILE (offline; mode 0600).
    StorageKey(storage_key::StorageKeyArgs),
    /// Run a live local demo: a CA, a general office node and sample records (Ctrl-C stops).
    Demo(demo::DemoArgs),
    /// Print the shell completion script for officesync (bash, zsh or fish).
    Completions(completions::CompletionsArgs),
    /// Write the manual pages (one per subcommand) to --dir DIR, or print the main page.
    Man(completions::ManArgs),
}

impl Command {
    /// Runs the subcommand.
    fn run(self, global: &Global) -> Result<(), CliError> {
        match self {
            Command::Put(args) => records::put(args, global),
            Command::Get(args) => records::get(args, global),
            Command::Delete(args) => records::delete(args, global),
            Command::Scan(args) => records::scan(args, global),
            Command::History(args) => history::run(args, global),
            Command::Watch(args) => watch::run(args, global),
            Command::Search(args) => search::search(args, global),
            Command::Conflicts(args) => conflicts::conflicts(args, global),
            Command::Resolve(args) => conflicts::resolve(args, global),
            Command::Import(args) => transfer::import(args, global),
            Command::Export(args) => transfer::export(args, global),
            Command::Collections => node::collections(global),
            Command::Status => node::status(global),
            Command::Peers => node::peers(global),
            Command::Verify => node::verify(global),
            Command::Cluster(args) => cluster::run(args, global),
            Command::User(command) => command.run(global),
            Command::Audit(args) => users::audit(args, global),
            Command::Bundle(command) => command.run(global),
            Command::Policy(command) => command.run(global),
            Command::Backup(args) => backup::backup(args, global),
            Command::Restore(args) => backup::restore(args, global),
            Command::Ca(command) => command.run(global),
            Command::Config(command) => command.run(global),
            Command::StorageKey(args) => storage_key::run(args, global),
            Command::Demo(args) => demo::run(args, global),
            Command::Completions(args) => completions::run(args, global),
            Command::Man(args) => completions::man(args, global),
        }
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 here, inside clap.
    let cli = Cli::parse();
    match cli.command.run(&cli.global) {
        Ok(()) => Exit::Success.into(),
        Err(error) => {
            if let Some(message) = &error.message {
                eprintln!("error: {message}");
            }
            error.exit.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "officesync",
            "get",
            "situation",
            "hefei/grain",
            "--json",
            "--api",
            "http://10.0.0.5:7481",
            "--timeout",
            "2s",
        ])
        .expect("parses");
        assert!(cli.global.json);
        assert_eq!(
            cli.global.api_addr().expect("address").to_string(),
            "10.0.0.5:7481"
        );
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
    }

    #[test]
    fn ca_init_takes_the_ca_dir_flag_of_ca_issue() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ());
        assert!(parse(&["officesync", "ca", "init", "--dir", "ca"]).is_ok());
        assert!(parse(&["officesync", "ca", "init", "--ca-dir", "ca"]).is_ok());
        assert!(parse(&["officesync", "ca", "init", "--ca", "ca"]).is_err());
        assert!(parse(&[
            "officesync",
            "ca",
            "issue",
            "n",
            "--ca-dir",
            "ca",
            "--out",
            "o"
        ])
        .is_ok());
    }

    #[test]
    fn put_needs_exactly_one_value_source() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ());
        assert!(parse(&["officesync", "put", "c", "k", "v"]).is_ok());
        assert!(parse(&["officesync", "put", "c", "k", "-"]).is_ok());
        assert!(parse(&["officesync", "put", "c", "k", "--file", "f"]).is_ok());
        // Neither source parses; `ValueSource::select` refuses it (exit 2).
        assert!(parse(&["officesync", "put", "c", "k"]).is_ok());
        let both = parse(&["officesync", "put", "c", "k", "v", "--file", "f"]).expect_err("both");
        assert_eq!(both.exit_code(), 2);
    }
}
