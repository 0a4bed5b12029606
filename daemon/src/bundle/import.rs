//! Taking a bundle in: the exporter must be an admin node of this deployment and its signature
//! must verify; every version must pass what replication checks (its origin's signature, the
//! policy, the relay rule, sizes, authors); the bundle must continue this node's vectors
//! without a gap. Only then is all of it applied, in one batch, as replication applies.

use std::collections::BTreeMap;
use std::sync::Arc;

use officesync_api::{BundleInfo, ImportReport, ImportedCollection};
use officesync_protocol::policy::{Policy, POLICY_COLLECTION};
use officesync_protocol::signing::KeyId;
use officesync_protocol::wire::MAX_VECTOR_ENTRIES;
use officesync_protocol::{Hlc, ReplicaId, Version};

use super::body::{self, Body, Limits};
use super::check::{self, entry};
use super::frame::{self, from_hex};
use super::{BundleError, BUNDLE_DOMAIN};
use crate::pki;
use crate::policy::PolicyHandle;
use crate::replica::{Replica, ReplicaError};
use crate::signing::{DetachedError, Keyring};

/// Versions whose signatures are checked together (one batch verification).
const CHECK_CHUNK: usize = 1024;

/// What an import checks against (cheap to clone).
#[derive(Debug, Clone)]
pub struct ImportContext {
    /// The replica to apply to.
    pub replica: Replica,
    /// Verifies the bundle's and the versions' signatures.
    pub keyring: Arc<Keyring>,
    /// The policy in force.
    pub policy: PolicyHandle,
    /// The nodes named in `[cluster] admins`: only they may relay others' versions.
    pub admins: Arc<[String]>,
    /// Size bounds.
    pub limits: Limits,
}

/// Checks the bundle `bytes` whole and applies it; nothing is applied when it is refused.
/// The signatures are checked and the body decoded on the blocking pool.
pub async fn import<B>(cx: &ImportContext, bytes: B) -> Result<ImportReport, BundleError>
where
    B: AsRef<[u8]> + Send + 'static,
{
    let checker = cx.clone();
    let (info, body) = tokio::task::spawn_blocking(move || verify(&checker, bytes.as_ref()))
        .await
        .map_err(|_| BundleError::Replica(ReplicaError::Closed))??;
    check_rules(cx, &info, &body).await?;
    apply(&cx.replica, &info, body).await
}

/// Everything about a bundle that needs no store: its framing, its exporter, its signature,
/// its body and every version's signature. The header and the body, when all of it holds.
fn verify(cx: &ImportContext, bytes: &[u8]) -> Result<(BundleInfo, Body), BundleError> {
    let frame = frame::parse(bytes, cx.limits.max_file).map_err(|e| match e {
        frame::FrameError::TooLarge { .. } => BundleError::TooLarge(e.to_string()),
        e => BundleError::Malformed(format!("bundle refused, unreadable: {e}")),
    })?;
    let exporter = trust_exporter(cx, &frame.info)?;
    // A bad signature is reported once the body is read, naming the first altered version
    // when the damage is in one.
    let sealed = match cx
        .keyring
        .verify_bytes(BUNDLE_DOMAIN, frame.signed, frame.signature)
    {
        Ok((id, _)) if id == exporter => Ok(()),
        Ok((id, node)) => Err(format!(
            "it is signed by certificate {id} of {node}, not by its exporter {}",
            frame.info.exporter
        )),
        Err(e @ DetachedError::Revoked { .. }) => {
            return Err(BundleError::Untrusted(format!("bundle refused: {e}")))
        }
        Err(e) => Err(e.to_string()),
    };
    // Damage found in the body: altered when the bundle's signature fails too, else made so
    // by its exporter (malformed; or forged, when a version's own signature fails).
    let refuse = |detail: String, forged: bool| match (&sealed, forged) {
        (Ok(()), false) => BundleError::Malformed(format!(
            "bundle refused: {detail} (its exporter made it so: the bundle's signature \
             verifies); nothing was applied"
        )),
        (Ok(()), true) => BundleError::Altered(format!(
            "bundle refused, forged: {detail} (the bundle's own signature verifies: it was \
             signed again after the change); nothing was applied"
        )),
        (Err(sig), _) => BundleError::Altered(format!(
            "bundle refused, altered: {detail} ({sig}); nothing was applied"
        )),
    };
    let max_value = cx.replica.max_value_bytes();
    let mut body = body::decompress(frame.body, frame.info.body_bytes, cx.limits.max_body)
        .map_err(|e| refuse(e, false))?;
    check::structure(&frame.info, &mut body, max_value).map_err(|e| refuse(e, false))?;
    check_signatures(&cx.keyring, &body).map_err(|e| refuse(e, true))?;
    if let Err(sig) = sealed {
        return Err(BundleError::Altered(format!(
            "bundle refused, altered outside its versions (its header, its completion marks or \
             its signature): {sig}; nothing was applied"
        )));
    }
    Ok((frame.info, body))
}

