//! Node configuration (TOML): parsing, defaults and validation.
//!
//! The file format is the one of `deploy/officesync.example.toml`. Unknown keys are
//! errors; every [`ConfigError`] renders as one line naming the file, the key
//! and the fix, so `officesyncd` can print it and exit.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use officesync_protocol::names::validate_node_name;
use serde::Deserialize;
use thiserror::Error;

use crate::pki::{self, PkiError};
use crate::storage_key::{KeyFileError, StorageKey};

pub mod access;
pub mod bandwidth;
pub mod search;

use access::{Access, Account, Need};
pub use search::SearchConfig;

/// Default QUIC (UDP) listen port for replication.
pub const DEFAULT_SYNC_PORT: u16 = 7400;
/// Default TCP port of the local HTTP API.
pub const DEFAULT_API_PORT: u16 = 7480;
/// Default `sync.listen`: every interface, port 7400.
pub const DEFAULT_SYNC_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_SYNC_PORT);
/// Default `api.listen`: loopback only, port 7480.
pub const DEFAULT_API_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_API_PORT);
/// Default `sync.max_clock_skew_ms` (5 minutes).
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 300_000;
/// Smallest accepted `sync.max_clock_skew_ms`.
pub const MIN_MAX_CLOCK_SKEW_MS: u64 = 1_000;
/// Default `sync.heartbeat_interval_ms`.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// Accepted range of `sync.heartbeat_interval_ms`.
pub const HEARTBEAT_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=600_000;
/// Default `storage.flush_interval_ms`.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 100;
/// Accepted range of `storage.flush_interval_ms` with periodic durability.
pub const FLUSH_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 1..=60_000;
/// Default `storage.max_value_bytes` (4 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Largest accepted `storage.max_value_bytes` (6 MiB): a version of that size, with its
/// longest key and context, still fits one replication frame (`wire::MAX_FRAME_BYTES`, 8 MiB).
pub const MAX_VALUE_BYTES_LIMIT: usize = 6 * 1024 * 1024;
/// Default `storage.history`: superseded versions kept per key.
pub const DEFAULT_HISTORY: usize = 10;
/// Largest accepted `storage.history`.
pub const MAX_HISTORY: usize = 100;
/// Default `storage.purge_interval_ms`: how often frontiers are computed and applied.
pub const DEFAULT_PURGE_INTERVAL_MS: u64 = 60_000;
/// Accepted range of `storage.purge_interval_ms`.
pub const PURGE_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=86_400_000;
/// Accepted range of `storage.tombstone_ttl_ms` (1 s to a year).
pub const TOMBSTONE_TTL_RANGE_MS: std::ops::RangeInclusive<u64> = 1_000..=31_536_000_000;
/// Default `api.max_feeds`: change feeds (`/changes` event streams) open at once.
pub const DEFAULT_MAX_FEEDS: usize = 1000;
/// Accepted range of `api.max_feeds`.
pub const MAX_FEEDS_RANGE: std::ops::RangeInclusive<usize> = 1..=100_000;
/// Default `api.feed_cutoff_ms`: how long a change feed's client may take no event while
/// changes wait before it is cut off.
pub const DEFAULT_FEED_CUTOFF_MS: u64 = 30_000;
/// Accepted range of `api.feed_cutoff_ms`.
pub const FEED_CUTOFF_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// The whole node configuration, one TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: who this node is and where it keeps its data.
    pub node: NodeConfig,
    /// `[sync]`: replication listener and the peers this node dials.
    #[serde(default)]
    pub sync: SyncConfig,
    /// `[tls]`: the node's certificate bundle.
    pub tls: TlsConfig,
    /// `[api]`: the local HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[storage]`: durability and limits of the local store.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[cluster]`: deployment-wide settings every node must agree on.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// `[status]`: the status report this node publishes for the province view.
    #[serde(default)]
    pub status: StatusConfig,
    /// `[indexes]`: per collection, the JSON pointers of its records' values that get a
    /// secondary index (`situation = ["/river", "/level_m"]`) for `where` queries.
    #[serde(default)]
    pub indexes: std::collections::BTreeMap<String, Vec<String>>,
    /// `[search]`: the collections kept in a full-text index.
    #[serde(default)]
    pub search: SearchConfig,
    /// The file this config was read from, used in error messages (empty when
    /// built in code). Not part of the TOML.
    #[serde(skip)]
    pub origin: PathBuf,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name; must equal the name in the node certificate.
    pub name: String,
    /// Directory of the sled store (relative paths are taken from the config file's directory).
    pub data_dir: PathBuf,
}

/// `[sync]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// QUIC (UDP) listen address.
    pub listen: SocketAddr,
    /// Peers this node dials (it accepts any peer with a valid certificate).
    pub peers: Vec<PeerConfig>,
    /// HLC timestamps further ahead of the local clock than this are rejected.
    pub max_clock_skew_ms: u64,
    /// Interval between heartbeats on an idle session.
    pub heartbeat_interval_ms: u64,
    /// Take versions that carry no origin signature (written under release 0.1.0, or
    /// received from a node of 0.1.0) instead of refusing them; signed ones are verified all
    /// the same. For a cluster upgrading from 0.1.0 only.
    pub accept_unsigned: bool,
    /// `[[sync.limit]]`: bandwidth limits of the bulk data sent to peers, each in force in a
    /// local-time window; for each peer the first entry in force wins.
    pub limit: Vec<bandwidth::LimitConfig>,
    /// Collections whose versions bypass the limits and overtake bulk catch-up
    /// (`["_policy", "alerts"]`).
    pub urgent: Vec<String>,
}

impl SyncConfig {
    /// The parsed `[[sync.limit]]` entries (checked by [`Config::validate_syntax`]; an entry
    /// that does not parse is dropped here).
    pub fn schedule(&self) -> bandwidth::Schedule {
        bandwidth::schedule(&self.limit).unwrap_or_default()
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            listen: DEFAULT_SYNC_LISTEN,
            peers: Vec::new(),
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            accept_unsigned: false,
            limit: Vec::new(),
            urgent: Vec::new(),
        }
    }
}

/// One entry of `sync.peers`: a node this node dials.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Expected node name (checked against the peer's certificate).
    pub name: String,
    /// `host:port` to dial; the host may be a DNS name or an IP (IPv6 in brackets).
    pub addr: String,
}

/// `[tls]`: paths of the bundle written by `officesync ca issue`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (`ca.pem`).
    pub ca: PathBuf,
    /// Node certificate (`node.pem`).
    pub cert: PathBuf,
    /// Node private key (`node.key`).
    pub key: PathBuf,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP listen address of the HTTP API.
    pub listen: SocketAddr,
    /// Who may use the API: staff tokens (the default), or anyone who reaches it.
    pub auth: AuthMode,
    /// Change feeds (`GET /v1/collections/{c}/changes` as an event stream) open at once; one
    /// more is refused with 503.
    pub max_feeds: usize,
    /// A change feed whose client takes no event for this long while changes wait is too
    /// slow to keep up: it ends with a `cutoff` event naming where to resume.
    pub feed_cutoff_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: DEFAULT_API_LISTEN,
            auth: AuthMode::Token,
            max_feeds: DEFAULT_MAX_FEEDS,
            feed_cutoff_ms: DEFAULT_FEED_CUTOFF_MS,
        }
    }
}

