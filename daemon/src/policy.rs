//! The access policy in force on this node: built from `[cluster] admins` and the `_policy`
//! collection of the local replica, and published again whenever `_policy` changes (a local
//! admin write or versions replicated from the general office).

use std::sync::Arc;

use officesync_protocol::policy::{Policy, POLICY_COLLECTION};
use officesync_protocol::VersionVector;
use tokio::sync::watch;

use crate::replica::{Replica, ReplicaError};

/// Most `_policy` records read per scan page.
const PAGE: usize = 1000;

/// A cloneable handle on the policy in force.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    rx: watch::Receiver<Arc<Policy>>,
}

impl PolicyHandle {
    /// A fixed policy that never changes (for tests and tools).
    pub fn fixed(policy: Policy) -> Self {
        // The sender is dropped: the value stays readable and `changed()` never fires.
        let (_, rx) = watch::channel(Arc::new(policy));
        Self { rx }
    }

    /// Loads the policy from `replica` and keeps it current until `shutdown` turns true.
    pub async fn start(
        replica: Replica,
        admins: Vec<String>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Self, ReplicaError> {
        let initial = load(&replica, &admins).await?;
        let (tx, rx) = watch::channel(Arc::new(initial));
        tokio::spawn(async move {
            let mut durable = replica.durable();
            let mut seen: Option<VersionVector> = None;
            loop {
                let vv = durable
                    .borrow_and_update()
                    .vvs
                    .get(POLICY_COLLECTION)
                    .cloned();
                if vv != seen {
                    match load(&replica, &admins).await {
                        Ok(p) => {
                            seen = vv;
                            tx.send_if_modified(|cur| {
                                let changed = **cur != p;
                                if changed {
                                    tracing::info!(
                                        collections = p.collections().len(),
                                        revoked = p.revoked().len(),
                                        "access policy updated"
                                    );
                                    *cur = Arc::new(p);
                                }
                                changed
                            });
                        }
                        Err(ReplicaError::Closed) => return,
                        Err(e) => tracing::warn!(error = %e, "cannot read _policy"),
                    }
                }
                tokio::select! {
                    r = durable.changed() => if r.is_err() { return },
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Self { rx })
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policy>> {
        self.rx.clone()
    }
}

/// Reads every live `_policy` entry (the winner of each key) into a [`Policy`]. Entries that
/// fail validation (none can be written through the API) are logged and skipped.
pub async fn load(replica: &Replica, admins: &[String]) -> Result<Policy, ReplicaError> {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = replica
            .scan(POLICY_COLLECTION, "", after.as_deref(), PAGE)
            .await?;
        for r in page.records {
            if let Some(v) = &r.winner().value {
                entries.push((r.key.clone(), v.clone()));
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let (policy, errors) = Policy::from_entries(
        admins.iter().cloned(),
        entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
    );
    for e in errors {
        tracing::warn!(error = %e, "ignoring an invalid _policy entry");
    }
    Ok(policy)
}
