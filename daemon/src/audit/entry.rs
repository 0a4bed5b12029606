//! One audit entry: what a caller records ([`Record`]), what is stored ([`Entry`]), its
//! canonical encoding and its SHA-256 chain hash.

use serde::{Deserialize, Serialize};

/// The format version written in every entry's `v` field.
pub const FORMAT_VERSION: u32 = 1;

/// The `prev` of the very first entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest text field (`actor`, `collection`, `key`, `version`, `detail`) stored as given;
/// longer ones are cut at a character boundary and marked (see [`Record`]).
pub const MAX_FIELD_BYTES: usize = 4096;

/// Hashed before the entry's encoding, so an audit hash is never a valid hash of anything else.
const HASH_DOMAIN: &[u8] = b"officesync-audit-v1\n";

/// What an entry records. Stored as its snake_case name; names this build does not know are
/// kept as [`Kind::Other`] so an older CLI can still verify and list a newer daemon's log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Kind {
    /// A record was written (PUT, or replicated in).
    Write,
    /// A record was deleted.
    Delete,
    /// The node policy (`_policy`) changed.
    Policy,
    /// A staff user was added.
    UserAdd,
    /// A staff user was removed.
    UserRemove,
    /// A staff user was given a new token.
    UserToken,
    /// A request was refused for a missing or wrong token.
    AuthRefused,
    /// Summary of refused authentications the rate limit did not record one by one.
    AuthSuppressed,
    /// An offline bundle was exported (for whom, how many versions).
    BundleExport,
    /// An offline bundle was imported (from whom, what it applied).
    BundleImport,
    /// An offline bundle was refused at import (why); nothing of it was applied.
    BundleRefused,
    /// A backup of the store was taken (by whom, its replica id).
    Backup,
    /// A kind this build does not know (never one of the names above).
    Other(String),
}

impl Kind {
    /// The stored name (`write`, `user_add`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Write => "write",
            Kind::Delete => "delete",
            Kind::Policy => "policy",
            Kind::UserAdd => "user_add",
            Kind::UserRemove => "user_remove",
            Kind::UserToken => "user_token",
            Kind::AuthRefused => "auth_refused",
            Kind::AuthSuppressed => "auth_suppressed",
            Kind::BundleExport => "bundle_export",
            Kind::BundleImport => "bundle_import",
            Kind::Backup => "backup",
            Kind::BundleRefused => "bundle_refused",
            Kind::Other(name) => name,
        }
    }
}

impl From<String> for Kind {
    fn from(name: String) -> Self {
        match name.as_str() {
            "write" => Kind::Write,
            "delete" => Kind::Delete,
            "policy" => Kind::Policy,
            "user_add" => Kind::UserAdd,
            "user_remove" => Kind::UserRemove,
            "user_token" => Kind::UserToken,
            "auth_refused" => Kind::AuthRefused,
            "auth_suppressed" => Kind::AuthSuppressed,
            "bundle_export" => Kind::BundleExport,
            "backup" => Kind::Backup,
            "bundle_import" => Kind::BundleImport,
            "bundle_refused" => Kind::BundleRefused,
            _ => Kind::Other(name),
        }
    }
}

impl From<Kind> for String {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Other(name) => name,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller asks to record; the log adds `seq`, `at`, `prev` and `hash`.
///
/// Text fields longer than [`MAX_FIELD_BYTES`] are cut at a character boundary and end in
/// `…[cut N bytes]`, so a hostile key or address cannot make one entry huge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// What happened.
    pub kind: Kind,
    /// Who did it: `alice@hefei` for a staff user, `office:NAME` for replication, the client
    /// address for a refused authentication.
    pub actor: String,
    /// The collection concerned, if any.
    pub collection: Option<String>,
    /// The record key concerned, if any.
    pub key: Option<String>,
    /// The record version written or deleted, as the caller formats it.
    pub version: Option<String>,
    /// Free text: a role granted, why a request was refused, ...
    pub detail: Option<String>,
}

impl Record {
    /// A record of `kind` by `actor` with no other field set.
    pub fn new(kind: Kind, actor: impl Into<String>) -> Self {
        Record {
            kind,
            actor: actor.into(),
            collection: None,
            key: None,
            version: None,
            detail: None,
        }
    }

    /// Sets the collection.
    pub fn collection(mut self, collection: impl Into<String>) -> Self {
        self.collection = Some(collection.into());
        self
    }

