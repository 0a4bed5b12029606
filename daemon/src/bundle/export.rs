//! Making a bundle: which collections (those the target node may read), which versions of each
//! origin (above the want's counters, through what this node may offer), bounded in size,
//! compressed and signed by this node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use officesync_api::{BundleCollection, BundleInfo, WantBody};
use officesync_protocol::names;
use officesync_protocol::policy::{Policy, POLICY_COLLECTION};
use officesync_protocol::signing::NODES_COLLECTION;
use officesync_protocol::wire::{MAX_HANDSHAKE_COLLECTIONS, MAX_VECTOR_ENTRIES};
use officesync_protocol::{ReplicaId, Version, VersionVector};

use super::body::{self, Body, Limits, Part, Stream};
use super::frame::{self, to_hex};
use super::{BundleError, BUNDLE_DOMAIN};
use crate::replica::{Replica, ReplicaError};
use crate::signing::NodeSigner;

/// Versions loaded from the store at a time.
const LOAD_VERSIONS: usize = 4096;
/// Bytes of values loaded from the store at a time.
const LOAD_BYTES: usize = 8 << 20;

/// What a cut-off office holds (its want file), checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Want {
    /// The office.
    pub node: String,
    /// Per collection, its vector.
    pub vvs: BTreeMap<String, VersionVector>,
}

impl Want {
    /// What `replica` holds, as `officesync bundle want` writes it: its node, replica id and
    /// the vector of every collection.
    pub async fn body_of(replica: &Replica) -> Result<WantBody, ReplicaError> {
        let mut vvs = BTreeMap::new();
        for c in replica.collections().await? {
            let vv = c
                .meta
                .vv
                .iter()
                .map(|(o, n)| (o.as_str().to_owned(), n))
                .collect();
            vvs.insert(c.name, vv);
        }
        Ok(WantBody {
            node: replica.node().to_owned(),
            replica: replica.id().to_string(),
            vvs,
        })
    }

    /// The want of `body`, refusing bad names, ids and sizes.
    pub fn from_body(body: &WantBody) -> Result<Want, BundleError> {
        let bad = |what: String| BundleError::BadRequest(format!("invalid want: {what}"));
        names::validate_node_name(&body.node).map_err(|e| bad(e.to_string()))?;
        if body.vvs.len() > MAX_HANDSHAKE_COLLECTIONS {
            return Err(bad(format!(
                "{} collections, more than a node holds ({MAX_HANDSHAKE_COLLECTIONS})",
                body.vvs.len()
            )));
        }
        let mut vvs = BTreeMap::new();
        for (collection, entries) in &body.vvs {
            names::validate_collection_name(collection).map_err(|e| bad(e.to_string()))?;
            if entries.len() > MAX_VECTOR_ENTRIES {
                return Err(bad(format!(
                    "{collection} lists {} origins, more than {MAX_VECTOR_ENTRIES}",
                    entries.len()
                )));
            }
            let mut vv = VersionVector::new();
            for (origin, counter) in entries {
                let origin: ReplicaId = origin.parse().map_err(|e| bad(format!("{e}")))?;
                vv.raise(&origin, *counter);
            }
            vvs.insert(collection.clone(), vv);
        }
        Ok(Want {
            node: body.node.clone(),
            vvs,
        })
    }
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportParams {
    /// Only these collections (`_nodes` and `_policy` are always added); `None`: all.
    pub collections: Option<Vec<String>>,
    /// The node it is for: only what it may read goes in (defaults to the want's node).
    pub for_node: Option<String>,
    /// Only what this want lacks.
    pub want: Option<Want>,
}

/// A bundle made.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The file.
    pub bytes: Vec<u8>,
    /// Its header.
    pub info: BundleInfo,
}

/// Makes a bundle of `replica`'s versions under `policy`, signed by `signer`, at `now_ms`
/// (compressed and signed on the blocking pool).
pub async fn export(
    replica: &Replica,
    signer: &Arc<NodeSigner>,
    policy: &Policy,
    params: ExportParams,
    limits: Limits,
    now_ms: u64,
) -> Result<Exported, BundleError> {
    let for_node = target(&params)?;
    // Own writes are offered once durable (as to peers): make them all durable first.
    replica.sync().await?;
    let offered = replica.durable().borrow().vvs.clone();
    let collections = choose(&offered, &params, for_node.as_deref(), policy)?;
    let empty = VersionVector::new();
    let mut body = Body::default();
    let mut size = 0usize;
    for collection in collections {
        let Some(vv) = offered.get(&collection) else {
            continue;
        };
        let known = params
            .want
            .as_ref()
            .and_then(|w| w.vvs.get(&collection))
            .unwrap_or(&empty);
        let mut part = Part {
            collection: collection.clone(),
            streams: Vec::new(),
        };
        for (origin, through) in vv.iter() {
            let after = known.get(origin);
            if through <= after {
                continue;
            }
            let versions = load(
                replica,
                &collection,
                origin,
                after,
                through,
                &mut size,
                limits,
            )
            .await?;
            part.streams.push(Stream {
                origin: origin.clone(),
                after,
                through,
                versions,
            });
        }
        if !part.streams.is_empty() {
            body.parts.push(part);
        }
    }
    let exporter = replica.node().to_owned();
    let incremental = params.want.is_some();
    let signer = signer.clone();
    tokio::task::spawn_blocking(move || {
        seal(
            &body,
            &signer,
            exporter,
            for_node,
            incremental,
            now_ms,
            limits,
        )
    })
    .await
    .map_err(|_| BundleError::Replica(crate::replica::ReplicaError::Closed))?
}

