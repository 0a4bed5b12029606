//! Record bodies: the answer to a put or delete, `?all=true` siblings and scan pages.

use serde::{Deserialize, Serialize};

use crate::Hlc;

/// Answer to `PUT` and `DELETE /v1/collections/{c}/records/{key}`: the new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBody {
    /// The version written, `origin:counter`.
    pub version: String,
    /// Its HLC stamp.
    pub hlc: Hlc,
}

/// One sibling in the answer to `?all=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingBody {
    /// The sibling's version, `origin:counter`.
    pub version: String,
    /// Its HLC stamp.
    pub hlc: Hlc,
    /// True for a tombstone.
    pub deleted: bool,
    /// The value; null for a tombstone or a value left out past the budget.
    pub value_base64: Option<String>,
    /// The value's length; null for a tombstone.
    #[serde(default)]
    pub value_bytes: Option<u64>,
    /// True when the value was left out past the budget (fetch it with `?version=`).
    #[serde(default)]
    pub value_omitted: bool,
    /// Who wrote it: `USER@NODE`, or `NODE` for a system write; null for a version from
    /// before authors existed (or relayed by a node of protocol 1).
    #[serde(default)]
    pub author: Option<String>,
}

/// The answer to `GET /v1/collections/{c}/records/{key}?all=true`: every sibling, winner first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingsBody {
    /// The key.
    pub key: String,
    /// Every current sibling, tombstones included, the winner first.
    pub siblings: Vec<SiblingBody>,
    /// True when some value was left out: the values listed would pass `value_budget_bytes`.
    #[serde(default)]
    pub truncated: bool,
    /// Most value bytes one answer carries.
    pub value_budget_bytes: u64,
}

/// One record of a scan page: the key's winner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// The key.
    pub key: String,
    /// The winner's version, `origin:counter`.
    pub version: String,
    /// The winner's HLC stamp.
    pub hlc: Hlc,
    /// How many siblings the key has, tombstones included.
    pub siblings: u64,
    /// The winner's value; null when it is a tombstone.
    pub value_base64: Option<String>,
}

/// The answer to `GET /v1/collections/{c}/records?prefix=&after=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    /// Live records, in key order.
    pub records: Vec<ScanRecord>,
    /// The `after` of the following page; null at the end.
    pub next: Option<String>,
}

/// One key with two or more siblings, in the answer to `GET /v1/collections/{c}/conflicts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictBody {
    /// The key.
    pub key: String,
    /// Every current sibling, tombstones included, the winner first; values are not
    /// included (`value_base64` null, fetch one with `?version=`).
    pub siblings: Vec<SiblingBody>,
}

/// The answer to `GET /v1/collections/{c}/conflicts?prefix=&after=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictsPage {
    /// Keys with two or more siblings, in key order.
    pub conflicts: Vec<ConflictBody>,
    /// The `after` of the following page; null at the end.
    pub next: Option<String>,
}

/// One version in the answer to `?history=N`: a current sibling or a version superseded here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryVersion {
    /// The version, `origin:counter`.
    pub version: String,
    /// Who wrote it: `USER@NODE`, or `NODE` for a system write; null when unknown.
    #[serde(default)]
    pub author: Option<String>,
    /// Its HLC stamp.
    pub hlc: Hlc,
    /// True for a tombstone.
    pub deleted: bool,
    /// True when a later version superseded it (false for a current sibling).
    pub superseded: bool,
    /// The value; null for a tombstone or a value left out past the budget.
    pub value_base64: Option<String>,
    /// The value's length; null for a tombstone.
    #[serde(default)]
    pub value_bytes: Option<u64>,
    /// True when the value was left out past the budget.
    #[serde(default)]
    pub value_omitted: bool,
}

/// The answer to `GET /v1/collections/{c}/records/{key}?history=N`: the versions of the key
/// this node holds, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryBody {
    /// The key.
    pub key: String,
    /// Newest first (highest HLC, ties by origin): current siblings and superseded versions.
    pub versions: Vec<HistoryVersion>,
    /// Superseded versions this node keeps per key (`[storage] history`).
    pub kept_per_key: u64,
    /// History is what this node holds: a version superseded at another office before it
    /// reached this node is in no history here.
    pub note: String,
    /// True when some value was left out: the values listed would pass `value_budget_bytes`.
    #[serde(default)]
    pub truncated: bool,
    /// Most value bytes one answer carries.
    pub value_budget_bytes: u64,
}