/// The file, in the data dir, where the daemon writes the first admin token at first start
/// (`auth = "token"`).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The admin token the daemon wrote in `data_dir` at first start, trimmed; an error when the
/// file is missing, unreadable by this user, or empty.
pub fn read_admin_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path)?;
    match text.trim() {
        "" => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        )),
        token => Ok(token.to_owned()),
    }
}

/// `api.auth`: how API requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request but `/health` and `/ready` carries a user's token (DESIGN.md, "Staff
    /// access").
    Token,
    /// No authentication: anyone who reaches the API is an admin. For a demo or a loopback
    /// test only; the daemon warns while it serves so.
    None,
}

impl AuthMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::None => "none",
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// When a write is flushed to disk relative to its acknowledgement.
    pub durability: Durability,
    /// Flush interval with [`Durability::Periodic`].
    pub flush_interval_ms: u64,
    /// Largest accepted record value, in bytes.
    pub max_value_bytes: usize,
    /// The storage key (`officesync storage-key --out FILE`) that encrypts every value of the
    /// store at rest; unset: values are stored in clear. Keys (collection names, record keys)
    /// stay readable either way.
    pub encryption_key_file: Option<PathBuf>,
    /// Earlier storage keys: values they sealed are still read, new ones are sealed with
    /// `encryption_key_file`; `officesyncd --rekey` re-seals the old ones so these can go.
    pub previous_encryption_key_files: Vec<PathBuf>,
    /// Superseded versions this node keeps per key (tombstones included), for
    /// `?history=N`; 0 keeps none.
    pub history: usize,
    /// Tombstone collection (on the general office): a reader not heard from for this long
    /// is left out of the stable frontier and must rejoin when it returns. Unset (the
    /// default): this node publishes no frontier, so no tombstone is ever purged. Every node
    /// applies the frontiers it receives whatever this says.
    pub tombstone_ttl_ms: Option<u64>,
    /// How often the frontier is computed (publisher) and applied (every node).
    pub purge_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Sync,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            encryption_key_file: None,
            previous_encryption_key_files: Vec::new(),
            history: DEFAULT_HISTORY,
            tombstone_ttl_ms: None,
            purge_interval_ms: DEFAULT_PURGE_INTERVAL_MS,
        }
    }
}

/// `storage.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Flush to disk before acknowledging each write (`"sync"`, the default).
    #[default]
    Sync,
    /// Flush at most once every `flush_interval_ms` (at once after a quiet interval); a crash
    /// may lose acknowledged writes of the last interval (`"periodic"`).
    Periodic,
}

impl Durability {
    /// The TOML spelling: `"sync"` or `"periodic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Periodic => "periodic",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Admin nodes: may write `_policy` and relay versions of other origins.
    pub admins: Vec<String>,
}

/// Default `status.report_interval_ms`.
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 10_000;
/// Accepted range of `status.report_interval_ms`.
pub const REPORT_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 200..=3_600_000;

/// Default `status.unchanged_report_ms`.
pub const DEFAULT_UNCHANGED_REPORT_MS: u64 = 60_000;
/// Longest accepted `status.unchanged_report_ms`.
pub const MAX_UNCHANGED_REPORT_MS: u64 = 3_600_000;

/// `[status]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// How often this node publishes its status report in `_status` (it also publishes at
    /// once, at most once a second, when a connection comes up or goes down). An admin shows
    /// a node as silent after three of its intervals without a report.
    pub report_interval_ms: u64,
    /// While its report would say nothing new (same peers, links, lags, bad input), the node
    /// re-sends it only this often; its parent's word that the link is up stands for it in
    /// between. At most `report_interval_ms`: a report every interval.
    pub unchanged_report_ms: u64,
}

impl StatusConfig {
    /// The longest gap between two reports while nothing changes (never below the interval).
    pub fn unchanged_ms(&self) -> u64 {
        self.unchanged_report_ms.max(self.report_interval_ms)
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            report_interval_ms: DEFAULT_REPORT_INTERVAL_MS,
            unchanged_report_ms: DEFAULT_UNCHANGED_REPORT_MS,
        }
    }
}

/// Most JSON pointers indexed in one collection (`[indexes]`).
pub const MAX_INDEXES_PER_COLLECTION: usize = 16;
/// Longest JSON pointer an index may be declared on, in bytes.
pub const MAX_INDEX_POINTER_BYTES: usize = 255;

/// Why a config was refused. `Display` is always one line: file, key and fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config {}: cannot read it: {source} (fix: check the --config path and that the file is readable)", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not TOML, or its structure does not match (unknown key,
    /// missing key, wrong type or value).
    #[error("config {} line {line}: {message} (fix: {fix})", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// Dotted key of the problem, when it could be determined.
        key: Option<String>,
        /// What is wrong (one line).
        message: String,
        /// How to fix it (one line).
        fix: String,
    },
    /// A value is out of range, inconsistent, or names unusable TLS files.
    #[error("config {}: {message} (fix: {fix})", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted key of the offending value, like `storage.durability`.
        key: String,
        /// What is wrong (one line, names the key).
        message: String,
        /// How to fix it (one line).
        fix: String,
    },
}

impl ConfigError {
    /// Dotted key the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

impl Config {
    /// Reads, parses and fully validates a config file, TLS bundle included.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::load_offline(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a config file and checks its values, without touching
    /// the TLS files (see [`Config::validate_syntax`]).
    pub fn load_offline(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses TOML `text` read from `origin` and checks its values without
    /// touching the filesystem ([`Config::validate_syntax`]).
    ///
    /// Relative `node.data_dir` and `tls.*` paths are resolved against the
    /// directory of `origin`.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(origin, text, &e))?;
        config.origin = origin.to_owned();
        if let Some(base) = origin.parent().filter(|p| !p.as_os_str().is_empty()) {
            let storage = &mut config.storage;
            let key_files = storage
                .encryption_key_file
                .iter_mut()
                .chain(storage.previous_encryption_key_files.iter_mut());
            for path in [
                &mut config.node.data_dir,
                &mut config.tls.ca,
                &mut config.tls.cert,
                &mut config.tls.key,
            ]
            .into_iter()
            .chain(key_files)
            {
                if path.is_relative() && !path.as_os_str().is_empty() {
                    *path = base.join(&*path);
                }
            }
        }
        config.validate_syntax()?;
        Ok(config)
    }

