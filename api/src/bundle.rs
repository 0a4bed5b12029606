//! Offline bundles (`officesync bundle want | export | import`): the want file, the export
//! request, the header every bundle file carries (what the CLI prints after an export), and
//! the import report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /v1/bundle/want`, and the want file `officesync bundle want` writes: what a cut-off
/// office holds, so the general office exports only what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WantBody {
    /// The office's node name: an export from this want is for that node.
    pub node: String,
    /// Its replica id (`name@incarnation`), for the record.
    pub replica: String,
    /// Per collection, per origin replica id, the highest counter it holds.
    pub vvs: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `POST /v1/bundle/export`: which versions to put in the bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// Only these collections (and always `_nodes` and `_policy`); `None`: every collection.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// The node the bundle is for: only collections it may read go in, and only it may import
    /// the bundle. Defaults to the want's node.
    #[serde(default, rename = "for")]
    pub for_node: Option<String>,
    /// Only what this want lacks (an incremental bundle); `None`: everything.
    #[serde(default)]
    pub want: Option<WantBody>,
}

/// The header of a bundle file (in the clear, covered by the bundle's signature): who made it,
/// for whom, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    /// The node that exported and signed it.
    pub exporter: String,
    /// The exporter's certificate, DER as lowercase hex.
    pub exporter_certificate: String,
    /// When it was made, Unix milliseconds.
    pub created_ms: u64,
    /// The only node that may import it (`None`: any node of the deployment).
    #[serde(rename = "for")]
    pub for_node: Option<String>,
    /// Made from a want file: holds only what that node lacked.
    pub incremental: bool,
    /// Versions it holds.
    pub versions: u64,
    /// Bytes of its body before compression.
    pub body_bytes: u64,
    /// What it holds of each collection, in the body's order.
    pub collections: Vec<BundleCollection>,
}

/// What a bundle holds of one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleCollection {
    /// The collection.
    pub name: String,
    /// Versions of it in the bundle.
    pub versions: u64,
    /// Origins whose versions (or completion marks) it carries.
    pub origins: u64,
}

/// `POST /v1/bundle/import`: what the import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// The node that exported the bundle.
    pub exporter: String,
    /// When it was made, Unix milliseconds.
    pub created_ms: u64,
    /// Versions it held.
    pub versions: u64,
    /// Versions that became siblings here.
    pub applied: u64,
    /// Versions this node already held (or held something newer of).
    pub ignored: u64,
    /// Per collection.
    pub collections: Vec<ImportedCollection>,
}

/// What an import did to one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedCollection {
    /// The collection.
    pub name: String,
    /// Versions of it in the bundle.
    pub versions: u64,
    /// Its digest after the import.
    pub digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_request_reads_for_and_defaults() {
        let r: ExportRequest = serde_json::from_str(r#"{"for": "hefei"}"#).expect("parses");
        assert_eq!(r.for_node.as_deref(), Some("hefei"));
        assert_eq!(r.collections, None);
        assert!(serde_json::from_str::<ExportRequest>(r#"{"fro": "hefei"}"#).is_err());
    }
}
