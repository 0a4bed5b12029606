//! The province view: the status report each node publishes in `_status` ([`StatusReport`]),
//! and `GET /v1/cluster` ([`ClusterBody`]), every node's state as the asking node sees it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a node publishes about itself in `_status/NODE`, every report interval and at once
/// (at most once a second) when a connection comes up or goes down. Times are the reporting
/// node's clock (Unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The reporting node.
    pub node: String,
    /// The peer it dials first (its way up to the general office); null for the general office.
    #[serde(default)]
    pub parent: Option<String>,
    /// When the report was made, Unix ms (the reporter's clock).
    pub generated_ms: u64,
    /// The reporter's `[status] report_interval_ms`: when to expect the next report.
    pub interval_ms: u64,
    /// The reporter's `[status] unchanged_report_ms`: while its report would say nothing new,
    /// it re-sends it only this often (0 or `interval_ms`: every interval); meanwhile its
    /// parent's word that its link is up stands for it.
    #[serde(default)]
    pub unchanged_ms: u64,
    /// What the reporter runs (`officesyncd 0.1.0`).
    #[serde(default)]
    pub release: String,
    /// Seconds since the reporter's daemon started.
    #[serde(default)]
    pub uptime_secs: u64,
    /// Its store's size on disk, bytes.
    #[serde(default)]
    pub store_bytes: u64,
    /// Its peers (those it dials first), with lag each way and staleness.
    #[serde(default)]
    pub peers: Vec<ReportPeer>,
    /// Versions it refused from its peers since it started (every reason).
    #[serde(default)]
    pub refused_versions: u64,
    /// The last bad input it met (a peer's session closed for it, or a refused version).
    #[serde(default)]
    pub last_bad_input: Option<BadInput>,
    /// An admin relay's summary of the readers below it, per data collection (what the
    /// general office computes tombstone frontiers with); empty for a leaf.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subtree: BTreeMap<String, SubtreeSummary>,
}

/// One collection of [`StatusReport::subtree`]: a lower bound of the vector of every reader
/// it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtreeSummary {
    /// Pointwise minimum of the relay's own vector and the covered readers' (replica id to
    /// counter), origins above the frontier the relay holds only.
    #[serde(default)]
    pub meet: BTreeMap<String, u64>,
    /// Per covered reader (node name), when it was last heard (Unix ms, the relay's clock).
    #[serde(default)]
    pub covers: BTreeMap<String, u64>,
}

/// One peer in a [`StatusReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPeer {
    /// The peer's name.
    pub name: String,
    /// This node dials it (it is in `sync.peers`): a link up, as opposed to an office below.
    #[serde(default)]
    pub dials: bool,
    /// A session is open and the peer was heard from lately.
    pub connected: bool,
    /// Versions the peer lacks from the reporter.
    #[serde(default)]
    pub lag_versions: u64,
    /// Versions the reporter lacks from the peer, as of the last contact.
    #[serde(default)]
    pub behind_versions: u64,
    /// Since when either lag has been above 0 (Unix ms); null when both are 0.
    #[serde(default)]
    pub lagging_since_ms: Option<u64>,
    /// The largest staleness of the reporter's copy of the peer's data over the collections
    /// (ms, as of the report); null before a first catch-up.
    #[serde(default)]
    pub staleness_ms: Option<u64>,
    /// Per collection: lag each way and staleness.
    #[serde(default)]
    pub collections: Vec<ReportCollection>,
}

/// One collection of a [`ReportPeer`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportCollection {
    /// The collection.
    pub collection: String,
    /// Versions of it the peer lacks.
    #[serde(default)]
    pub lag_versions: u64,
    /// Versions of it the reporter lacks.
    #[serde(default)]
    pub behind_versions: u64,
    /// Staleness of the reporter's copy (ms, as of the report).
    #[serde(default)]
    pub staleness_ms: Option<u64>,
}

/// The last bad input a node met.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadInput {
    /// When, Unix ms (the reporter's clock); null when not known.
    #[serde(default)]
    pub at_ms: Option<u64>,
    /// From which peer.
    pub peer: String,
    /// What it was.
    pub what: String,
}

/// The answer to `GET /v1/cluster`: every node whose report this node holds, and itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBody {
    /// The node answering.
    pub node: String,
    /// When the view was made (RFC 3339, the answering node's clock).
    pub generated_at: String,
    /// How many nodes of the whole province are in each state (`fresh`, `behind`,
    /// `refusing`, `silent`), also when `nodes` holds only what is not fresh.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// Nodes in tree order: each node after its parent, children in name order.
    pub nodes: Vec<ClusterNode>,
}

/// The state of a node in the province view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The node.
    pub name: String,
    /// The peer it dials first (its parent in the tree); null for a root.
    pub parent: Option<String>,
    /// Depth in the tree (0 for a root).
    #[serde(default)]
    pub depth: u32,
    /// Its link to its parent is up, as its parent last reported (else as it last reported);
    /// false when it is silent; true for a root.
    pub connected: bool,
    /// When its last report arrived here (RFC 3339, this node's clock); null if none did.
    pub last_report: Option<String>,
    /// How long ago that was, ms.
    #[serde(default)]
    pub last_report_age_ms: Option<u64>,
    /// When the last report was made (RFC 3339, the reporter's clock).
    #[serde(default)]
    pub report_generated_at: Option<String>,
    /// Versions its parent lacks from it plus versions it lacks from its parent, as of its
    /// last report.
    pub lag_versions: u64,
    /// The staleness of its copy of its parent's data (ms, as of its last report); null
    /// before a first catch-up or for a root.
    pub staleness_ms: Option<u64>,
    /// What it runs.
    pub version: String,
    /// No report for longer than three of its report intervals (plus a grace): it may be cut
    /// off or down. Distinct from being behind, which it reports itself.
    pub silent: bool,
    /// `fresh`, `behind`, `silent` or `refusing`.
    pub state: String,
    /// Why it is in that state, in words (`last report 42 s ago`); empty when fresh.
    #[serde(default)]
    pub reason: String,
    /// Seconds its daemon had been up at its last report.
    #[serde(default)]
    pub uptime_secs: u64,
    /// Its store's size, bytes.
    #[serde(default)]
    pub store_bytes: u64,
    /// Versions it refused since it started.
    #[serde(default)]
    pub refused_versions: u64,
    /// The last bad input it met.
    #[serde(default)]
    pub last_bad_input: Option<BadInput>,
    /// Its report interval, ms.
    #[serde(default)]
    pub report_interval_ms: u64,
    /// Its peers as it reported them.
    #[serde(default)]
    pub peers: Vec<ReportPeer>,
}

/// The states of [`ClusterNode::state`], in the order of their severity.
pub const NODE_STATES: [&str; 4] = ["fresh", "behind", "refusing", "silent"];
