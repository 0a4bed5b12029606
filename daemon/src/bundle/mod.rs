//! Offline bundles: versions carried on a disk to an office whose link is down for weeks.
//!
//! The general office exports what an office lacks (per collection and origin, the live
//! versions above the office's counters and the counters they complete through, exactly as
//! catch-up sends them), with their dots, authors and origin signatures, the `_nodes`
//! certificates needed to verify them and `_policy`; the whole file is signed by the exporter.
//! The office checks the file's signature (an admin node's, chaining to the CA), then every
//! version as replication would (origin signature, policy, relay rule, sizes, authors,
//! continuity of its vectors), and only then applies it all in one batch. A bundle altered
//! anywhere is refused whole, naming the first bad entry when the damage is in one.
//!
//! [`frame`] (the file's layout and header) is built without the node, for the CLI.

pub mod frame;

#[cfg(feature = "node")]
mod body;
#[cfg(feature = "node")]
mod check;
#[cfg(feature = "node")]
mod export;
#[cfg(feature = "node")]
mod import;
#[cfg(all(test, feature = "node"))]
mod tests;

pub use frame::{FrameError, MAX_BUNDLE_BYTES};

#[cfg(feature = "node")]
pub use node::*;

#[cfg(feature = "node")]
mod node {
    use std::sync::Arc;

    use thiserror::Error;

    use crate::replica::ReplicaError;
    use crate::signing::{Domain, Keyring, NodeSigner};

    pub use super::body::{Body, Limits, Part, Stream};
    pub use super::export::{export, ExportParams, Exported, Want};
    pub use super::import::{import, ImportContext};

    /// Fuzz entry point (used by `daemon/fuzz` and its corpus replay test): reads `data` as an
    /// import does before any signature is checked (the frame, the header, the compressed body
    /// within 4 MiB) and walks what decodes. Panics only when an invariant breaks.
    #[doc(hidden)]
    pub fn fuzz_bundle(data: &[u8]) {
        const MAX: usize = 4 << 20;
        let Ok(frame) = super::frame::parse(data, MAX) else {
            return;
        };
        assert!(frame.signed.len() + frame.signature.len() == data.len());
        let Ok(body) = super::body::decompress(frame.body, frame.info.body_bytes, MAX) else {
            return;
        };
        let counted: u64 = body
            .parts
            .iter()
            .flat_map(|p| &p.streams)
            .map(|s| s.versions.len() as u64)
            .sum();
        assert_eq!(counted, body.versions());
    }

    /// The bytes of an unsigned bundle of `body` with header `info` and a zeroed signature:
    /// a seed for the fuzz target (`info.body_bytes` is set from the body).
    #[doc(hidden)]
    pub fn fuzz_seed(info: &mut officesync_api::BundleInfo, body: &Body) -> Vec<u8> {
        let (packed, len) =
            super::body::compress(body, super::MAX_BUNDLE_BYTES).unwrap_or_default();
        info.body_bytes = len;
        let mut out = super::frame::unsigned(info, &packed).unwrap_or_default();
        out.extend_from_slice(&[0u8; officesync_protocol::signing::SIGNATURE_LEN]);
        out
    }

    /// The domain of a bundle's signature: no version signature (or any other signature made
    /// with a node key) can pass for one.
    pub const BUNDLE_DOMAIN: Domain = Domain::new(b"officesync bundle signature 1\0");

    /// Why a bundle could not be made or was refused. Nothing is applied when an import fails.
    #[derive(Debug, Error)]
    pub enum BundleError {
        /// Not a bundle this build reads, or damaged where nothing vouches for it.
        #[error("{0}")]
        Malformed(String),
        /// Altered or forged: the error names the first bad entry when the damage is in one.
        #[error("{0}")]
        Altered(String),
        /// Larger than a bundle may be ([`MAX_BUNDLE_BYTES`]).
        #[error("{0}")]
        TooLarge(String),
        /// Not made by a node this one takes others' versions from (an admin node with an
        /// admin certificate of this deployment), or made for another node.
        #[error("{0}")]
        Untrusted(String),
        /// The access policy refuses it: a collection this node may not read, or versions of an
        /// origin that may not write their collection; or, at export, a collection the target
        /// node may not read.
        #[error("{0}")]
        Forbidden(String),
        /// It cannot be applied here: it would leave a gap in this node's vectors, or a version
        /// would be refused by the store's own rules (clock skew, sibling limits).
        #[error("{0}")]
        Refused(String),
        /// An export request that makes no sense (a bad collection or node name, a bad want).
        #[error("{0}")]
        BadRequest(String),
        /// The store failed.
        #[error(transparent)]
        Replica(#[from] ReplicaError),
    }

    /// What the API needs to export and import bundles: this node's key, the keyring that
    /// verifies versions, the nodes named in `[cluster] admins`, and one bundle at a time.
    #[derive(Debug)]
    pub struct Bundles {
        signer: Arc<NodeSigner>,
        keyring: Arc<Keyring>,
        admins: Arc<[String]>,
        limits: Limits,
        busy: tokio::sync::Mutex<()>,
    }

    impl Bundles {
        /// Bundles made with `signer` and checked with `keyring`, taken only from `admins`.
        pub fn new(signer: Arc<NodeSigner>, keyring: Arc<Keyring>, admins: Vec<String>) -> Self {
            Self {
                signer,
                keyring,
                admins: admins.into(),
                limits: Limits::default(),
                busy: tokio::sync::Mutex::new(()),
            }
        }

        /// This node's signer.
        pub fn signer(&self) -> &Arc<NodeSigner> {
            &self.signer
        }

        /// The keyring.
        pub fn keyring(&self) -> &Arc<Keyring> {
            &self.keyring
        }

        /// The nodes named in `[cluster] admins`.
        pub fn admins(&self) -> &Arc<[String]> {
            &self.admins
        }

        /// The size bounds.
        pub fn limits(&self) -> Limits {
            self.limits
        }

        /// Waits for the other bundle operations to finish (each holds a whole bundle in
        /// memory); the guard lets the next one start.
        pub async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
            self.busy.lock().await
        }
    }
}
