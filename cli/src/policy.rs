//! `officesync policy`: shows and edits the `_policy` system collection (who may read and
//! write each collection, which nodes are revoked) through the local API of an admin node.

use clap::{Args, Subcommand, ValueEnum};
use officesync_api::{ScanPage, WriteBody};
use officesync_protocol::policy::{
    parse_entry, CollectionRule, Policy, Revocation, POLICY_COLLECTION,
};
use serde_json::{json, Value};
use ureq::http::Method;

use crate::exit::{CliError, Exit};
use crate::output::{decode_base64, print_json, print_text, Table};
use crate::records::records_path;
use crate::urlenc::encode_component;
use crate::Global;

/// Access policy: who may read and write each collection, and revoked nodes.
///
/// Changes are written to `_policy` at the node `--api` points at, which must be an admin
/// node (the general office); they replicate to every office like data.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the policy in force at this node.
    Show,
    /// Let NODE read or write COLL (adds NODE to the collection's list).
    Grant(GrantArgs),
    /// Take back a grant of `policy grant` (removes NODE from the collection's list).
    RevokeGrant(GrantArgs),
    /// Set a collection's read and write lists outright.
    Set(SetArgs),
    /// Set the rule of every collection the policy does not name.
    SetDefault(RuleArgs),
    /// Revoke NODE: it is refused at the handshake by every node and its writes are rejected.
    RevokeNode(RevokeNodeArgs),
    /// Lift a revocation made with `revoke-node`.
    UnrevokeNode(NodeArg),
}

/// What a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Right {
    /// Reading: the collection is replicated to the node and readable there.
    Read,
    /// Writing: the node's writes to the collection are accepted everywhere.
    Write,
}

/// Arguments of `grant` and `revoke-grant`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The collection.
    collection: String,
    /// The node (as named in its certificate), or `*` for every node.
    node: String,
    /// `read` or `write`.
    right: Right,
}

/// Comma-separated read and write lists.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Nodes that may read, comma-separated (`*` for every node; empty for none).
    #[arg(long, value_name = "NODES", default_value = "")]
    read: String,
    /// Nodes that may write, comma-separated (`*` for every node; empty for none).
    #[arg(long, value_name = "NODES", default_value = "")]
    write: String,
}

/// Arguments of `set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The collection.
    collection: String,
    #[command(flatten)]
    rule: RuleArgs,
}

/// Arguments of `revoke-node`.
#[derive(Debug, Args)]
pub struct RevokeNodeArgs {
    /// The node to revoke.
    node: String,
    /// Revoke only the certificate with this serial (hex, as `officesync peers` or the
    /// daemon log shows it); repeatable. Without it every certificate of NODE is revoked.
    #[arg(long, value_name = "HEX")]
    serial: Vec<String>,
    /// Why, for other operators.
    #[arg(long, default_value = "")]
    reason: String,
}

/// A node name.
#[derive(Debug, Args)]
pub struct NodeArg {
    /// The node.
    node: String,
}

impl PolicyCommand {
    /// Runs the command against the daemon.
    pub fn run(self, global: &Global) -> Result<(), CliError> {
        match self {
            PolicyCommand::Show => show(global),
            PolicyCommand::Grant(a) => change_grant(a, true, global),
            PolicyCommand::RevokeGrant(a) => change_grant(a, false, global),
            PolicyCommand::Set(a) => {
                let rule = a.rule.rule();
                put_rule(global, &a.collection, &rule)
            }
            PolicyCommand::SetDefault(a) => {
                let rule = a.rule();
                put_entry(
                    global,
                    "default",
                    &serde_json::to_value(&rule).map_err(fail)?,
                )
            }
            PolicyCommand::RevokeNode(a) => {
                let serials = a.serial.iter().map(|s| normalize_serial(s)).collect();
                let r = Revocation {
                    serials,
                    reason: a.reason,
                };
                put_entry(
                    global,
                    &format!("revoked/{}", a.node),
                    &serde_json::to_value(&r).map_err(fail)?,
                )
            }
            PolicyCommand::UnrevokeNode(a) => {
                let key = format!("revoked/{}", a.node);
                let reply = global
                    .client()?
                    .send(Method::DELETE, &entry_path(&key)?, None)?
                    .check(Some(&format!("{} is not revoked", a.node)))?
                    .json()?;
                report(global, &key, reply)
            }
        }
    }
}

