//! Tombstone collection in the writer: purge steps below a collection's stable frontier, the
//! rejoin of a node that was left out of one, and the frontier kept for dropping obsolete
//! received versions (the rules: [`officesync_protocol::frontier`]).
//!
//! Both walks go through a collection's records in key order, a bounded slice per request, in
//! the writer's groups: each slice commits atomically with the digest, tree, dot index and
//! counts it changes, so a crash between slices leaves a consistent store and the next round
//! starts over (both walks are idempotent).
//!
//! Persisted here, under the node-metadata prefix: `M frontier/<collection>` (the frontier
//! applied, for the obsolete-version rule) and `M rejoin/<collection>` (the last rejoin: the
//! record it answered, its frontier, and whether the walk finished).

use bincode::{Decode, Encode};
use officesync_protocol::{codec, Dot, VersionVector};

use super::super::encoding::{decode_siblings, encode, Body, StoredSibling};
use super::super::keys;
use super::super::{history, ReplicaError};
use super::{Group, Writer};
use crate::store::{prefix_end, Store, WriteBatch};

/// The last rejoin of a collection, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct RejoinMark {
    /// The rejoin record answered (its version, `origin:counter`).
    pub record: String,
    /// Its frontier: versions at or below it were dropped, and come back by repair.
    pub frontier: VersionVector,
    /// The walk went through every record.
    pub done: bool,
}

/// What one step of a purge or rejoin walk did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeStep {
    /// Keys whose tombstone was purged (purge), or versions dropped (rejoin).
    pub removed: u64,
    /// The key to continue after; `None`: the walk is complete.
    pub next: Option<String>,
}

fn frontier_key(coll: &str) -> Vec<u8> {
    keys::meta(&format!("frontier/{coll}"))
}

fn rejoin_key(coll: &str) -> Vec<u8> {
    keys::meta(&format!("rejoin/{coll}"))
}

/// Per collection: the frontier applied, and the last rejoin.
type PurgeState = (
    std::collections::HashMap<String, VersionVector>,
    std::collections::HashMap<String, RejoinMark>,
);

