//! Online backups and restores of a node's store.
//!
//! A backup is a point-in-time copy of the whole store, taken while the daemon runs
//! ([`crate::store::Snapshots`]): every write acknowledged before it began is inside, none
//! made after. Values are copied as stored: a node with encryption at rest gives a backup
//! whose values are still sealed (restoring it needs the same storage key), so a backup file
//! is no weaker than the data dir. The node's users ride along (`users.json`, token hashes,
//! and `admin.token`, the first admin's token, so root's `officesync` on the node works after
//! a restore as before); the audit log does not (a restored node begins a new chain).
//!
//! A restore ([`restore`]) rebuilds the data dir from a backup with the daemon stopped, and
//! always as a **new incarnation**: the copy's replica id becomes a past identity whose
//! versions stay as they are, and the node writes under a new id whose counters start at 1,
//! so it never issues a dot it (or the copy) issued before. What the copy lacks comes back
//! from its peers by replication.
//!
//! [`frame`] (the file layout and its checksum check) is built without the node, for the CLI.

pub mod frame;

#[cfg(feature = "node")]
mod export;
#[cfg(feature = "node")]
mod restore;

pub use frame::{BackupFileError, BackupHeader};

#[cfg(feature = "node")]
pub use export::{BackupSource, Export, BACKUP_CONTENT_TYPE};
#[cfg(feature = "node")]
pub use restore::{restore, RestoreReport};

/// Why a backup or restore failed.
#[cfg(feature = "node")]
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup file is unreadable, damaged or of another format.
    #[error(transparent)]
    File(#[from] BackupFileError),
    /// The point-in-time view could not be taken or kept.
    #[error(transparent)]
    Snapshot(#[from] crate::store::SnapshotError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The restored store could not be opened as the config says (encryption key).
    #[error(transparent)]
    Open(#[from] Box<crate::node::StartError>),
    /// The replica refused the restored store (another node's, unreadable identity).
    #[error(transparent)]
    Replica(#[from] crate::replica::ReplicaError),
    /// The restore would overwrite something it must not.
    #[error("{0}")]
    Refused(String),
    /// A file of the data dir could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The reader of the backup went away (the HTTP client disconnected).
    #[error("the backup's reader went away")]
    Gone,
}