/// Compresses `body`, frames it under its header and signs it.
fn seal(
    body: &Body,
    signer: &NodeSigner,
    exporter: String,
    for_node: Option<String>,
    incremental: bool,
    now_ms: u64,
    limits: Limits,
) -> Result<Exported, BundleError> {
    let (packed, body_bytes) = body::compress(body, limits.max_body).map_err(|e| too_large(&e))?;
    let info = BundleInfo {
        exporter,
        exporter_certificate: to_hex(signer.cert_der()),
        created_ms: now_ms,
        for_node,
        incremental,
        versions: body.versions(),
        body_bytes,
        collections: body
            .parts
            .iter()
            .map(|p| BundleCollection {
                name: p.collection.clone(),
                versions: p.streams.iter().map(|s| s.versions.len() as u64).sum(),
                origins: p.streams.len() as u64,
            })
            .collect(),
    };
    let mut bytes =
        frame::unsigned(&info, &packed).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let signature = signer.sign_bytes(BUNDLE_DOMAIN, &bytes);
    bytes.extend_from_slice(&signature);
    if bytes.len() > limits.max_file {
        return Err(too_large(&format!(
            "the bundle would be {} bytes, over the limit of {}",
            bytes.len(),
            limits.max_file
        )));
    }
    Ok(Exported { bytes, info })
}

/// The node the bundle is for: `--for`, else the want's node; both must agree.
fn target(params: &ExportParams) -> Result<Option<String>, BundleError> {
    let want_node = params.want.as_ref().map(|w| w.node.clone());
    match (&params.for_node, want_node) {
        (Some(node), Some(want)) if *node != want => Err(BundleError::BadRequest(format!(
            "the want was written by node {want}, not by {node}: export --for {want}, or use \
             {node}'s want"
        ))),
        (Some(node), _) => {
            names::validate_node_name(node)
                .map_err(|e| BundleError::BadRequest(format!("invalid --for: {e}")))?;
            Ok(Some(node.clone()))
        }
        (None, want) => Ok(want),
    }
}

/// The collections to export, in the order the importer checks them: `_nodes` first (the
/// certificates the rest is verified with), `_policy`, then the rest in name order.
fn choose(
    offered: &BTreeMap<String, VersionVector>,
    params: &ExportParams,
    for_node: Option<&str>,
    policy: &Policy,
) -> Result<Vec<String>, BundleError> {
    let mut chosen: BTreeSet<String> = match &params.collections {
        None => offered.keys().cloned().collect(),
        Some(list) => {
            for c in list {
                names::validate_collection_name(c)
                    .map_err(|e| BundleError::BadRequest(format!("invalid --collections: {e}")))?;
            }
            list.iter().cloned().collect()
        }
    };
    if let Some(node) = for_node {
        if policy.revoked_name(node) {
            return Err(BundleError::Forbidden(format!(
                "node {node} is revoked: it may read nothing"
            )));
        }
        if let Some(list) = &params.collections {
            if let Some(c) = list.iter().find(|c| !policy.may_read(node, c)) {
                return Err(BundleError::Forbidden(format!(
                    "node {node} may not read collection {c:?} under this node's policy (see \
                     `officesync policy show`): leave it out of --collections"
                )));
            }
        }
        chosen.retain(|c| policy.may_read(node, c));
    }
    let mut ordered = Vec::with_capacity(chosen.len() + 2);
    for system in [NODES_COLLECTION, POLICY_COLLECTION] {
        chosen.remove(system);
        if for_node.is_none_or(|n| policy.may_read(n, system)) {
            ordered.push(system.to_owned());
        }
    }
    ordered.extend(chosen);
    Ok(ordered)
}

/// Every live version of `origin` in `collection` with `after < counter <= through`, adding
/// their size to `size` and refusing to go past the limit.
async fn load(
    replica: &Replica,
    collection: &str,
    origin: &ReplicaId,
    after: u64,
    through: u64,
    size: &mut usize,
    limits: Limits,
) -> Result<Vec<Version>, BundleError> {
    let mut out = Vec::new();
    let mut cursor = after;
    while cursor < through {
        let (versions, scanned) = replica
            .versions_since(
                collection,
                origin,
                cursor,
                through,
                LOAD_VERSIONS,
                LOAD_BYTES,
            )
            .await?;
        if scanned <= cursor {
            return Err(BundleError::Malformed(format!(
                "the store answered a load of {collection}/{origin} after {cursor} through \
                 {scanned}"
            )));
        }
        for v in &versions {
            *size = size.saturating_add(version_bytes(v));
        }
        if *size > limits.max_body {
            return Err(too_large(&format!(
                "the versions to export take more than {} bytes",
                limits.max_body
            )));
        }
        out.extend(versions);
        cursor = scanned;
    }
    Ok(out)
}

/// About what `v` takes in a bundle's body.
fn version_bytes(v: &Version) -> usize {
    v.collection.len()
        + v.key.len()
        + v.value.as_ref().map_or(0, Vec::len)
        + v.author.as_ref().map_or(0, String::len)
        + v.signature.as_ref().map_or(0, Vec::len)
        + (v.dot.origin.as_str().len() + 10) * (1 + v.context.len())
        + 32
}

fn too_large(detail: &str) -> BundleError {
    BundleError::TooLarge(format!(
        "{detail}: carry it in several bundles (export --collections with fewer collections, \
         import it, then make a new want and export the rest)"
    ))
}
