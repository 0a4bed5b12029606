//! officesyncd as a library: configuration, certificates, the versioned store and the local API.

#[cfg(feature = "node")]
pub mod api;
// Always built (std, serde, ring, thiserror only): the CLI verifies and lists the log offline.
pub mod audit;
// The file layout is always built (the CLI checks a backup it downloaded); making and
// restoring backups needs the node.
pub mod backup;
// The file layout is always built (the CLI reads a bundle's header); making and taking
// bundles needs the node.
#[cfg(feature = "node")]
pub mod auth;
pub mod bundle;
pub mod config;
#[cfg(feature = "node")]
pub mod frontier;
pub mod net;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod notify;
pub mod pki;
#[cfg(feature = "node")]
pub mod policy;
#[cfg(feature = "node")]
pub mod province;
#[cfg(feature = "node")]
pub mod replica;
// Always built: the CLI makes key files (`officesync storage-key`) and config checks read them.
#[cfg(feature = "node")]
pub mod search;
#[cfg(feature = "node")]
pub mod signing;
pub mod storage_key;
#[cfg(feature = "node")]
pub mod store;
#[cfg(feature = "node")]
pub mod sync;
pub mod time;

/// The git commit this build was made from (12 hex digits), or `unknown` (see `build.rs`).
pub const COMMIT: &str = env!("OFFICESYNC_COMMIT");
/// What `--version` prints after the program's name: `VERSION (commit COMMIT)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OFFICESYNC_COMMIT"),
    ")"
);
/// What this build is, as peers see it: `officesyncd VERSION (commit COMMIT)`.
pub const RELEASE: &str = concat!(
    "officesyncd ",
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OFFICESYNC_COMMIT"),
    ")"
);
#[cfg(feature = "node")]
pub mod transport;
