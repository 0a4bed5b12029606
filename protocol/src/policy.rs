//! Access policy: who may read and write each collection and which nodes are revoked, parsed
//! from the `_policy` system collection, plus the validation of every `_policy` entry.
//!
//! `_policy` holds one JSON document per key:
//! - `collections/{name}`: `{"read": [...], "write": [...]}` — the rule of collection `name`;
//!   each list holds exact node names or `"*"` (every node).
//! - `default`: the same shape, the rule of every collection without its own entry. Without a
//!   `default` entry every node may read and write every collection (an open cluster).
//! - `revoked/{node}`: `{"serials": ["hex", ...], "reason": "..."}` — `node` is revoked; with
//!   serials only the certificates with those serial numbers are, with none every certificate
//!   carrying that name.
//!
//! Fixed rules on top of the document: only admins (named in `[cluster] admins`) may write
//! `_policy`, and every node may read it; admins may read every collection (they are the relays
//! between offices); every node writes `_nodes` and `_status` (only its own keys, which the
//! receivers check); a revoked node may neither read nor write anything.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frontier::FRONTIER_COLLECTION;
use crate::names::{validate_collection_name, validate_node_name};
use crate::signing::NODES_COLLECTION;
use crate::status::STATUS_COLLECTION;

/// The name of the policy system collection.
pub const POLICY_COLLECTION: &str = "_policy";

/// Largest `_policy` value accepted, in bytes.
pub const MAX_POLICY_VALUE_BYTES: usize = 64 * 1024;

/// Most node names in one `read` or `write` list.
const MAX_LIST: usize = 4096;

/// Why a `_policy` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// The key is not `default`, `collections/{name}` or `revoked/{node}`.
    #[error("invalid _policy key {0:?}: use `default`, `collections/NAME` or `revoked/NODE`")]
    Key(String),
    /// The value is not valid JSON of the shape its key needs.
    #[error("invalid _policy value for {key:?}: {reason}")]
    Value {
        /// The entry's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which nodes may read and write one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionRule {
    /// Nodes that may read (exact names or `*`).
    #[serde(default)]
    pub read: Vec<String>,
    /// Nodes that may write (exact names or `*`).
    #[serde(default)]
    pub write: Vec<String>,
}

impl CollectionRule {
    /// Every node may read and write: the rule when the policy names no default.
    pub fn open() -> Self {
        Self {
            read: vec!["*".to_owned()],
            write: vec!["*".to_owned()],
        }
    }

    fn validate(&self) -> Result<(), String> {
        for list in [&self.read, &self.write] {
            if list.len() > MAX_LIST {
                return Err(format!("more than {MAX_LIST} names in one list"));
            }
            for n in list {
                if n != "*" {
                    validate_node_name(n).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }
}

/// A revoked node: every certificate with its name, or only those with the listed serials.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// Serial numbers (lowercase hex, no separators) of the revoked certificates; empty means
    /// every certificate of the node.
    #[serde(default)]
    pub serials: Vec<String>,
    /// Why, for operators.
    #[serde(default)]
    pub reason: String,
}

impl Revocation {
    fn validate(&self) -> Result<(), String> {
        if self.serials.len() > MAX_LIST {
            return Err(format!("more than {MAX_LIST} serials"));
        }
        for s in &self.serials {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(format!(
                    "serial {s:?} is not 1-64 lowercase hexadecimal digits"
                ));
            }
        }
        if self.reason.len() > 1024 {
            return Err("reason longer than 1024 bytes".to_owned());
        }
        Ok(())
    }
}

/// What a `_policy` key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKey<'a> {
    /// `default`: the rule of unnamed collections.
    Default,
    /// `collections/{name}`: the rule of one collection.
    Collection(&'a str),
    /// `revoked/{node}`: a revoked node.
    Revoked(&'a str),
}

/// Parses a `_policy` key.
pub fn parse_key(key: &str) -> Result<PolicyKey<'_>, PolicyError> {
    let bad = || PolicyError::Key(key.chars().take(128).collect());
    if key == "default" {
        return Ok(PolicyKey::Default);
    }
    if let Some(c) = key.strip_prefix("collections/") {
        validate_collection_name(c).map_err(|_| bad())?;
        if c.starts_with('_') {
            return Err(bad()); // system collections follow the fixed rules
        }
        return Ok(PolicyKey::Collection(c));
    }
    if let Some(n) = key.strip_prefix("revoked/") {
        validate_node_name(n).map_err(|_| bad())?;
        return Ok(PolicyKey::Revoked(n));
    }
    Err(bad())
}

/// One parsed `_policy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyEntry {
    /// The `default` rule.
    Default(CollectionRule),
    /// A collection's rule.
    Collection(String, CollectionRule),
    /// A revoked node.
    Revoked(String, Revocation),
}

