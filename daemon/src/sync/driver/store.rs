//! The session's store actions run against the replica: loads, digests, and applies (several
//! received batches in one atomic commit), each answered back to the session.

use officesync_protocol::sync::{Action, ApplyPart, Session};
use officesync_protocol::wire::ErrorCode;

use super::super::observe::SessionObserver;
use crate::replica::Replica;

/// Runs one Apply: every part's versions and vector advance in one atomic store commit, then
/// tells the session about each part in order. `repair`: merge even versions the vectors
/// cover (a full reconciliation).
pub(super) async fn apply(
    session: &mut Session,
    replica: &Replica,
    parts: Vec<ApplyPart>,
    repair: bool,
    observer: &SessionObserver,
) {
    let mut versions = Vec::new();
    let mut complete = Vec::new();
    for p in parts {
        versions.extend(p.versions);
        complete.push((p.collection, p.origin, p.through));
    }
    let newest = observer.newest_of(&versions);
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
        Err(e) => {
            let reason = format!("cannot apply received versions: {e}");
            tracing::error!(%reason, "closing session");
            session.close(ErrorCode::Internal, &reason);
            return;
        }
    };
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
    answer_applied(session, replica, complete).await;
}

/// Tells the session each batch is applied, with its collection's vector after the commit.
async fn answer_applied(
    session: &mut Session,
    replica: &Replica,
    complete: Vec<(String, officesync_protocol::ReplicaId, u64)>,
) {
    let mut vvs = std::collections::HashMap::new();
    for (collection, origin, through) in complete {
        if !vvs.contains_key(&collection) {
            match replica.collection(&collection).await {
                Ok(meta) => {
                    vvs.insert(collection.clone(), meta.vv);
                }
                Err(e) => {
                    session.close(
                        ErrorCode::Internal,
                        &format!("cannot read collection state: {e}"),
                    );
                    return;
                }
            }
        }
        if let Some(vv) = vvs.get(&collection) {
            session.handle_applied(&collection, &origin, through, vv.clone());
        }
    }
}

/// Runs a Load, a Digest or a repair's tree read and answers the session (Applies go through
/// [`apply`]).
pub(super) async fn run_action(session: &mut Session, replica: &Replica, action: Action) {
    let failed = match action {
        Action::Load {
            collection,
            origin,
            after,
            through,
            max_versions,
            max_bytes,
            ..
        } => {
            match replica
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
                Ok((versions, scanned)) => {
                    session.handle_loaded(&collection, &origin, versions, scanned);
                    None
                }
                Err(e) => Some(format!("cannot read versions to send: {e}")),
            }
        }
        Action::Apply { .. } => None,
        Action::Digest { collection } => match replica.collection(&collection).await {
            Ok(meta) => {
                session.handle_local_digest(&collection, meta.digest, meta.vv);
                None
            }
            Err(e) => Some(format!("cannot read the digest: {e}")),
        },
        Action::TreeDigests {
            collection,
            level,
            parents,
        } => match replica
            .tree_digests(&collection, level, parents.clone())
            .await
        {
            Ok(digests) => {
                session.handle_tree_digests(&collection, level, &parents, digests);
                None
            }
            Err(e) => Some(format!("cannot read the hash tree: {e}")),
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
            Ok((versions, next)) => {
                session.handle_leaves_loaded(&collection, versions, next);
                None
            }
            Err(e) => Some(format!("cannot read versions to repair: {e}")),
        },
    };
    if let Some(reason) = failed {
        tracing::error!(%reason, "closing session");
        session.close(ErrorCode::Internal, &reason);
    }
}