    /// Every check: [`Config::validate_syntax`], then the TLS bundle at the current time and
    /// the storage key files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_syntax()?;
        self.validate_files(pki::unix_now())?;
        self.validate_key_files().map(|_| ())
    }

    /// Checks values alone, without the filesystem: names, peer addresses,
    /// admins and numeric ranges.
    pub fn validate_syntax(&self) -> Result<(), ConfigError> {
        self.validate_node()?;
        self.validate_peers()?;
        self.validate_sync_ranges()?;
        self.validate_bandwidth()?;
        self.validate_storage()?;
        self.validate_indexes()?;
        self.validate_admins()?;
        self.validate_search()
    }

    /// `[search]`: collection names, JSON pointers, and consent to a plaintext index beside
    /// an encrypted store.
    fn validate_search(&self) -> Result<(), ConfigError> {
        let encrypted = self.storage.encryption_key_file.is_some();
        self.search
            .validate(encrypted)
            .map_err(|p| self.invalid(&p.key, p.message, &p.fix))
    }

    /// `[indexes]`: valid collection names, each with at most
    /// [`MAX_INDEXES_PER_COLLECTION`] distinct JSON pointers a `where` expression can name.
    fn validate_indexes(&self) -> Result<(), ConfigError> {
        use officesync_protocol::query::Pointer;
        let fix = "write collection = [\"/field\", \"/nested/field\"], JSON pointers as in where expressions";
        for (coll, pointers) in &self.indexes {
            let key = format!("indexes.{coll}");
            if let Err(e) = officesync_protocol::names::validate_collection_name(coll) {
                return Err(self.invalid(&key, format!("{key}: {e}"), fix));
            }
            if pointers.len() > MAX_INDEXES_PER_COLLECTION {
                return Err(self.invalid(
                    &key,
                    format!("{key} lists {} pointers", pointers.len()),
                    &format!("index at most {MAX_INDEXES_PER_COLLECTION} fields of a collection"),
                ));
            }
            let mut seen = Vec::new();
            for text in pointers {
                let parsed = match Pointer::parse(text) {
                    Ok(p) if text.len() <= MAX_INDEX_POINTER_BYTES => p,
                    Ok(_) => {
                        return Err(self.invalid(
                            &key,
                            format!("{key}: pointer {text:?} is longer than {MAX_INDEX_POINTER_BYTES} bytes"),
                            fix,
                        ))
                    }
                    Err(e) => {
                        return Err(self.invalid(
                            &key,
                            format!("{key}: {text:?} is not a JSON pointer a where expression can name ({e})"),
                            fix,
                        ))
                    }
                };
                if seen.contains(&parsed) {
                    return Err(self.invalid(
                        &key,
                        format!("{key}: {text:?} is listed twice"),
                        "list each pointer once",
                    ));
                }
                seen.push(parsed);
            }
        }
        Ok(())
    }

    /// `[node]`: a valid name and a data dir.
    fn validate_node(&self) -> Result<(), ConfigError> {
        if validate_node_name(&self.node.name).is_err() {
            return Err(self.invalid(
                "node.name",
                format!(
                    "node.name = {:?} is invalid: {NODE_NAME_RULE}",
                    self.node.name
                ),
                "set it to this office's name as written in its certificate, e.g. \"hefei\"",
            ));
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(self.invalid(
                "node.data_dir",
                "node.data_dir is empty".to_owned(),
                "set it to a directory for the store, e.g. \"/var/lib/officesync\"",
            ));
        }
        Ok(())
    }