/// Parses and validates one `_policy` entry: what the API checks before a write, and what
/// every node checks when it builds its [`Policy`].
pub fn parse_entry(key: &str, value: &[u8]) -> Result<PolicyEntry, PolicyError> {
    let k = parse_key(key)?;
    let err = |reason: String| PolicyError::Value {
        key: key.chars().take(128).collect(),
        reason,
    };
    if value.len() > MAX_POLICY_VALUE_BYTES {
        return Err(err(format!("larger than {MAX_POLICY_VALUE_BYTES} bytes")));
    }
    match k {
        PolicyKey::Default | PolicyKey::Collection(_) => {
            let rule: CollectionRule = serde_json::from_slice(value).map_err(|e| {
                err(format!(
                    "{e} (expected {{\"read\": [\"node\" or \"*\", ...], \"write\": [...]}})"
                ))
            })?;
            rule.validate().map_err(err)?;
            Ok(match k {
                PolicyKey::Collection(c) => PolicyEntry::Collection(c.to_owned(), rule),
                _ => PolicyEntry::Default(rule),
            })
        }
        PolicyKey::Revoked(n) => {
            let r: Revocation = serde_json::from_slice(value).map_err(|e| {
                err(format!(
                    "{e} (expected {{\"serials\": [\"hex\", ...], \"reason\": \"...\"}})"
                ))
            })?;
            r.validate().map_err(err)?;
            Ok(PolicyEntry::Revoked(n.to_owned(), r))
        }
    }
}

/// The access policy in force on a node: the admins from its config plus the `_policy` entries
/// it holds. Cheap to query; rebuilt whenever `_policy` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    admins: BTreeSet<String>,
    default: CollectionRule,
    collections: BTreeMap<String, CollectionRule>,
    revoked: BTreeMap<String, Revocation>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::open(std::iter::empty::<String>())
    }
}

impl Policy {
    /// No `_policy` entries: every node may read and write every collection; only `admins`
    /// may write `_policy`.
    pub fn open<I, S>(admins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            admins: admins.into_iter().map(Into::into).collect(),
            default: CollectionRule::open(),
            collections: BTreeMap::new(),
            revoked: BTreeMap::new(),
        }
    }

    /// The policy of `admins` and the live `_policy` entries `(key, value)` (winners only,
    /// tombstones left out). Entries that fail validation are skipped and returned as errors:
    /// one bad entry never disables the rest.
    pub fn from_entries<'a, I, S>(
        admins: I,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (Self, Vec<PolicyError>)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut p = Self::open(admins);
        let mut errors = Vec::new();
        for (key, value) in entries {
            match parse_entry(key, value) {
                Ok(PolicyEntry::Default(r)) => p.default = r,
                Ok(PolicyEntry::Collection(c, r)) => {
                    p.collections.insert(c, r);
                }
                Ok(PolicyEntry::Revoked(n, r)) => {
                    p.revoked.insert(n, r);
                }
                Err(e) => errors.push(e),
            }
        }
        (p, errors)
    }

    /// The nodes named in `[cluster] admins`.
    pub fn admins(&self) -> &BTreeSet<String> {
        &self.admins
    }

    /// True when `node` is named in `[cluster] admins`.
    pub fn is_admin(&self, node: &str) -> bool {
        self.admins.contains(node)
    }

    /// The rule that applies to `collection` (its own entry or the default).
    pub fn rule(&self, collection: &str) -> &CollectionRule {
        self.collections.get(collection).unwrap_or(&self.default)
    }

    /// The `default` rule.
    pub fn default_rule(&self) -> &CollectionRule {
        &self.default
    }

    /// Every collection with its own rule.
    pub fn collections(&self) -> &BTreeMap<String, CollectionRule> {
        &self.collections
    }

    /// Every revoked node.
    pub fn revoked(&self) -> &BTreeMap<String, Revocation> {
        &self.revoked
    }

    /// True when `node` is revoked: every certificate of it, or the one with `serial` (lowercase
    /// hex) when the revocation lists serials. With serials listed and `serial` unknown
    /// (`None`), the node counts as revoked.
    pub fn is_revoked(&self, node: &str, serial: Option<&str>) -> bool {
        match self.revoked.get(node) {
            None => false,
            Some(r) if r.serials.is_empty() => true,
            Some(r) => serial.is_none_or(|s| r.serials.iter().any(|x| x == s)),
        }
    }

    /// True when every certificate of `node` is revoked (no serials listed): such a node may
    /// neither read nor write, and its versions are refused wherever they come from. A
    /// revocation by serial only refuses those certificates at the handshake, so the office
    /// can go on with a reissued certificate.
    pub fn revoked_name(&self, node: &str) -> bool {
        self.revoked.get(node).is_some_and(|r| r.serials.is_empty())
    }

    /// May `node` read `collection`? Everyone reads `_policy`, `_nodes` and `_frontier`;
    /// admins read everything.
    pub fn may_read(&self, node: &str, collection: &str) -> bool {
        if self.revoked_name(node) {
            return false;
        }
        if collection == POLICY_COLLECTION
            || collection == NODES_COLLECTION
            || collection == FRONTIER_COLLECTION
            || self.is_admin(node)
        {
            return true;
        }
        if crate::names::is_system_collection(collection) {
            return false;
        }
        listed(&self.rule(collection).read, node)
    }

    /// May versions written by `node` (their origin) be accepted in `collection`? Only admins
    /// write `_policy` and `_frontier`; every node writes `_nodes` and `_status` (only its own keys: the
    /// signature check holds it to them); a node revoked by name writes nothing. `_status` is
    /// read by admins only, so reports flow up to the relays and never down to the offices.
    pub fn may_write(&self, node: &str, collection: &str) -> bool {
        if self.revoked_name(node) {
            return false;
        }
        if collection == POLICY_COLLECTION || collection == FRONTIER_COLLECTION {
            return self.is_admin(node);
        }
        if collection == NODES_COLLECTION || collection == STATUS_COLLECTION {
            return true;
        }
        if crate::names::is_system_collection(collection) {
            return false;
        }
        listed(&self.rule(collection).write, node)
    }
}