/// The frontiers applied and the rejoin marks of every collection, from the store.
pub(crate) fn load(store: &dyn Store) -> Result<PurgeState, ReplicaError> {
    let mut frontiers = std::collections::HashMap::new();
    let mut rejoins = std::collections::HashMap::new();
    for (prefix, is_frontier) in [
        (keys::meta("frontier/"), true),
        (keys::meta("rejoin/"), false),
    ] {
        let end = prefix_end(&prefix);
        let mut start = prefix.clone();
        loop {
            let rows = store.range(&start, end.as_deref(), 1024)?;
            for (k, raw) in &rows {
                let coll = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let corrupt = |e: codec::DecodeError| ReplicaError::Corrupt {
                    what: format!("purge state of {coll}"),
                    detail: e.to_string(),
                };
                if is_frontier {
                    frontiers.insert(coll.clone(), codec::decode(raw).map_err(corrupt)?);
                } else {
                    rejoins.insert(coll.clone(), codec::decode(raw).map_err(corrupt)?);
                }
            }
            match rows.last() {
                Some((k, _)) if rows.len() == 1024 => {
                    start = k.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
    }
    Ok((frontiers, rejoins))
}

/// The last rejoin of `coll` (none: never).
pub(crate) fn rejoin_mark(
    store: &dyn Store,
    coll: &str,
) -> Result<Option<RejoinMark>, ReplicaError> {
    match store.get(&rejoin_key(coll))? {
        None => Ok(None),
        Some(raw) => codec::decode(&raw)
            .map(Some)
            .map_err(|e| ReplicaError::Corrupt {
                what: format!("rejoin mark of {coll}"),
                detail: e.to_string(),
            }),
    }
}

/// Queues the removal of the chunks of `s` (a large value) into `batch`.
fn delete_chunks(coll: &str, s: &StoredSibling, batch: &mut WriteBatch) {
    if let Body::Chunked { chunks } = s.body {
        for i in 0..chunks {
            batch.remove(keys::chunk(coll, &s.header.dot, i));
        }
    }
}

/// A slice of at most `max_keys` records of `coll` after `after`: each key, its sibling
/// set, and where the next slice starts.
type Slice = (Vec<(String, Vec<StoredSibling>)>, Option<String>);

impl Writer {
    /// Reads the next slice of `coll`'s records.
    fn slice(
        &self,
        coll: &str,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<Slice, ReplicaError> {
        let prefix = keys::record_prefix(coll);
        let start = match after {
            Some(a) => {
                let mut k = keys::record(coll, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let end = prefix_end(&prefix);
        let rows = self.store.range(&start, end.as_deref(), max_keys.max(1))?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, raw) in &rows {
            let Ok(key) = std::str::from_utf8(&k[prefix.len()..]) else {
                continue;
            };
            let siblings = decode_siblings(raw, &format!("{coll}/{key}"))?;
            out.push((key.to_owned(), siblings));
        }
        let next = (rows.len() >= max_keys.max(1))
            .then(|| out.last().map(|(k, _)| k.clone()))
            .flatten();
        Ok((out, next))
    }

    /// Takes `removed` (versions of `coll`/`key` that leave `kept`, its new sibling set) out of
    /// the collection: digest, tree, dot index, counts and their chunks; with the key's
    /// history and leaf-index row once nothing is left. The group holds the new set.
    fn remove_versions(
        &mut self,
        g: &mut Group,
        coll: &str,
        key: &str,
        removed: Vec<StoredSibling>,
        kept: Vec<StoredSibling>,
        was_live: bool,
    ) -> Result<(), ReplicaError> {
        {
            let (store, cache) = (self.store.as_ref(), &mut self.dot_rows);
            for s in &removed {
                g.dots.load(cache, store, coll, &s.header.dot)?;
            }
        }
        let history = match kept.is_empty() {
            true => history::superseded(self.store.as_ref(), coll, key)?,
            false => Vec::new(),
        };
        let mut meta = std::mem::take(self.meta(g, coll)?);
        for s in &removed {
            let e = g.tree.toggle(coll, key, &s.header.dot, &s.header.value);
            meta.digest.xor(&e);
            meta.versions = meta.versions.saturating_sub(1);
            g.dots.remove(coll, &s.header.dot);
            delete_chunks(coll, s, &mut g.batch);
        }
        let is_live = officesync_protocol::merge::winner(&kept)
            .is_some_and(|w| !w.header.value.is_tombstone());
        if was_live && !is_live {
            meta.records = meta.records.saturating_sub(1);
        }
        if kept.is_empty() {
            meta.keys = meta.keys.saturating_sub(1);
            g.tree.drop_key(coll, key);
            for old in &history {
                delete_chunks(coll, old, &mut g.batch);
            }
            g.batch.remove(keys::history(coll, key));
        }
        g.metas.insert(coll.to_owned(), meta);
        g.siblings.insert((coll.to_owned(), key.to_owned()), kept);
        Ok(())
    }

    /// One purge step of `coll` below `frontier`: of at most `max_keys` records after `after`,
    /// each key whose only version is a tombstone the frontier covers is forgotten. The
    /// frontier is also kept (raised, never lowered) for [`Writer::is_obsolete`].
    pub(super) fn purge_step(
        &mut self,
        g: &mut Group,
        coll: &str,
        frontier: &VersionVector,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<PurgeStep, ReplicaError> {
        officesync_protocol::names::validate_collection_name(coll)?;
        let kept = self.frontiers.entry(coll.to_owned()).or_default();
        if !officesync_protocol::frontier::covers_all(kept, frontier) {
            kept.merge(frontier);
            let bytes = encode(&*kept)?;
            g.batch.put(frontier_key(coll), bytes);
        }
        let (slice, next) = self.slice(coll, after, max_keys)?;
        let mut removed = 0;
        for (key, siblings) in slice {
            let purgeable = |s: &[StoredSibling]| {
                s.len() == 1
                    && s[0].header.value.is_tombstone()
                    && frontier.covers(&s[0].header.dot)
            };
            // A key this group already changed is left for the next round.
            if !purgeable(&siblings) || g.siblings.contains_key(&(coll.to_owned(), key.clone())) {
                continue;
            }
            let siblings = self.take_siblings(g, coll, &key)?;
            if !purgeable(&siblings) {
                g.siblings.insert((coll.to_owned(), key), siblings);
                continue;
            }
            self.remove_versions(g, coll, &key, siblings, Vec::new(), false)?;
            removed += 1;
        }
        g.writes += 1;
        self.stats
            .tombstones_purged
            .fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        Ok(PurgeStep { removed, next })
    }

    /// One rejoin step of `coll` (this node was left out of `frontier`, answering rejoin
    /// record `record`): of at most `max_keys` records after `after`, every version the
    /// frontier covers is dropped (any may be superseded by a tombstone purged meanwhile);
    /// the rest, this node's newer writes among them, stay. The vector is not changed: what is
    /// dropped and still live elsewhere comes back by repair, which [`Writer::is_obsolete`]
    /// lets through below this frontier.
    pub(super) fn rejoin_step(
        &mut self,
        g: &mut Group,
        coll: &str,
        frontier: &VersionVector,
        record: &str,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<PurgeStep, ReplicaError> {
        officesync_protocol::names::validate_collection_name(coll)?;
        let (slice, next) = self.slice(coll, after, max_keys)?;
        let mut removed = 0;
        for (key, siblings) in slice {
            if !siblings.iter().any(|s| frontier.covers(&s.header.dot)) {
                continue;
            }
            let siblings = self.take_siblings(g, coll, &key)?;
            let was_live = officesync_protocol::merge::winner(&siblings)
                .is_some_and(|w| !w.header.value.is_tombstone());
            let (drop, keep): (Vec<_>, Vec<_>) = siblings
                .into_iter()
                .partition(|s| frontier.covers(&s.header.dot));
            removed += drop.len() as u64;
            let became_live = officesync_protocol::merge::winner(&keep)
                .is_some_and(|w| !w.header.value.is_tombstone());
            if became_live && !was_live {
                // A tombstone winner dropped above a live sibling: the record counts again.
                let meta = self.meta(g, coll)?;
                meta.records += 1;
            }
            self.remove_versions(g, coll, &key, drop, keep, was_live)?;
        }
        let mark = RejoinMark {
            record: record.to_owned(),
            frontier: frontier.clone(),
            done: next.is_none(),
        };
        g.batch.put(rejoin_key(coll), encode(&mark)?);
        self.rejoins.insert(coll.to_owned(), mark);
        g.writes += 1;
        self.stats
            .rejoin_dropped
            .fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        Ok(PurgeStep { removed, next })
    }

    /// True when a received version of `coll` with `dot` is obsolete here (see
    /// [`officesync_protocol::frontier::is_obsolete`]): below the frontier applied, covered by
    /// this node's vector, and not among `held`; except below the frontier of a rejoin, whose
    /// dropped versions come back this way.
    pub(super) fn is_obsolete(
        &self,
        coll: &str,
        vv: &VersionVector,
        dot: &Dot,
        held: &[StoredSibling],
    ) -> bool {
        let Some(frontier) = self.frontiers.get(coll) else {
            return false;
        };
        if self
            .rejoins
            .get(coll)
            .is_some_and(|r| r.frontier.covers(dot))
        {
            return false;
        }
        officesync_protocol::frontier::is_obsolete(
            frontier,
            vv,
            dot,
            held.iter().map(|s| s.header.dot.clone()),
        )
    }
}