    /// `sync.peers`: valid, distinct names other than this node's, and host:port addresses.
    fn validate_peers(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, peer) in self.sync.peers.iter().enumerate() {
            let key = format!("sync.peers[{i}].name");
            if validate_node_name(&peer.name).is_err() {
                return Err(self.invalid(
                    &key,
                    format!("{key} = {:?} is invalid: {NODE_NAME_RULE}", peer.name),
                    "use the peer's name as written in its certificate, e.g. \"general-office\"",
                ));
            }
            if peer.name == self.node.name {
                return Err(self.invalid(
                    &key,
                    format!("{key} = {:?} is this node itself", peer.name),
                    "remove this node from its own peers",
                ));
            }
            if !seen.insert(peer.name.as_str()) {
                return Err(self.invalid(
                    &key,
                    format!("{key} = {:?} is listed twice in sync.peers", peer.name),
                    "keep one entry per peer",
                ));
            }
            if let Err(problem) = check_host_port(&peer.addr) {
                let key = format!("sync.peers[{i}].addr");
                return Err(self.invalid(
                    &key,
                    format!("{key} = {:?} is invalid: {problem}", peer.addr),
                    "use host:port, e.g. \"gov.example.cn:7400\" or \"[2001:db8::1]:7400\"",
                ));
            }
        }
        Ok(())
    }

    /// `[sync]` numbers: the clock skew bound and the heartbeat interval; and the status
    /// report interval.
    fn validate_sync_ranges(&self) -> Result<(), ConfigError> {
        if self.sync.max_clock_skew_ms < MIN_MAX_CLOCK_SKEW_MS {
            return Err(self.invalid(
                "sync.max_clock_skew_ms",
                format!(
                    "sync.max_clock_skew_ms = {} is too small",
                    self.sync.max_clock_skew_ms
                ),
                &format!(
                    "use at least {MIN_MAX_CLOCK_SKEW_MS} (default {DEFAULT_MAX_CLOCK_SKEW_MS})"
                ),
            ));
        }
        if !REPORT_INTERVAL_RANGE_MS.contains(&self.status.report_interval_ms) {
            return Err(self.invalid(
                "status.report_interval_ms",
                format!(
                    "status.report_interval_ms = {} is out of range",
                    self.status.report_interval_ms
                ),
                &format!(
                    "use {}..={} (default {DEFAULT_REPORT_INTERVAL_MS})",
                    REPORT_INTERVAL_RANGE_MS.start(),
                    REPORT_INTERVAL_RANGE_MS.end()
                ),
            ));
        }
        if self.status.unchanged_report_ms > MAX_UNCHANGED_REPORT_MS {
            return Err(self.invalid(
                "status.unchanged_report_ms",
                format!(
                    "status.unchanged_report_ms = {} is out of range",
                    self.status.unchanged_report_ms
                ),
                &format!(
                    "use at most {MAX_UNCHANGED_REPORT_MS} (default {DEFAULT_UNCHANGED_REPORT_MS}; \
                     at most report_interval_ms for a report every interval)"
                ),
            ));
        }
        if !HEARTBEAT_INTERVAL_RANGE_MS.contains(&self.sync.heartbeat_interval_ms) {
            return Err(self.invalid(
                "sync.heartbeat_interval_ms",
                format!(
                    "sync.heartbeat_interval_ms = {} is out of range",
                    self.sync.heartbeat_interval_ms
                ),
                &format!(
                    "use {}..={} (default {DEFAULT_HEARTBEAT_INTERVAL_MS})",
                    HEARTBEAT_INTERVAL_RANGE_MS.start(),
                    HEARTBEAT_INTERVAL_RANGE_MS.end()
                ),
            ));
        }
        Ok(())
    }

    /// `[[sync.limit]]` rates, windows and peers, and `sync.urgent` collections.
    fn validate_bandwidth(&self) -> Result<(), ConfigError> {
        bandwidth::schedule(&self.sync.limit)
            .map(|_| ())
            .and_then(|()| bandwidth::check_urgent(&self.sync.urgent))
            .map_err(|p| self.invalid(&p.key, p.message, &p.fix))
    }

    /// `[storage]` numbers: the flush interval (periodic durability) and the value limit.
    fn validate_storage(&self) -> Result<(), ConfigError> {
        if self.storage.durability == Durability::Periodic
            && !FLUSH_INTERVAL_RANGE_MS.contains(&self.storage.flush_interval_ms)
        {
            return Err(self.invalid(
                "storage.flush_interval_ms",
                format!(
                    "storage.flush_interval_ms = {} is out of range for durability \"periodic\"",
                    self.storage.flush_interval_ms
                ),
                &format!(
                    "use {}..={} (default {DEFAULT_FLUSH_INTERVAL_MS}) or durability = \"sync\"",
                    FLUSH_INTERVAL_RANGE_MS.start(),
                    FLUSH_INTERVAL_RANGE_MS.end()
                ),
            ));
        }
        if !(1..=MAX_VALUE_BYTES_LIMIT).contains(&self.storage.max_value_bytes) {
            return Err(self.invalid(
                "storage.max_value_bytes",
                format!(
                    "storage.max_value_bytes = {} is out of range",
                    self.storage.max_value_bytes
                ),
                &format!(
                    "use 1..={MAX_VALUE_BYTES_LIMIT} (6 MiB, so a value fits one replication frame; default {DEFAULT_MAX_VALUE_BYTES})"
                ),
            ));
        }
        if self.storage.history > MAX_HISTORY {
            return Err(self.invalid(
                "storage.history",
                format!(
                    "storage.history = {} is out of range",
                    self.storage.history
                ),
                &format!(
                    "use 0..={MAX_HISTORY} superseded versions kept per key (default {DEFAULT_HISTORY}; 0 keeps none)"
                ),
            ));
        }
        if !PURGE_INTERVAL_RANGE_MS.contains(&self.storage.purge_interval_ms) {
            return Err(self.invalid(
                "storage.purge_interval_ms",
                format!(
                    "storage.purge_interval_ms = {} is out of range",
                    self.storage.purge_interval_ms
                ),
                &format!(
                    "use {}..={} (default {DEFAULT_PURGE_INTERVAL_MS})",
                    PURGE_INTERVAL_RANGE_MS.start(),
                    PURGE_INTERVAL_RANGE_MS.end()
                ),
            ));
        }
        if let Some(ttl) = self.storage.tombstone_ttl_ms {
            if !TOMBSTONE_TTL_RANGE_MS.contains(&ttl) {
                return Err(self.invalid(
                    "storage.tombstone_ttl_ms",
                    format!("storage.tombstone_ttl_ms = {ttl} is out of range"),
                    &format!(
                        "use {}..={} ms (e.g. 604800000, a week), or leave it unset to keep \
                         tombstones",
                        TOMBSTONE_TTL_RANGE_MS.start(),
                        TOMBSTONE_TTL_RANGE_MS.end()
                    ),
                ));
            }
        }
        if !MAX_FEEDS_RANGE.contains(&self.api.max_feeds) {
            return Err(self.invalid(
                "api.max_feeds",
                format!("api.max_feeds = {} is out of range", self.api.max_feeds),
                &format!(
                    "use {}..={} change feeds open at once (default {DEFAULT_MAX_FEEDS})",
                    MAX_FEEDS_RANGE.start(),
                    MAX_FEEDS_RANGE.end()
                ),
            ));
        }
        if !FEED_CUTOFF_RANGE_MS.contains(&self.api.feed_cutoff_ms) {
            return Err(self.invalid(
                "api.feed_cutoff_ms",
                format!(
                    "api.feed_cutoff_ms = {} is out of range",
                    self.api.feed_cutoff_ms
                ),
                &format!(
                    "use {}..={} ms (default {DEFAULT_FEED_CUTOFF_MS})",
                    FEED_CUTOFF_RANGE_MS.start(),
                    FEED_CUTOFF_RANGE_MS.end()
                ),
            ));
        }
        self.validate_key_paths()
    }

    /// `storage.encryption_key_file` and `storage.previous_encryption_key_files`: non-empty
    /// paths, outside the data dir, each listed once, previous keys only beside a current one.
    fn validate_key_paths(&self) -> Result<(), ConfigError> {
        let storage = &self.storage;
        if storage.encryption_key_file.is_none() {
            if storage.previous_encryption_key_files.is_empty() {
                return Ok(());
            }
            return Err(self.invalid(
                "storage.previous_encryption_key_files",
                "storage.previous_encryption_key_files is set but storage.encryption_key_file \
                 is not"
                    .to_owned(),
                "set storage.encryption_key_file to the current key (previous keys are only read \
                 while `officesyncd --rekey` re-seals their values with it)",
            ));
        }
        let mut seen: Vec<&Path> = Vec::new();
        for (key, path) in self.key_files() {
            if path.as_os_str().is_empty() {
                return Err(self.invalid(
                    &key,
                    format!("{key} is empty"),
                    &format!(
                        "set it to a key file made by `officesync storage-key --out FILE`, e.g. {}",
                        example(&key)
                    ),
                ));
            }
            if path.starts_with(&self.node.data_dir) {
                return Err(self.invalid(
                    &key,
                    format!(
                        "{key} {} is inside node.data_dir {}",
                        path.display(),
                        self.node.data_dir.display()
                    ),
                    "keep the key outside the data dir (and out of its backups), e.g. \
                     /etc/officesync/storage.key: whoever copies the data dir must not get the key \
                     with it",
                ));
            }
            if seen.contains(&path) {
                return Err(self.invalid(
                    &key,
                    format!("{key} {} is listed twice", path.display()),
                    "list each key file once (the current key is not also a previous one)",
                ));
            }
            seen.push(path);
        }
        Ok(())
    }

    /// The configured storage key files with their config keys: the current one first.
    fn key_files(&self) -> Vec<(String, &Path)> {
        let storage = &self.storage;
        let current = storage
            .encryption_key_file
            .iter()
            .map(|p| ("storage.encryption_key_file".to_owned(), p.as_path()));
        let previous = storage
            .previous_encryption_key_files
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("storage.previous_encryption_key_files[{i}]"),
                    p.as_path(),
                )
            });
        current.chain(previous).collect()
    }

    /// Reads every configured storage key file (current first): each must hold a key, be
    /// readable by this process and closed to other users, and hold a key of its own.
    pub fn validate_key_files(&self) -> Result<Vec<StorageKey>, ConfigError> {
        let mut keys: Vec<(String, StorageKey)> = Vec::new();
        for (key, path) in self.key_files() {
            let read = StorageKey::read(path).map_err(|e| match &e {
                KeyFileError::Read { source, .. }
                    if source.kind() == io::ErrorKind::PermissionDenied =>
                {
                    self.unreadable(&key, path, &e)
                }
                _ => self.invalid(&key, format!("{key}: {e}"), &e.fix(&key)),
            })?;
            if let Some((other, _)) = keys.iter().find(|(_, k)| k.id() == read.id()) {
                return Err(self.invalid(
                    &key,
                    format!(
                        "{key} {} holds the same key as {other} (key id {})",
                        path.display(),
                        read.id()
                    ),
                    "list each key once; a new key comes from `officesync storage-key --out FILE`",
                ));
            }
            keys.push((key, read));
        }
        Ok(keys.into_iter().map(|(_, k)| k).collect())
    }

    /// `cluster.admins`: valid node names.
    fn validate_admins(&self) -> Result<(), ConfigError> {
        for (i, admin) in self.cluster.admins.iter().enumerate() {
            if validate_node_name(admin).is_err() {
                let key = format!("cluster.admins[{i}]");
                return Err(self.invalid(
                    &key,
                    format!("{key} = {admin:?} is invalid: {NODE_NAME_RULE}"),
                    "list admin nodes by their certificate names, e.g. \"general-office\"",
                ));
            }
        }
        Ok(())
    }

    /// Checks the TLS bundle at `now_unix` (unix seconds): the three files are
    /// readable, `tls.cert` chains to `tls.ca` and is valid now, names
    /// `node.name`, and `tls.key` is its key.
    pub fn validate_files(&self, now_unix: i64) -> Result<(), ConfigError> {
        let tls = &self.tls;
        let ca_pem = self.read_tls("tls.ca", &tls.ca, "the CA certificate (ca.pem)")?;
        let cert_pem =
            self.read_tls("tls.cert", &tls.cert, "this node's certificate (node.pem)")?;
        let key_pem = self.read_tls("tls.key", &tls.key, "this node's private key (node.key)")?;
        let name = &self.node.name;
        let reissue = format!(
            "issue a bundle for {name} with `officesync ca issue {name}` and point [tls] at it"
        );

        pki::ca_fingerprint(&ca_pem).map_err(|e| {
            self.invalid(
                "tls.ca",
                format!("tls.ca {}: {e}", tls.ca.display()),
                "point tls.ca at the ca.pem of this node's bundle",
            )
        })?;
        let identity = pki::read_identity(&cert_pem).map_err(|e| {
            self.invalid(
                "tls.cert",
                format!("tls.cert {}: {e}", tls.cert.display()),
                &reissue,
            )
        })?;
        match pki::verify_chain(&cert_pem, &ca_pem, now_unix) {
            Ok(()) => {}
            Err(e @ PkiError::NotValidNow { .. }) => {
                return Err(self.invalid(
                    "tls.cert",
                    format!("tls.cert {}: {e}", tls.cert.display()),
                    &format!("check this machine's clock, or {reissue}"),
                ))
            }
            Err(e) => {
                return Err(self.invalid(
                    "tls.cert",
                    format!(
                        "tls.cert {} does not chain to tls.ca {}: {e}",
                        tls.cert.display(),
                        tls.ca.display()
                    ),
                    "use the ca.pem and node.pem from the same bundle",
                ))
            }
        }
        if identity.name != *name {
            return Err(self.invalid(
                "tls.cert",
                format!(
                    "tls.cert names {:?} but node.name is {name:?}",
                    identity.name
                ),
                &format!(
                    "issue a bundle for {name} with `officesync ca issue {name}` or correct node.name"
                ),
            ));
        }
        let matches = pki::key_matches_cert(&key_pem, &cert_pem).map_err(|e| {
            self.invalid(
                "tls.key",
                format!("tls.key {}: {e}", tls.key.display()),
                "point tls.key at the node.key of this node's bundle",
            )
        })?;
        if !matches {
            return Err(self.invalid(
                "tls.key",
                format!(
                    "tls.key {} is not the key of tls.cert {}",
                    tls.key.display(),
                    tls.cert.display()
                ),
                "use the node.key and node.pem from the same bundle",
            ));
        }
        Ok(())
    }

    /// A builder for tests and demos: `tls_dir` holds `ca.pem`, `node.pem` and
    /// `node.key`; everything else has its default.
    pub fn builder(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        tls_dir: impl AsRef<Path>,
    ) -> ConfigBuilder {
        let tls_dir = tls_dir.as_ref();
        ConfigBuilder {
            config: Config {
                node: NodeConfig {
                    name: name.into(),
                    data_dir: data_dir.into(),
                },
                sync: SyncConfig::default(),
                tls: TlsConfig {
                    ca: tls_dir.join(pki::CA_CERT_FILE),
                    cert: tls_dir.join(pki::NODE_CERT_FILE),
                    key: tls_dir.join(pki::NODE_KEY_FILE),
                },
                api: ApiConfig::default(),
                storage: StorageConfig::default(),
                cluster: ClusterConfig::default(),
                status: StatusConfig::default(),
                indexes: std::collections::BTreeMap::new(),
                search: SearchConfig::default(),
                origin: PathBuf::new(),
            },
        }
    }

    /// Renders the config as TOML that [`Config::from_toml_str`] reads back
    /// unchanged (paths that are not UTF-8 are written lossily).
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, so the `fmt::Result`s below are ignored.
        let _ = self.write_toml(&mut out);
        out
    }

    fn write_toml(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "[node]")?;
        writeln!(out, "name = {}", toml_str(&self.node.name))?;
        writeln!(out, "data_dir = {}", toml_path(&self.node.data_dir))?;
        writeln!(out)?;
        writeln!(out, "[sync]")?;
        writeln!(out, "listen = {}", toml_str(&self.sync.listen.to_string()))?;
        if self.sync.peers.is_empty() {
            writeln!(out, "peers = []")?;
        } else {
            writeln!(out, "peers = [")?;
            for peer in &self.sync.peers {
                writeln!(
                    out,
                    "  {{ name = {}, addr = {} }},",
                    toml_str(&peer.name),
                    toml_str(&peer.addr)
                )?;
            }
            writeln!(out, "]")?;
        }
        writeln!(out, "max_clock_skew_ms = {}", self.sync.max_clock_skew_ms)?;
        writeln!(
            out,
            "heartbeat_interval_ms = {}",
            self.sync.heartbeat_interval_ms
        )?;
        if self.sync.accept_unsigned {
            writeln!(out, "accept_unsigned = true")?;
        }
        if !self.sync.urgent.is_empty() {
            let list: Vec<String> = self.sync.urgent.iter().map(|c| toml_str(c)).collect();
            writeln!(out, "urgent = [{}]", list.join(", "))?;
        }
        for l in &self.sync.limit {
            writeln!(out)?;
            writeln!(out, "[[sync.limit]]")?;
            let peers: Vec<String> = l.peers.iter().map(|p| toml_str(p)).collect();
            writeln!(out, "peers = [{}]", peers.join(", "))?;
            writeln!(out, "rate = {}", toml_str(&l.rate))?;
            if let Some(w) = &l.when {
                writeln!(out, "when = {}", toml_str(w))?;
            }
        }
        writeln!(out)?;
        writeln!(out, "[tls]")?;
        writeln!(out, "ca = {}", toml_path(&self.tls.ca))?;
        writeln!(out, "cert = {}", toml_path(&self.tls.cert))?;
        writeln!(out, "key = {}", toml_path(&self.tls.key))?;
        writeln!(out)?;
        writeln!(out, "[api]")?;
        writeln!(out, "listen = {}", toml_str(&self.api.listen.to_string()))?;
        writeln!(out, "auth = {}", toml_str(self.api.auth.as_str()))?;
        writeln!(out, "max_feeds = {}", self.api.max_feeds)?;
        writeln!(out, "feed_cutoff_ms = {}", self.api.feed_cutoff_ms)?;
        writeln!(out)?;
        writeln!(out, "[storage]")?;
        writeln!(
            out,
            "durability = {}",
            toml_str(self.storage.durability.as_str())
        )?;
        writeln!(
            out,
            "flush_interval_ms = {}",
            self.storage.flush_interval_ms
        )?;
        writeln!(out, "max_value_bytes = {}", self.storage.max_value_bytes)?;
        writeln!(out, "history = {}", self.storage.history)?;
        if let Some(file) = &self.storage.encryption_key_file {
            writeln!(out, "encryption_key_file = {}", toml_path(file))?;
        }
        if !self.storage.previous_encryption_key_files.is_empty() {
            let files: Vec<String> = self
                .storage
                .previous_encryption_key_files
                .iter()
                .map(|p| toml_path(p))
                .collect();
            writeln!(
                out,
                "previous_encryption_key_files = [{}]",
                files.join(", ")
            )?;
        }
        writeln!(out)?;
        writeln!(out, "[cluster]")?;
        let admins: Vec<String> = self.cluster.admins.iter().map(|a| toml_str(a)).collect();
        writeln!(out, "admins = [{}]", admins.join(", "))?;
        writeln!(out)?;
        writeln!(out, "[status]")?;
        writeln!(
            out,
            "report_interval_ms = {}",
            self.status.report_interval_ms
        )?;
        writeln!(
            out,
            "unchanged_report_ms = {}",
            self.status.unchanged_report_ms
        )?;
        if !self.indexes.is_empty() {
            writeln!(out)?;
            writeln!(out, "[indexes]")?;
            for (coll, pointers) in &self.indexes {
                let list: Vec<String> = pointers.iter().map(|p| toml_str(p)).collect();
                writeln!(out, "{} = [{}]", toml_str(coll), list.join(", "))?;
            }
        }
        self.search.write_toml(out)
    }

    /// Checks that `account` (the user `officesyncd` will run as) can read the config file,
    /// the `[tls]` files and the storage key files, and read and write `node.data_dir` if it
    /// exists. Returns whether `node.data_dir` exists ([`Access::Allowed`]) or not yet
    /// ([`Access::Missing`]); the error names the file or directory in the way, its owner and
    /// mode, and the fix.
    pub fn check_access(&self, account: &Account) -> Result<Access, ConfigError> {
        let files = [
            ("config".to_owned(), self.origin.as_path()),
            ("tls.ca".to_owned(), &self.tls.ca),
            ("tls.cert".to_owned(), &self.tls.cert),
            ("tls.key".to_owned(), &self.tls.key),
        ]
        .into_iter()
        .chain(self.key_files());
        for (key, path) in files {
            if path.as_os_str().is_empty() {
                continue;
            }
            self.check_one(account, &key, path, Need::Read)?;
        }
        self.check_one(account, "node.data_dir", &self.node.data_dir, Need::Manage)
    }

    /// [`Config::check_access`] for one path.
    fn check_one(
        &self,
        account: &Account,
        key: &str,
        path: &Path,
        need: Need,
    ) -> Result<Access, ConfigError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        account.check(&path, need).map_err(|denied| {
            self.invalid(
                key,
                format!(
                    "{key}: permission denied: {}",
                    denied.describe(account, need)
                ),
                &denied.fix,
            )
        })
    }

    fn read_tls(&self, key: &str, path: &Path, what: &str) -> Result<String, ConfigError> {
        pki::read_pem_file(path).map_err(|e| {
            if let PkiError::Read { source, .. } = &e {
                if source.kind() == io::ErrorKind::PermissionDenied {
                    return self.unreadable(key, path, &e);
                }
            }
            self.invalid(
                key,
                format!("{key}: {e}"),
                &format!("point {key} at {what}, or install the bundle from `officesync ca issue`"),
            )
        })
    }

    /// The error for a `[tls]` file this process may not read: which user it runs as, and
    /// the owner and mode of the file or directory in the way.
    fn unreadable(&self, key: &str, path: &Path, error: &dyn std::fmt::Display) -> ConfigError {
        let me = Account::current();
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        if let Some(me) = &me {
            if let Err(denied) = me.check(&absolute, Need::Read) {
                return self.invalid(
                    key,
                    format!(
                        "{key}: permission denied: {}",
                        denied.describe(me, Need::Read)
                    ),
                    &denied.fix,
                );
            }
        }
        let who = me.map_or_else(|| "this process".to_owned(), |me| me.describe());
        self.invalid(
            key,
            format!("{key}: {error}"),
            &format!(
                "make it readable by {who}, the user officesyncd runs as: \
                 chown root:officesync {p} && chmod 0640 {p}, and let that user enter its directory",
                p = path.display()
            ),
        )
    }

    fn invalid(&self, key: &str, message: String, fix: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin_for_errors(),
            key: key.to_owned(),
            message: one_line(&message),
            fix: one_line(fix),
        }
    }

    fn origin_for_errors(&self) -> PathBuf {
        if self.origin.as_os_str().is_empty() {
            PathBuf::from("<built in code>")
        } else {
            self.origin.clone()
        }
    }
}

