//! The bodies of the officesyncd HTTP API: every JSON request and response the daemon
//! serialises and the CLI deserialises, so that a renamed field stops the build instead of
//! breaking `officesync` at run time.
//!
//! Only data lives here (serde derives and a few pure helpers): no HTTP, no store, no
//! protocol types. The JSON shape is the one DESIGN.md ("Interfaces tests rely on") promises;
//! fields added later carry `#[serde(default)]`, so a newer CLI still reads an older daemon.

mod access;
mod bundle;
mod changes;
mod cluster;
mod node;
mod peers;
mod records;
mod search;
mod status;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use access::{NewUser, RemovedBody, Role, TokenBody, UserInfo, UsersBody, WhoAmI};
pub use bundle::{
    BundleCollection, BundleInfo, ExportRequest, ImportReport, ImportedCollection, WantBody,
};
pub use changes::{
    ChangeBody, ChangesPage, FeedEnd, FEED_CLOSING_EVENT, FEED_CUTOFF_EVENT, FEED_FORBIDDEN_EVENT,
};
pub use cluster::{
    BadInput, ClusterBody, ClusterNode, ReportCollection, ReportPeer, StatusReport, SubtreeSummary,
    NODE_STATES,
};
pub use node::{HealthBody, ReadyBody, VerifyReport, VerifyResults};
pub use peers::{PeerCollectionStatus, PeerStatus};
pub use records::{
    ConflictBody, ConflictsPage, HistoryBody, HistoryVersion, ScanPage, ScanRecord, SiblingBody,
    SiblingsBody, WriteBody,
};
pub use search::{SearchHit, SearchIndexStatus, SearchResults};
pub use status::{
    CertificateStatus, CollectionState, CollectionSummary, CollectionsBody, StatusBody,
    StoreStatus, TransportStats, VersionVector, WriteStats,
};

/// A hybrid logical clock stamp as the API writes it: `{"ms": .., "logical": ..}`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Wall-clock part, in milliseconds since the Unix epoch.
    pub ms: u64,
    /// Logical part, to order events within one millisecond.
    pub logical: u32,
}

impl fmt::Display for Hlc {
    /// `ms.logical`, as in the `officesync-hlc` header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ms, self.logical)
    }
}

/// The body of every 4xx and 5xx answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_reads_as_an_object_and_shows_as_the_header_form() {
        let hlc: Hlc = serde_json::from_str(r#"{"ms": 12, "logical": 3}"#).expect("parses");
        assert_eq!(hlc, Hlc { ms: 12, logical: 3 });
        assert_eq!(hlc.to_string(), "12.3");
        assert_eq!(
            serde_json::to_string(&hlc).expect("serialises"),
            r#"{"ms":12,"logical":3}"#
        );
    }

    #[test]
    fn error_body_is_one_field() {
        let body = ErrorBody {
            error: "no such endpoint: /x".into(),
        };
        assert_eq!(
            serde_json::to_string(&body).expect("serialises"),
            r#"{"error":"no such endpoint: /x"}"#
        );
    }
}
