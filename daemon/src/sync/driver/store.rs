//! The session's store actions run against the replica: loads, digests, and applies (several
//! received batches in one atomic commit). Each runs in three steps, so that the driver can
//! keep the session live (heartbeats, echoes, the peer's control frames) while the store works:
//! [`newest`] takes what the peer's status needs from the action, [`run`] does the store
//! work without the session, and [`answer`] tells the session how it went.

use std::collections::HashMap;

use officesync_protocol::sync::{Action, ApplyPart, Session};
use officesync_protocol::wire::ErrorCode;
use officesync_protocol::{Digest, Hlc, ReplicaId, Version, VersionVector};

use super::super::observe::SessionObserver;
use crate::replica::{ApplyReport, Replica};

/// What a store action found, for [`answer`].
pub(super) enum Done {
    /// The versions are applied; with each part's `(collection, origin, through)` and each
    /// touched collection's vector after the commit (or why it could not be read).
    Applied {
        report: ApplyReport,
        complete: Vec<(String, ReplicaId, u64)>,
        vvs: Result<HashMap<String, VersionVector>, String>,
    },
    /// Versions to send.
    Loaded {
        collection: String,
        origin: ReplicaId,
        versions: Vec<Version>,
        scanned: u64,
    },
    /// A collection's digest and vector.
    Digest {
        collection: String,
        digest: Digest,
        vv: VersionVector,
    },
    /// Hash-tree digests of a repair.
    TreeDigests {
        collection: String,
        level: u8,
        parents: Vec<u32>,
        digests: Vec<Digest>,
    },
    /// Versions of a repair's leaves.
    Leaves {
        collection: String,
        versions: Vec<Version>,
        next: Option<(u32, String)>,
    },
    /// The store failed: the session closes with this reason.
    Failed(String),
}

/// What the peer's status needs from `action` before the store takes it: for an Apply, the
/// newest version of the peer's own node per collection (empty for any other action).
pub(super) fn newest(action: &Action, observer: &SessionObserver) -> Vec<(String, Hlc, String)> {
    match action {
        Action::Apply { parts, .. } => observer.newest_of(parts.iter().flat_map(|p| &p.versions)),
        _ => Vec::new(),
    }
}

/// One Apply: every part's versions and vector advance in one atomic store commit, then the
/// vector of each collection it touched. `repair`: merge even versions the vectors cover (a
/// full reconciliation).
async fn apply(replica: &Replica, parts: Vec<ApplyPart>, repair: bool) -> Done {
    let mut versions = Vec::new();
    let mut complete = Vec::new();
    for p in parts {
        versions.extend(p.versions);
        complete.push((p.collection, p.origin, p.through));
    }
    let applied = if repair {
        // Two commits: the merge may not skip covered dots, the vector advance is ordinary.
        match replica.apply_repair(versions).await {
            Ok(r) => replica
                .apply_remote(Vec::new(), complete.clone())
                .await
                .map(|mut c| {
                    c.applied += r.applied;
                    c.rejected.extend(r.rejected);
                    c
                }),
            Err(e) => Err(e),
        }
    } else {
        replica.apply_remote(versions, complete.clone()).await
    };
    let report = match applied {
        Ok(r) => r,
        Err(e) => return Done::Failed(format!("cannot apply received versions: {e}")),
    };
    let vvs = vectors(replica, &complete).await;
    Done::Applied {
        report,
        complete,
        vvs,
    }
}

/// The vector of every collection in `complete`, read once each.
async fn vectors(
    replica: &Replica,
    complete: &[(String, ReplicaId, u64)],
) -> Result<HashMap<String, VersionVector>, String> {
    let mut vvs = HashMap::new();
    for (collection, _, _) in complete {
        if !vvs.contains_key(collection) {
            let meta = replica
                .collection(collection)
                .await
                .map_err(|e| format!("cannot read collection state: {e}"))?;
            vvs.insert(collection.clone(), meta.vv);
        }
    }
    Ok(vvs)
}

/// Does the store work of `action`; needs no session.
pub(super) async fn run(replica: &Replica, action: Action) -> Done {
    let failed = |what: &str, e: crate::replica::ReplicaError| Done::Failed(format!("{what}: {e}"));
    match action {
        Action::Apply { parts, repair } => apply(replica, parts, repair).await,
        Action::Load {
            collection,
            origin,
            after,
            through,
            max_versions,
            max_bytes,
            ..
        } => match replica
            .versions_since(
                &collection,
                &origin,
                after,
                through,
                max_versions,
                max_bytes,
            )
            .await
        {
            Ok((versions, scanned)) => Done::Loaded {
                collection,
                origin,
                versions,
                scanned,
            },
            Err(e) => failed("cannot read versions to send", e),
        },
        Action::Digest { collection } => match replica.collection(&collection).await {
            Ok(meta) => Done::Digest {
                collection,
                digest: meta.digest,
                vv: meta.vv,
            },
            Err(e) => failed("cannot read the digest", e),
        },
        Action::TreeDigests {
            collection,
            level,
            parents,
        } => match replica
            .tree_digests(&collection, level, parents.clone())
            .await
        {
            Ok(digests) => Done::TreeDigests {
                collection,
                level,
                parents,
                digests,
            },
            Err(e) => failed("cannot read the hash tree", e),
        },
        Action::LoadLeaves {
            collection,
            leaves,
            after,
            max_versions,
            max_bytes,
        } => match replica
            .leaf_versions(&collection, leaves, after, max_versions, max_bytes)
            .await
        {
            Ok((versions, next)) => Done::Leaves {
                collection,
                versions,
                next,
            },
            Err(e) => failed("cannot read versions to repair", e),
        },
    }
}

/// Tells the session how a store action went (a failure closes it); `newest` is what
/// [`newest`] took from the action.
pub(super) fn answer(
    session: &mut Session,
    observer: &SessionObserver,
    done: Done,
    newest: Vec<(String, Hlc, String)>,
) {
    match done {
        Done::Applied {
            report,
            complete,
            vvs,
        } => {
            observer.applied(&report, newest);
            if !report.rejected.is_empty() {
                tracing::warn!(
                    rejected = report.rejected.len(),
                    first = ?report.rejected.first(),
                    "refused versions from peer"
                );
            }
            tracing::debug!(
                batches = complete.len(),
                applied = report.applied,
                "applied batches"
            );
            match vvs {
                Ok(vvs) => {
                    for (collection, origin, through) in complete {
                        if let Some(vv) = vvs.get(&collection) {
                            session.handle_applied(&collection, &origin, through, vv.clone());
                        }
                    }
                }
                Err(reason) => session.close(ErrorCode::Internal, &reason),
            }
        }
        Done::Loaded {
            collection,
            origin,
            versions,
            scanned,
        } => session.handle_loaded(&collection, &origin, versions, scanned),
        Done::Digest {
            collection,
            digest,
            vv,
        } => session.handle_local_digest(&collection, digest, vv),
        Done::TreeDigests {
            collection,
            level,
            parents,
            digests,
        } => session.handle_tree_digests(&collection, level, &parents, digests),
        Done::Leaves {
            collection,
            versions,
            next,
        } => session.handle_leaves_loaded(&collection, versions, next),
        Done::Failed(reason) => {
            tracing::error!(%reason, "closing session");
            session.close(ErrorCode::Internal, &reason);
        }
    }
}