/// Builds a [`Config`] in code (tests, demos). [`ConfigBuilder::build`] does
/// not validate, so tests can also build invalid configs.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Sets `api.listen`.
    pub fn api_listen(mut self, addr: SocketAddr) -> Self {
        self.config.api.listen = addr;
        self
    }

    /// Sets `api.auth`.
    pub fn api_auth(mut self, auth: AuthMode) -> Self {
        self.config.api.auth = auth;
        self
    }

    /// Sets `sync.listen`.
    pub fn sync_listen(mut self, addr: SocketAddr) -> Self {
        self.config.sync.listen = addr;
        self
    }

    /// Adds a peer to dial (`addr` is `host:port`).
    pub fn peer(mut self, name: impl Into<String>, addr: impl Into<String>) -> Self {
        self.config.sync.peers.push(PeerConfig {
            name: name.into(),
            addr: addr.into(),
        });
        self
    }

    /// Sets `storage.durability`.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.storage.durability = durability;
        self
    }

    /// Sets `storage.flush_interval_ms`.
    pub fn flush_interval_ms(mut self, ms: u64) -> Self {
        self.config.storage.flush_interval_ms = ms;
        self
    }

    /// Sets `cluster.admins`.
    pub fn admins<I, S>(mut self, admins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.cluster.admins = admins.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `storage.max_value_bytes`.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.storage.max_value_bytes = bytes;
        self
    }

    /// Sets `storage.history`.
    pub fn history(mut self, versions: usize) -> Self {
        self.config.storage.history = versions;
        self
    }

    /// Sets `storage.tombstone_ttl_ms` (publishes frontiers at an admin).
    pub fn tombstone_ttl_ms(mut self, ms: u64) -> Self {
        self.config.storage.tombstone_ttl_ms = Some(ms);
        self
    }

    /// Sets `storage.purge_interval_ms`.
    pub fn purge_interval_ms(mut self, ms: u64) -> Self {
        self.config.storage.purge_interval_ms = ms;
        self
    }

    /// Sets `api.feed_cutoff_ms`.
    pub fn feed_cutoff_ms(mut self, ms: u64) -> Self {
        self.config.api.feed_cutoff_ms = ms;
        self
    }

    /// Sets `api.max_feeds`.
    pub fn max_feeds(mut self, feeds: usize) -> Self {
        self.config.api.max_feeds = feeds;
        self
    }

    /// Sets `storage.encryption_key_file`.
    pub fn encryption_key_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.config.storage.encryption_key_file = Some(file.into());
        self
    }

    /// Adds a file to `storage.previous_encryption_key_files`.
    pub fn previous_encryption_key_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.config
            .storage
            .previous_encryption_key_files
            .push(file.into());
        self
    }

    /// Sets `sync.max_clock_skew_ms`.
    pub fn max_clock_skew_ms(mut self, ms: u64) -> Self {
        self.config.sync.max_clock_skew_ms = ms;
        self
    }

    /// Sets `sync.heartbeat_interval_ms`.
    pub fn heartbeat_interval_ms(mut self, ms: u64) -> Self {
        self.config.sync.heartbeat_interval_ms = ms;
        self
    }

    /// Adds a `[[sync.limit]]` entry: `rate` for `peers` (`"*"`: every peer), in force
    /// `when` (`None`: always).
    pub fn limit(mut self, peers: &[&str], rate: &str, when: Option<&str>) -> Self {
        self.config.sync.limit.push(bandwidth::LimitConfig {
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            rate: rate.to_owned(),
            when: when.map(str::to_owned),
        });
        self
    }

    /// Sets `sync.urgent`.
    pub fn urgent(mut self, collections: &[&str]) -> Self {
        self.config.sync.urgent = collections.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Declares the secondary indexes of `collection` (`[indexes]`).
    pub fn indexes(mut self, collection: &str, pointers: &[&str]) -> Self {
        self.config.indexes.insert(
            collection.to_owned(),
            pointers.iter().map(|p| (*p).to_owned()).collect(),
        );
        self
    }

    /// Sets `status.unchanged_report_ms`.
    pub fn unchanged_report_ms(mut self, ms: u64) -> Self {
        self.config.status.unchanged_report_ms = ms;
        self
    }

    /// Sets `status.report_interval_ms`.
    pub fn report_interval_ms(mut self, ms: u64) -> Self {
        self.config.status.report_interval_ms = ms;
        self
    }

    /// Indexes `collections` for full-text search (`[search] collections`).
    pub fn search_collections<I, S>(mut self, collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.search.collections = collections.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the file name used in error messages.
    pub fn origin(mut self, origin: impl Into<PathBuf>) -> Self {
        self.config.origin = origin.into();
        self
    }

    /// The config (not validated).
    pub fn build(self) -> Config {
        self.config
    }
}

const NODE_NAME_RULE: &str =
    "use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit";

/// Checks `host:port`: non-empty host (IPv6 in brackets), numeric port 1..=65535.
fn check_host_port(addr: &str) -> Result<(), &'static str> {
    let (host, port) = addr.rsplit_once(':').ok_or("no :port")?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("the port must be a number in 1..=65535"),
        Ok(_) => {}
    }
    if host.is_empty() {
        return Err("the host is empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("unbalanced [ in the host")?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| "the bracketed host is not an IPv6 address")?;
        return Ok(());
    }
    if host.contains(':') {
        return Err("an IPv6 host must be in brackets");
    }
    if host
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
    {
        return Err("the host has characters not allowed in a host name");
    }
    Ok(())
}

/// Collapses any line breaks so messages stay on one line.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// Turns a TOML/serde error into a one-line [`ConfigError::Parse`] with the
/// line, the dotted key (inferred from the text around the span) and a fix.
fn parse_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = one_line(err.message());
    let loc = err.span().map(|s| locate(text, s.start));
    let line = loc.as_ref().map_or(1, |l| l.line);
    let field = backticked(&message);

    let (key, message, fix) =
        if let Some(field) = field.filter(|_| message.starts_with("unknown field")) {
            if loc.as_ref().is_some_and(|l| l.is_top_level_header(field)) {
                let rest = message.split_once(',').map_or("", |(_, rest)| rest);
                (
                    Some(field.to_owned()),
                    format!("unknown section [{field}],{rest}"),
                    "correct or remove that section".to_owned(),
                )
            } else {
                let table = loc.as_ref().and_then(|l| l.table_for_field(field));
                let message = match &table {
                    Some(t) => insert_after_field(&message, &format!(" in [{t}]")),
                    None => message.clone(),
                };
                let key = Some(dotted(table.as_deref(), field));
                (key, message, "correct or remove that key".to_owned())
            }
        } else if let Some(field) = field.filter(|_| message.starts_with("missing field")) {
            if TOP_SECTIONS.contains(&field) {
                (
                    Some(field.to_owned()),
                    format!("missing section [{field}]"),
                    format!("add it: {}", example(field)),
                )
            } else {
                let table = loc.as_ref().and_then(|l| l.table_for_field(field));
                let key = dotted(table.as_deref(), field);
                let message = match &table {
                    Some(t) => insert_after_field(&message, &format!(" in [{t}]")),
                    None => message.clone(),
                };
                let fix = format!("add it: {}", example(&key));
                (Some(key), message, fix)
            }
        } else {
            let key = loc.as_ref().and_then(Location::value_key);
            let fix = if message.starts_with("unknown variant") {
                match &key {
                    Some(k) => format!("set {k} to one of the expected values"),
                    None => "use one of the expected values".to_owned(),
                }
            } else if message.contains("socket address") {
                "use ip:port, e.g. \"0.0.0.0:7400\" or \"127.0.0.1:7480\"".to_owned()
            } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
                match &key {
                    Some(k) => format!("give {k} a value like: {}", example(k)),
                    None => "give the key a value of the expected type".to_owned(),
                }
            } else if message.contains("duplicate key") {
                "keep one definition of it (merge repeated sections)".to_owned()
            } else {
                "correct the TOML syntax".to_owned()
            };
            let message = match &key {
                Some(k) => format!("{k}: {message}"),
                None => message,
            };
            (key, message, fix)
        };
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        key,
        message: one_line(&message),
        fix: one_line(&fix),
    }
}