/// The exporter's key id, once its certificate chains to the CA, names it, and makes it an
/// admin node (named in `[cluster] admins` with an admin certificate) that is not revoked:
/// only a relay may bring other offices' versions.
fn trust_exporter(cx: &ImportContext, info: &BundleInfo) -> Result<KeyId, BundleError> {
    let untrusted = |why: String| BundleError::Untrusted(format!("bundle refused: {why}"));
    let der = from_hex(&info.exporter_certificate).ok_or_else(|| {
        BundleError::Malformed("bundle refused: its exporter certificate is not hex".into())
    })?;
    let (id, name) = cx.keyring.learn(&der).map_err(|e| {
        untrusted(format!(
            "its exporter's certificate is not one this deployment's CA issued (the file \
             is altered, or it comes from another deployment): {e}"
        ))
    })?;
    if name != info.exporter {
        return Err(untrusted(format!(
            "it names {} as its exporter, but carries the certificate of {name}",
            info.exporter
        )));
    }
    let identity = pki::identity_from_der(&der).map_err(|e| untrusted(e.to_string()))?;
    if !cx.admins.contains(&name) || !identity.admin {
        return Err(untrusted(format!(
            "it was made by {name}, which is not an admin node ([cluster] admins, with a \
             certificate issued with --admin): only an admin relays other offices' versions"
        )));
    }
    if cx
        .policy
        .current()
        .is_revoked(&name, Some(&identity.serial_hex))
    {
        return Err(untrusted(format!(
            "its exporter {name} (certificate {}) is revoked",
            identity.serial_hex
        )));
    }
    Ok(id)
}

/// Every version's origin signature, with the keyring (certificates in `_nodes` learnt first:
/// the body carries that collection first).
fn check_signatures(keyring: &Keyring, body: &Body) -> Result<(), String> {
    for part in &body.parts {
        for stream in &part.streams {
            for chunk in stream.versions.chunks(CHECK_CHUNK) {
                if let Some(r) = keyring.check(chunk) {
                    let v = &chunk[r.index];
                    return Err(format!("{}: {}: {}", entry(v), r.fault.label(), r.detail));
                }
            }
        }
    }
    Ok(())
}

/// What replication checks beyond signatures, for the whole bundle: it is for this node; this
/// node may read every collection in it and every origin may write its collection (under the
/// policy the bundle's `_policy` brings); it continues this node's vectors without a gap and
/// claims nothing of this node's own writes beyond what it issued.
async fn check_rules(
    cx: &ImportContext,
    info: &BundleInfo,
    body: &Body,
) -> Result<(), BundleError> {
    let me = cx.replica.node();
    if let Some(node) = &info.for_node {
        if node != me {
            return Err(BundleError::Untrusted(format!(
                "bundle refused: it was made for node {node}, not for {me}"
            )));
        }
    }
    let current = cx.policy.current();
    let policy = policy_after(&cx.replica, &current, body).await?;
    for part in &body.parts {
        let c = &part.collection;
        if !policy.may_read(me, c) {
            return Err(BundleError::Forbidden(format!(
                "bundle refused: it holds collection {c}, which node {me} may not read under \
                 the policy; nothing was applied"
            )));
        }
        let held = cx.replica.collection(c).await?.vv;
        let origins = held
            .iter()
            .filter(|(o, _)| !part.streams.iter().any(|s| s.origin == **o))
            .count()
            + part.streams.len();
        if origins > MAX_VECTOR_ENTRIES {
            return Err(BundleError::Refused(format!(
                "bundle refused: collection {c} would have {origins} origins, more than \
                 {MAX_VECTOR_ENTRIES}"
            )));
        }
        for s in &part.streams {
            if !policy.may_write(s.origin.node_name(), c) {
                let first = s
                    .versions
                    .first()
                    .map_or(String::new(), |v| format!(" (first: {})", entry(v)));
                return Err(BundleError::Forbidden(format!(
                    "bundle refused: it holds versions of {} in {c}{first}, and node {} may not \
                     write {c} under the policy; nothing was applied",
                    s.origin,
                    s.origin.node_name()
                )));
            }
            let have = held.get(&s.origin);
            if s.origin == *cx.replica.id() && s.through > have {
                return Err(BundleError::Refused(format!(
                    "bundle refused: it claims versions of this node's own {} in {c} through {}, \
                     but this node issued only {have}",
                    s.origin, s.through
                )));
            }
            if have < s.after {
                return Err(BundleError::Refused(format!(
                    "bundle refused: it continues {c} of {} from counter {}, but this node holds \
                     only through {have} (it was made from a want this node did not write, or \
                     a bundle before it was not imported): write a new want here and export \
                     again; nothing was applied",
                    s.origin,
                    s.after + 1
                )));
            }
        }
    }
    Ok(())
}