impl RuleArgs {
    fn rule(&self) -> CollectionRule {
        CollectionRule {
            read: split(&self.read),
            write: split(&self.write),
        }
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Serials are compared as lowercase hex without separators or leading zeros.
fn normalize_serial(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::failure(e.to_string())
}

fn entry_path(key: &str) -> Result<String, CliError> {
    Ok(format!(
        "{}/{}",
        records_path(POLICY_COLLECTION)?,
        encode_component(key)
    ))
}

/// Every live `_policy` entry at the node, as `(key, value)`.
fn fetch_entries(global: &Global) -> Result<Vec<(String, Vec<u8>)>, CliError> {
    let client = global.client()?;
    let base = records_path(POLICY_COLLECTION)?;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("{base}?limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode_component(a)));
        }
        let page: ScanPage = client.send(Method::GET, &path, None)?.check(None)?.json()?;
        for r in page.records {
            let Some(value) = r.value_base64 else {
                continue;
            };
            out.push((r.key, decode_base64(&value)?));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The policy at the node, as the daemon builds it (invalid entries skipped and reported).
fn fetch_policy(global: &Global) -> Result<Policy, CliError> {
    let entries = fetch_entries(global)?;
    let (policy, errors) = Policy::from_entries(
        Vec::<String>::new(),
        entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
    );
    for e in errors {
        eprintln!("warning: ignoring an invalid entry: {e}");
    }
    Ok(policy)
}

fn show(global: &Global) -> Result<(), CliError> {
    let policy = fetch_policy(global)?;
    if global.json {
        return print_json(&json!({
            "default": policy.default_rule(),
            "collections": policy.collections(),
            "revoked": policy.revoked(),
        }));
    }
    let list = |l: &[String]| {
        if l.is_empty() {
            "(nobody)".to_owned()
        } else {
            l.join(", ")
        }
    };
    let mut t = Table::new(&["COLLECTION", "READ", "WRITE"]);
    for (c, r) in policy.collections() {
        t.row(vec![c.clone(), list(&r.read), list(&r.write)]);
    }
    let d = policy.default_rule();
    t.row(vec![
        "(any other)".to_owned(),
        list(&d.read),
        list(&d.write),
    ]);
    let mut out = t.render("");
    if policy.revoked().is_empty() {
        out.push_str("\nno revoked nodes\n");
    } else {
        let mut r = Table::new(&["REVOKED NODE", "CERTIFICATES", "REASON"]);
        for (n, rev) in policy.revoked() {
            let which = if rev.serials.is_empty() {
                "all".to_owned()
            } else {
                rev.serials.join(", ")
            };
            r.row(vec![n.clone(), which, rev.reason.clone()]);
        }
        out.push('\n');
        out.push_str(&r.render(""));
    }
    out.push_str(
        "\nadmins (from [cluster] admins) always read everything and alone write _policy\n",
    );
    print_text(out.trim_end())
}

fn change_grant(a: GrantArgs, add: bool, global: &Global) -> Result<(), CliError> {
    let policy = fetch_policy(global)?;
    let mut rule = policy.rule(&a.collection).clone();
    let list = match a.right {
        Right::Read => &mut rule.read,
        Right::Write => &mut rule.write,
    };
    if add {
        if !list.iter().any(|n| n == &a.node || n == "*") {
            list.push(a.node.clone());
        }
    } else {
        if a.node != "*" && list.iter().any(|n| n == "*") {
            return Err(CliError::usage(format!(
                "collection {:?} lets every node (*) {}; list the nodes explicitly with \
                 `officesync policy set {} --read ... --write ...`",
                a.collection,
                match a.right {
                    Right::Read => "read",
                    Right::Write => "write",
                },
                a.collection
            )));
        }
        list.retain(|n| n != &a.node);
    }
    put_rule(global, &a.collection, &rule)
}

fn put_rule(global: &Global, collection: &str, rule: &CollectionRule) -> Result<(), CliError> {
    put_entry(
        global,
        &format!("collections/{collection}"),
        &serde_json::to_value(rule).map_err(fail)?,
    )
}

/// Validates and writes one entry; prints what was written.
fn put_entry(global: &Global, key: &str, value: &Value) -> Result<(), CliError> {
    let bytes = serde_json::to_vec(value).map_err(fail)?;
    // The daemon checks it too; checking here names the mistake before any request.
    if let Err(e) = parse_entry(key, &bytes) {
        return Err(CliError::new(Exit::Usage, e.to_string()));
    }
    let ack: WriteBody = global
        .client()?
        .send(Method::PUT, &entry_path(key)?, Some(bytes))?
        .check(None)?
        .json()?;
    if global.json {
        print_json(&json!({"key": key, "value": value, "version": ack.version}))
    } else {
        print_text(&format!("{key} = {} ({})", value, ack.version))
    }
}

fn report(global: &Global, key: &str, ack: WriteBody) -> Result<(), CliError> {
    if global.json {
        print_json(&json!({"key": key, "deleted": true, "version": ack.version}))
    } else {
        print_text(&format!("{key} removed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_protocol::policy::PolicyEntry;

    #[test]
    fn serials_are_normalized() {
        assert_eq!(normalize_serial("00:1A:2b"), "1a2b");
        assert_eq!(normalize_serial("0"), "0");
    }

    #[test]
    fn lists_split_on_commas() {
        assert_eq!(split(" a, b,,*"), vec!["a", "b", "*"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn entries_the_cli_builds_validate() {
        let rule = RuleArgs {
            read: "*".into(),
            write: "hefei,general-office".into(),
        }
        .rule();
        let bytes = serde_json::to_vec(&rule).expect("serializes");
        assert!(matches!(
            parse_entry("collections/situation", &bytes),
            Ok(PolicyEntry::Collection(..))
        ));
    }
}