const TOP_SECTIONS: [&str; 6] = ["node", "sync", "tls", "api", "storage", "cluster"];

fn example(key: &str) -> &'static str {
    match key {
        "node" => "[node] with name = \"hefei\" and data_dir = \"/var/lib/officesync\"",
        "tls" => "[tls] with ca, cert and key paths from the bundle (ca.pem, node.pem, node.key)",
        "node.name" => "name = \"hefei\"",
        "node.data_dir" => "data_dir = \"/var/lib/officesync\"",
        "tls.ca" => "ca = \"/etc/officesync/ca.pem\"",
        "tls.cert" => "cert = \"/etc/officesync/node.pem\"",
        "tls.key" => "key = \"/etc/officesync/node.key\"",
        "sync.listen" => "listen = \"0.0.0.0:7400\"",
        "api.listen" => "listen = \"127.0.0.1:7480\"",
        "api.auth" => "auth = \"token\" (or \"none\", for a demo only)",
        "sync.peers" => "peers = [{ name = \"general-office\", addr = \"gov.example.cn:7400\" }]",
        "sync.peers.name" => "{ name = \"general-office\", addr = \"gov.example.cn:7400\" }",
        "sync.peers.addr" => "{ name = \"general-office\", addr = \"gov.example.cn:7400\" }",
        "storage.durability" => "durability = \"sync\" (or \"periodic\")",
        "cluster.admins" => "admins = [\"general-office\"]",
        "sync.max_clock_skew_ms" => "max_clock_skew_ms = 300000",
        "sync.heartbeat_interval_ms" => "heartbeat_interval_ms = 5000",
        "sync.accept_unsigned" => "accept_unsigned = false (true only while upgrading from 0.1.0)",
        "sync.limit" => "[[sync.limit]] with peers = [\"*\"], rate = \"2 Mbit/s\", when = \"Mon-Fri 08:00-18:00\"",
        "sync.limit.peers" => "peers = [\"*\"] (or node names)",
        "sync.limit.rate" => "rate = \"2 Mbit/s\"",
        "sync.limit.when" => "when = \"Mon-Fri 08:00-18:00\" (local time; leave out for always)",
        "sync.urgent" => "urgent = [\"_policy\", \"alerts\"]",
        "storage.flush_interval_ms" => "flush_interval_ms = 100",
        "storage.max_value_bytes" => "max_value_bytes = 4194304",
        "storage.history" => "history = 10",
        "api.max_feeds" => "max_feeds = 1000",
        "api.feed_cutoff_ms" => "feed_cutoff_ms = 30000",
        "search.collections" => "collections = [\"documents\"]",
        "search.fields" => "[search.fields] letters = [\"/title\", \"/body\"]",
        "storage.encryption_key_file" => "encryption_key_file = \"/etc/officesync/storage.key\"",
        "storage.previous_encryption_key_files" => {
            "previous_encryption_key_files = [\"/etc/officesync/storage.key.old\"]"
        }
        _ => "see the commented example deploy/officesync.example.toml (installed with the docs)",
    }
}