/// The policy once the bundle is applied: the `_policy` entries held here, with the winner of
/// each key the bundle brings versions of decided as the merge will decide it.
async fn policy_after(
    replica: &Replica,
    current: &Policy,
    body: &Body,
) -> Result<Policy, BundleError> {
    let Some(part) = body
        .parts
        .iter()
        .find(|p| p.collection == POLICY_COLLECTION)
    else {
        return Ok(current.clone());
    };
    let held = replica.collection(POLICY_COLLECTION).await?.vv;
    let mut fresh: BTreeMap<&str, Vec<&Version>> = BTreeMap::new();
    for v in part.streams.iter().flat_map(|s| &s.versions) {
        if !held.covers(&v.dot) {
            fresh.entry(v.key.as_str()).or_default().push(v);
        }
    }
    if fresh.is_empty() {
        return Ok(current.clone());
    }
    let mut entries = policy_entries(replica).await?;
    for (key, versions) in fresh {
        let siblings = replica
            .get(POLICY_COLLECTION, key)
            .await?
            .map(|r| r.siblings)
            .unwrap_or_default();
        let covered = |dot| versions.iter().any(|v| v.context.covers(dot));
        let mut candidates: Vec<(Hlc, &ReplicaId, Option<&[u8]>)> = siblings
            .iter()
            .filter(|s| !covered(&s.dot))
            .map(|s| (s.hlc, &s.dot.origin, s.value.as_deref()))
            .collect();
        candidates.extend(
            versions
                .iter()
                .filter(|v| !versions.iter().any(|w| w.context.covers(&v.dot)))
                .map(|v| (v.hlc, &v.dot.origin, v.value.as_deref())),
        );
        let winner = candidates
            .into_iter()
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        match winner.and_then(|w| w.2) {
            Some(value) => entries.insert(key.to_owned(), value.to_vec()),
            None => entries.remove(key),
        };
    }
    let (policy, _invalid) = Policy::from_entries(
        current.admins().iter().cloned(),
        entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
    );
    Ok(policy)
}

/// Every live `_policy` entry held here.
async fn policy_entries(replica: &Replica) -> Result<BTreeMap<String, Vec<u8>>, ReplicaError> {
    let mut entries = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = replica
            .scan(POLICY_COLLECTION, "", after.as_deref(), 1000)
            .await?;
        for r in page.records {
            if let Some(v) = &r.winner().value {
                entries.insert(r.key.clone(), v.clone());
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(entries),
        }
    }
}

/// Applies every version of `body` with every stream's completion, in one batch.
async fn apply(
    replica: &Replica,
    info: &BundleInfo,
    body: Body,
) -> Result<ImportReport, BundleError> {
    let mut complete = Vec::new();
    let mut versions = Vec::new();
    let mut counts = Vec::new();
    for part in body.parts {
        let mut n = 0;
        for s in part.streams {
            n += s.versions.len() as u64;
            complete.push((part.collection.clone(), s.origin, s.through));
            versions.extend(s.versions);
        }
        counts.push((part.collection, n));
    }
    let total = versions.len() as u64;
    let report = replica
        .apply_whole(versions, complete)
        .await
        .map_err(|e| match e {
            ReplicaError::Refused { .. }
            | ReplicaError::CausalContext { .. }
            | ReplicaError::TooManyCollections { .. } => {
                BundleError::Refused(format!("bundle refused: {e}; nothing was applied"))
            }
            e => BundleError::Replica(e),
        })?;
    let mut collections = Vec::with_capacity(counts.len());
    for (name, n) in counts {
        let digest = replica.collection(&name).await?.digest.to_hex();
        collections.push(ImportedCollection {
            name,
            versions: n,
            digest,
        });
    }
    Ok(ImportReport {
        exporter: info.exporter.clone(),
        created_ms: info.created_ms,
        versions: total,
        applied: report.applied,
        ignored: report.ignored,
        collections,
    })
}
