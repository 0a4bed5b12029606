//! Staff access commands: `user add | list | remove | token` and `audit [verify]`.
//!
//! Every one needs an admin's token. A new token is printed once, alone on stdout (so
//! `officesync user add li --role reader > li.token` keeps it), and is never shown again.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use officesync_api::{NewUser, RemovedBody, Role, TokenBody, UsersBody};
use officesync_daemon::audit::{self, Entry, Page, VerifySummary};
use ureq::http::Method;

use crate::exit::{CliError, Exit};
use crate::output::{escape_text, format_unix, print_json, print_text, Table};
use crate::urlenc::encode_component;
use crate::Global;

/// `user`: manage the API's users and their tokens.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user and print its token (once).
    Add(AddArgs),
    /// List the users: name, role, collections, when the token was issued.
    List,
    /// Remove a user; its token stops working at once.
    Remove {
        /// The user.
        name: String,
    },
    /// Issue a user a new token and print it; the old one stops working at once.
    Token {
        /// The user.
        name: String,
    },
}

/// `user add NAME --role ROLE [--collections c1,c2]`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The user's name: lowercase letters, digits, '.', '_', '-'.
    pub name: String,
    /// reader (reads), writer (reads and writes) or admin (everything, users and _policy too).
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// The collections it may use, comma-separated [default: every collection the node may
    /// read]; '' for none (status and metrics only, e.g. for Prometheus).
    #[arg(long, value_name = "C1,C2")]
    pub collections: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not a role: use reader, writer or admin"))
}

impl UserCommand {
    /// Runs the subcommand.
    pub fn run(self, global: &Global) -> Result<(), CliError> {
        let client = global.client()?;
        match self {
            UserCommand::Add(args) => {
                let collections = args.collections.map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect()
                });
                let new = NewUser {
                    name: args.name,
                    role: args.role,
                    collections,
                };
                let body = serde_json::to_vec(&new)
                    .map_err(|e| CliError::failure(format!("cannot encode the user: {e}")))?;
                let answer: TokenBody = client
                    .send(Method::POST, "/v1/users", Some(body))?
                    .check(None)?
                    .json()?;
                print_token(global, &answer)
            }
            UserCommand::List => {
                let answer: UsersBody = client
                    .send(Method::GET, "/v1/users", None)?
                    .check(None)?
                    .json()?;
                if global.json {
                    return print_json(&answer);
                }
                print_text(&users_table(&answer))
            }
            UserCommand::Remove { name } => {
                let path = format!("/v1/users/{}", encode_component(&name));
                let answer: RemovedBody = client
                    .send(Method::DELETE, &path, None)?
                    .check(Some(&format!("no user {name:?}")))?
                    .json()?;
                if global.json {
                    return print_json(&answer);
                }
                print_text(&format!(
                    "removed user {}; its token no longer works\n",
                    escape_text(&answer.removed)
                ))
            }
            UserCommand::Token { name } => {
                let path = format!("/v1/users/{}/token", encode_component(&name));
                let answer: TokenBody = client
                    .send(Method::POST, &path, None)?
                    .check(Some(&format!("no user {name:?}")))?
                    .json()?;
                print_token(global, &answer)
            }
        }
    }
}

/// The token alone on stdout (or the JSON answer), and what it is on stderr.
fn print_token(global: &Global, answer: &TokenBody) -> Result<(), CliError> {
    if global.json {
        return print_json(answer);
    }
    eprintln!(
        "token of {} ({}); shown this once, give it to the user (OFFICESYNC_TOKEN or \
         --token-file):",
        escape_text(&answer.name),
        answer.role
    );
    print_text(&format!("{}\n", answer.token))
}

fn users_table(body: &UsersBody) -> String {
    if body.users.is_empty() {
        return "no users\n".to_owned();
    }
    let mut table = Table::new(&["NAME", "ROLE", "COLLECTIONS", "TOKEN ISSUED"]);
    for u in &body.users {
        let collections = match &u.collections {
            None => "all".to_owned(),
            Some(list) if list.is_empty() => "none".to_owned(),
            Some(list) => list.join(","),
        };
        table.row(vec![
            escape_text(&u.name),
            u.role.to_string(),
            escape_text(&collections),
            format_unix((u.token_issued_ms / 1000) as i64),
        ]);
    }
    table.render("")
}

/// `audit [--limit N] [--after SEQ]` and `audit verify [--dir DIR]`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// What to do instead of listing.
    #[command(subcommand)]
    pub action: Option<AuditAction>,
    /// How many entries to list: the last N, or the N after --after.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// List the entries after this seq (oldest first) instead of the last ones.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
}

/// `audit verify`.
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Check the hash chain: exit 0 when intact, else exit 4 naming the first bad entry.
    Verify {
        /// Check the log files in DIR (DATA_DIR/audit) directly instead of asking the daemon
        /// (for a daemon that is stopped, or refuses to start over a damaged log).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `audit`: lists entries, or verifies the chain.
pub fn audit(args: AuditArgs, global: &Global) -> Result<(), CliError> {
    if let Some(AuditAction::Verify { dir }) = args.action {
        return verify(dir, global);
    }
    let path = match args.after {
        Some(after) => format!("/v1/audit?after={after}&limit={}", args.limit),
        None => format!("/v1/audit?limit={}", args.limit),
    };
    let page: Page = global
        .client()?
        .send(Method::GET, &path, None)?
        .check(None)?
        .json()?;
    if global.json {
        return print_json(&page);
    }
    let mut text = audit_table(&page.entries);
    if page.more {
        if let Some(last) = page.entries.last() {
            text.push_str(&format!("more: officesync audit --after {}\n", last.seq));
        }
    }
    print_text(&text)
}

fn audit_table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".to_owned();
    }
    let mut table = Table::new(&["SEQ", "TIME", "KIND", "ACTOR", "WHAT"]);
    for e in entries {
        let mut what = Vec::new();
        if let (Some(c), Some(k)) = (&e.collection, &e.key) {
            what.push(format!("{c}/{k}"));
        } else if let Some(k) = &e.key {
            what.push(k.clone());
        }
        if let Some(v) = &e.version {
            what.push(v.clone());
        }
        if let Some(d) = &e.detail {
            what.push(d.clone());
        }
        table.row(vec![
            e.seq.to_string(),
            format_unix((e.at / 1000) as i64),
            e.kind.as_str().to_owned(),
            escape_text(&e.actor),
            escape_text(&what.join(" ")),
        ]);
    }
    table.render("")
}

fn verify(dir: Option<PathBuf>, global: &Global) -> Result<(), CliError> {
    let summary: VerifySummary = match dir {
        Some(dir) => {
            audit::verify(&dir).map_err(|e| CliError::new(Exit::Failure, e.to_string()))?
        }
        None => global
            .client()?
            .send(Method::GET, "/v1/audit/verify", None)?
            .check(None)?
            .json()?,
    };
    if global.json {
        return print_json(&summary);
    }
    let mut text = format!(
        "audit log intact: {} entries in {} segments; last seq {} hash {}\n",
        summary.entries, summary.segments, summary.last_seq, summary.last_hash
    );
    if let Some(torn) = &summary.torn_tail {
        text.push_str(&format!(
            "note: {} ends in an unfinished entry of {} bytes (a write cut by a crash, never \
             acknowledged)\n",
            torn.file.display(),
            torn.bytes
        ));
    }
    print_text(&text)
}