fn dotted(table: Option<&str>, field: &str) -> String {
    match table {
        Some(t) => format!("{t}.{field}"),
        None => field.to_owned(),
    }
}

/// The first `` `name` `` in a serde message.
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Inserts `extra` right after the first backticked token.
fn insert_after_field(message: &str, extra: &str) -> String {
    let Some(open) = message.find('`') else {
        return format!("{message}{extra}");
    };
    match message[open + 1..].find('`') {
        Some(close) => {
            let at = open + 1 + close + 1;
            format!("{}{extra}{}", &message[..at], &message[at..])
        }
        None => format!("{message}{extra}"),
    }
}

/// Where a span starts: its line, the enclosing `[section]`, and the key of
/// the nearest `key = ...` line at or before it within that section.
#[derive(Debug)]
struct Location {
    line: usize,
    section: Option<String>,
    /// True when the span's line is a `[section]` header.
    on_header: bool,
    /// Key of the nearest assignment at or above the span in the same section.
    assigned: Option<String>,
}

impl Location {
    /// True when the span is the name in a one-part header like `[bogus]`.
    fn is_top_level_header(&self, field: &str) -> bool {
        self.on_header && self.section.as_deref() == Some(field)
    }

    /// The table that holds (or lacks) `field`: the section, or
    /// `section.key` when the span is inside an inline table of `key`. For a
    /// span on a header `[a.b]` naming `b`, the table is `a`.
    fn table_for_field(&self, field: &str) -> Option<String> {
        let section = self.section.clone();
        if self.on_header {
            let section = section?;
            return match section.rsplit_once('.') {
                Some((parent, last)) if last == field => Some(parent.to_owned()),
                _ => Some(section),
            };
        }
        match &self.assigned {
            Some(key) if key != field => Some(dotted(section.as_deref(), key)),
            _ => section,
        }
    }

    /// The dotted key whose value the span points into.
    fn value_key(&self) -> Option<String> {
        if self.on_header {
            return None;
        }
        let key = self.assigned.as_deref()?;
        Some(dotted(self.section.as_deref(), key))
    }
}

fn locate(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line = text[..offset].matches('\n').count() + 1;
    let mut loc = Location {
        line,
        section: None,
        on_header: false,
        assigned: None,
    };
    for (i, raw) in text.lines().enumerate().take(line) {
        let content = strip_comment(raw).trim();
        if let Some(header) = header_name(content) {
            loc.section = Some(header);
            loc.assigned = None;
            loc.on_header = i + 1 == line;
        } else if let Some((key, _)) = content.split_once('=') {
            let key = key.trim();
            if is_bare_key(key) {
                loc.assigned = Some(key.to_owned());
            }
        }
    }
    loc
}

fn strip_comment(line: &str) -> &str {
    // Good enough for locating keys: a '#' inside a string is rare in this file.
    line.split_once('#').map_or(line, |(before, _)| before)
}

fn header_name(line: &str) -> Option<String> {
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.strip_suffix("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
    let name: String = inner
        .split('.')
        .map(|p| p.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .join(".");
    (!name.is_empty()).then_some(name)
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests;
