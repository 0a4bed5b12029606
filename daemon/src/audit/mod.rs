//! The audit log (issue 12): an append-only, SHA-256 hash-chained record of who changed what on
//! this node, kept as JSON lines in size-rotated segments under `DATA_DIR/audit`.
//!
//! The module is built without the `node` feature: it needs only std, serde, ring and
//! thiserror, so the CLI can [`verify`] and [`read`] a log offline with the same code the daemon
//! writes it with.
//!
//! - [`AuditLog`] is the daemon's cloneable writer handle: [`AuditLog::open`] checks the chain
//!   and refuses a damaged log; [`AuditLog::append`] and [`AuditLog::append_batch`] write and
//!   fdatasync; [`AuditLog::refused`] records refused authentications under a rate limit.
//! - [`verify`] checks a whole log and names the first bad entry; [`read`] and [`read_last`]
//!   page through it, oldest first.
//!
//! # Format
//!
//! Segments are `000001.log`, `000002.log`, ... numbered from 1 without gaps, each a sequence
//! of lines `{"v":1,"seq":..,"at":..,"kind":..,"actor":..,"collection":..,"key":..,
//! "version":..,"detail":..,"prev":..,"hash":..}\n` in exactly that compact form. `hash` is the
//! SHA-256 of `officesync-audit-v1\n` followed by the same line without its `hash` field;
//! `prev` is the `hash` of the entry before (in the previous segment for a segment's first
//! entry), 64 zeros for seq 1. A line is valid only if it is byte for byte the canonical
//! encoding of what it parses to. A segment is closed once it would grow past
//! [`AuditOptions::max_segment_bytes`]; segments are never deleted or rewritten.
//!
//! # Torn tail
//!
//! An entry is acknowledged only once its whole line, newline included, is synced. So bytes
//! after the last newline of the last segment that are an unfinished JSON value are a write
//! torn by a crash: [`verify`] and [`read`] ignore them and report them, [`AuditLog::open`]
//! truncates them with a warning. If those bytes are a complete canonical entry that chains,
//! only the newline was lost: it counts, and `open` adds the newline. Anything else (junk after
//! a complete value, a bad entry, a missing newline in an earlier segment) is damage.

mod chain;
mod entry;
mod limit;
mod segment;
mod writer;

use std::path::PathBuf;

pub use chain::{read, read_last, verify, Page, TornTail, VerifySummary};
pub use entry::{Entry, Kind, Record, FORMAT_VERSION, GENESIS_HASH, MAX_FIELD_BYTES};
pub use limit::{RefusalLimiter, RefusalLimits, Suppressed};
pub use segment::{segment_name, MAX_LINE_BYTES};
pub use writer::{AuditLog, AuditOptions, Head, OpenCheck};

/// Why the audit log could not be opened, read, verified or appended to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file or directory could not be read or written.
    #[error("audit log: {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An entry (or what stands where one should) is wrong: the chain is broken there.
    #[error("audit log damaged: {} {} (line {line}): {problem}", file.display(), EntryLabel(*seq))]
    Damaged {
        /// The segment file.
        file: PathBuf,
        /// The line in that file, from 1.
        line: u64,
        /// The chain position the entry should have (its `seq` if it is intact), 0 if unknown.
        seq: u64,
        /// What is wrong.
        problem: Damage,
    },
    /// A segment number is missing between the first segment (`000001.log`) and the last.
    #[error("audit log damaged: {} is missing", file.display())]
    MissingSegment {
        /// The path the segment should have.
        file: PathBuf,
    },
    /// An earlier append failed part way; this handle refuses appends until the log is reopened.
    #[error("audit log unusable after an earlier write error; restart to reopen it")]
    Failed,
}

/// What is wrong with a damaged entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The line is not an entry (bad JSON, bad UTF-8, unknown or missing field).
    #[error("unparsable: {0}")]
    Unparsable(String),
    /// The line parses but is not the canonical encoding of what it parses to.
    #[error("not in canonical form")]
    NotCanonical,
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// The stored hash is not the hash of the entry.
    #[error("hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch {
        /// The `hash` field.
        stored: String,
        /// The hash of the other fields.
        computed: String,
    },
    /// `prev` is not the hash of the entry before.
    #[error("broken link: prev {found}, but the entry before has hash {expected}")]
    BrokenLink {
        /// The hash of the entry before.
        expected: String,
        /// The `prev` field.
        found: String,
    },
    /// `seq` is not one more than the entry before's.
    #[error("bad seq: expected {expected}, found {found}")]
    BadSeq {
        /// One more than the entry before's.
        expected: u64,
        /// The `seq` field.
        found: u64,
    },
    /// The format version is not one this build reads.
    #[error("unknown format version {0}")]
    UnknownVersion(u32),
    /// A segment before the last does not end with a newline.
    #[error("segment does not end with a newline")]
    Unterminated,
}

/// `entry N`, or `an entry` when the position is not known (0).
struct EntryLabel(u64);

impl std::fmt::Display for EntryLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => f.write_str("an entry"),
            seq => write!(f, "entry {seq}"),
        }
    }
}

#[cfg(test)]
mod tests;
