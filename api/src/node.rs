//! Node-wide bodies: `/health`, `/ready` and `POST /v1/verify`.

use serde::{Deserialize, Serialize};

/// The answer to `GET /health`: `{"status": "ok"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthBody {
    /// `ok` while the daemon serves.
    pub status: String,
}

impl HealthBody {
    /// The one answer officesyncd gives.
    pub fn ok() -> Self {
        Self {
            status: "ok".to_owned(),
        }
    }

    /// True for officesyncd's answer.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The answer to `GET /ready` (200 when ready, else 503 with `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyBody {
    /// True once the store answers and every configured peer was dialled.
    pub ready: bool,
    /// `open` or `unavailable`.
    pub store: String,
    /// True once every configured peer has been dialled at least once.
    pub peers_dialled: bool,
    /// Why the node is not ready; absent when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of a verification report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The peer compared with.
    pub peer: String,
    /// The collection compared.
    pub collection: String,
    /// `equal`, `vectors_differ` (still syncing), `repaired`, `still_different` or `timeout`.
    pub outcome: String,
}

/// The answer of `POST /v1/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResults {
    /// One report per peer and collection.
    pub results: Vec<VerifyReport>,
}