fn listed(list: &[String], node: &str) -> bool {
    list.iter().any(|n| n == "*" || n == node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[(&str, &str)]) -> Policy {
        let (p, errors) = Policy::from_entries(
            ["general-office"],
            entries.iter().map(|(k, v)| (*k, v.as_bytes())),
        );
        assert!(errors.is_empty(), "{errors:?}");
        p
    }

    #[test]
    fn open_by_default() {
        let p = policy(&[]);
        assert!(p.may_read("hefei", "situation"));
        assert!(p.may_write("hefei", "situation"));
        assert!(p.may_read("hefei", POLICY_COLLECTION));
        assert!(!p.may_write("hefei", POLICY_COLLECTION));
        assert!(p.may_write("general-office", POLICY_COLLECTION));
        assert!(p.may_write("general-office", "_nodes"));
        assert!(p.may_read("hefei", "_nodes"));
        assert!(!p.may_write("general-office", "_other"));
        assert!(
            p.may_read("hefei", FRONTIER_COLLECTION),
            "every reader purges"
        );
        assert!(
            !p.may_write("hefei", FRONTIER_COLLECTION),
            "only admins publish"
        );
        assert!(p.may_write("general-office", FRONTIER_COLLECTION));
        assert!(p.may_write("hefei", STATUS_COLLECTION), "each node reports");
        assert!(
            !p.may_read("hefei", STATUS_COLLECTION),
            "only admins read reports"
        );
        assert!(p.may_read("general-office", STATUS_COLLECTION));
    }

    #[test]
    fn collection_rules_and_default() {
        let p = policy(&[
            ("default", r#"{"read": ["*"], "write": ["general-office"]}"#),
            (
                "collections/secret",
                r#"{"read": ["hefei"], "write": ["hefei"]}"#,
            ),
        ]);
        assert!(p.may_read("beijing", "news"));
        assert!(!p.may_write("beijing", "news"));
        assert!(p.may_write("general-office", "news"));
        assert!(p.may_read("hefei", "secret"));
        assert!(!p.may_read("beijing", "secret"));
        assert!(p.may_read("general-office", "secret"), "admins relay");
        assert!(!p.may_write("general-office", "secret"));
    }

    #[test]
    fn revocation_by_name_and_by_serial() {
        let p = policy(&[
            ("revoked/hefei", r#"{"reason": "laptop stolen"}"#),
            ("revoked/beijing", r#"{"serials": ["0a1b"]}"#),
        ]);
        assert!(p.is_revoked("hefei", Some("ff")));
        assert!(!p.may_read("hefei", "news"));
        assert!(!p.may_write("hefei", "news"));
        assert!(p.is_revoked("beijing", Some("0a1b")));
        assert!(!p.is_revoked("beijing", Some("0a1c")));
        assert!(
            p.may_read("beijing", "news"),
            "a reissued certificate still reads"
        );
        assert!(p.may_write("beijing", "news"), "and writes");
        assert!(!p.is_revoked("shanghai", None));
    }

    #[test]
    fn invalid_entries_are_refused_and_skipped() {
        for (k, v) in [
            ("nonsense", "{}"),
            ("collections/_policy", r#"{"read": ["*"]}"#),
            ("collections/Bad Name", r#"{"read": ["*"]}"#),
            ("collections/ok", "not json"),
            ("collections/ok", r#"{"read": ["*"], "admin": true}"#),
            ("collections/ok", r#"{"read": ["Not A Node"]}"#),
            ("revoked/hefei", r#"{"serials": ["XYZ"]}"#),
            ("revoked/", "{}"),
        ] {
            assert!(parse_entry(k, v.as_bytes()).is_err(), "{k} {v}");
        }
        let (p, errors) = Policy::from_entries(
            Vec::<String>::new(),
            [
                ("collections/a", b"garbage".as_slice()),
                ("collections/b", br#"{"read": [], "write": []}"#.as_slice()),
            ],
        );
        assert_eq!(errors.len(), 1);
        assert!(p.may_read("x", "a"));
        assert!(!p.may_read("x", "b"));
    }
}