    /// Sets the record key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets the detail text.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// One stored entry, exactly the fields of one line of a segment, in that order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Format version, [`FORMAT_VERSION`].
    pub v: u32,
    /// Position in the chain: 1 for the first entry, one more for each next one.
    pub seq: u64,
    /// When it was appended, Unix milliseconds (as the caller's clock said).
    pub at: u64,
    /// What happened.
    pub kind: Kind,
    /// Who did it.
    pub actor: String,
    /// The collection, or null.
    pub collection: Option<String>,
    /// The record key, or null.
    pub key: Option<String>,
    /// The version, or null.
    pub version: Option<String>,
    /// Free text, or null.
    pub detail: Option<String>,
    /// `hash` of the entry before (across segments), [`GENESIS_HASH`] for seq 1.
    pub prev: String,
    /// Lowercase hex SHA-256 of the domain tag and every field above (see [`Entry::compute_hash`]).
    pub hash: String,
}

/// The hashed part of an entry: every field but `hash`, same names and order.
#[derive(Serialize)]
struct Hashed<'a> {
    v: u32,
    seq: u64,
    at: u64,
    kind: &'a str,
    actor: &'a str,
    collection: &'a Option<String>,
    key: &'a Option<String>,
    version: &'a Option<String>,
    detail: &'a Option<String>,
    prev: &'a str,
}

impl Entry {
    /// The entry for `record` at `seq` and `at`, chained to `prev`, with its hash set.
    pub fn seal(record: Record, seq: u64, at: u64, prev: &str) -> Entry {
        let mut entry = Entry {
            v: FORMAT_VERSION,
            seq,
            at,
            kind: record.kind,
            actor: cap(record.actor),
            collection: record.collection.map(cap),
            key: record.key.map(cap),
            version: record.version.map(cap),
            detail: record.detail.map(cap),
            prev: prev.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// SHA-256 (lowercase hex) of `officesync-audit-v1\n` followed by the compact JSON of every
    /// field except `hash`, in the stored order.
    pub fn compute_hash(&self) -> String {
        let hashed = Hashed {
            v: self.v,
            seq: self.seq,
            at: self.at,
            kind: self.kind.as_str(),
            actor: &self.actor,
            collection: &self.collection,
            key: &self.key,
            version: &self.version,
            detail: &self.detail,
            prev: &self.prev,
        };
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(HASH_DOMAIN);
        // Serialising strings, integers and options into a Vec cannot fail.
        ctx.update(&serde_json::to_vec(&hashed).unwrap_or_default());
        hex(ctx.finish().as_ref())
    }

    /// The canonical line for this entry, without the newline: compact JSON, fields in order.
    pub fn encode(&self) -> String {
        // Serialising strings, integers and options into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `s` unchanged if it fits in [`MAX_FIELD_BYTES`], else cut at a character boundary and marked.
fn cap(s: String) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s;
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut {} bytes]", &s[..end], s.len() - end)
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in [
            Kind::Write,
            Kind::Delete,
            Kind::Policy,
            Kind::UserAdd,
            Kind::UserRemove,
            Kind::UserToken,
            Kind::AuthRefused,
            Kind::AuthSuppressed,
            Kind::BundleExport,
            Kind::Backup,
            Kind::BundleImport,
            Kind::BundleRefused,
            Kind::Other("node_start".into()),
        ] {
            assert_eq!(Kind::from(String::from(kind.clone())), kind);
        }
    }

    #[test]
    fn hash_covers_every_field_and_encoding_is_stable() {
        let record = Record::new(Kind::Write, "alice@hefei")
            .collection("permits")
            .key("k1")
            .version("3@hefei")
            .detail("put");
        let e = Entry::seal(record, 1, 1_700_000_000_000, GENESIS_HASH);
        assert_eq!(e.hash, e.compute_hash());
        assert_eq!(e.hash.len(), 64);
        let back: Entry = serde_json::from_str(&e.encode()).expect("parse");
        assert_eq!(back, e);
        let variants: [fn(&mut Entry); 10] = [
            |e| e.v += 1,
            |e| e.seq += 1,
            |e| e.at += 1,
            |e| e.kind = Kind::Delete,
            |e| e.actor.push('x'),
            |e| e.collection = None,
            |e| e.key = Some("k2".into()),
            |e| e.version = None,
            |e| e.detail = Some(String::new()),
            |e| e.prev = "1".repeat(64),
        ];
        for change in variants {
            let mut other = e.clone();
            change(&mut other);
            assert_ne!(other.compute_hash(), e.hash);
        }
    }

    #[test]
    fn long_fields_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_FIELD_BYTES);
        let e = Entry::seal(Record::new(Kind::Write, long), 1, 0, GENESIS_HASH);
        assert!(e.actor.len() < MAX_FIELD_BYTES + 32);
        assert!(e
            .actor
            .ends_with(&format!("…[cut {} bytes]", MAX_FIELD_BYTES)));
    }
}
