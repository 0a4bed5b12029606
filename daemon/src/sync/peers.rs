//! The peer table: what replication knows of each peer (connected, lag each way, traffic,
//! refusals, per-collection staleness), written by the session drivers and observers and read
//! by the API.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;

pub use officesync_api::{PeerCollectionStatus, PeerStatus};

use crate::time::rfc3339;

/// A shared, cloneable table of peer status, keyed by peer name: the replication layer keeps
/// a clone and updates it, the API reads it.
#[derive(Debug, Clone)]
pub struct PeerTable {
    inner: Arc<RwLock<BTreeMap<String, PeerStatus>>>,
    dialled: Arc<AtomicBool>,
    vectors: Arc<RwLock<BTreeMap<String, KnownVectors>>>,
    /// Counts the changes of any peer's [`link_signal`] (see [`PeerTable::links`]).
    links: Arc<watch::Sender<u64>>,
}

/// What of a peer's entry a status report must tell at once: its link up (a session open and
/// not quiet) and its counts of bad input and refused versions.
fn link_signal(p: &PeerStatus) -> (bool, u64, u64) {
    (
        p.connected && p.silent_ms.is_none(),
        p.bad_input,
        p.rejected,
    )
}

/// What a peer is known to hold, per collection (its handshake vectors raised by what it
/// completed and acknowledged), as of when it was last heard: the input of the stable
/// frontier ([`crate::frontier`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownVectors {
    /// Per collection, the peer's vector.
    pub vvs: BTreeMap<String, officesync_protocol::VersionVector>,
    /// When the peer was last heard from (Unix ms).
    pub heard_ms: u64,
}

impl Default for PeerTable {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            dialled: Arc::new(AtomicBool::new(true)),
            vectors: Arc::default(),
            links: Arc::new(watch::channel(0).0),
        }
    }
}

impl PeerTable {
    /// An empty table (with nothing to dial, so [`PeerTable::dialled`] holds).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets what [`PeerTable::dialled`] answers.
    pub fn set_dialled(&self, dialled: bool) {
        self.dialled.store(dialled, Ordering::Relaxed);
    }

    /// A receiver that changes whenever a peer's link comes up, goes down or goes quiet, or
    /// the peer sends bad input or refused versions: what the status reporter waits on.
    pub fn links(&self) -> watch::Receiver<u64> {
        self.links.subscribe()
    }

    /// Tells [`PeerTable::links`] receivers, when `before` and `after` differ.
    fn signal(&self, before: Option<(bool, u64, u64)>, after: Option<(bool, u64, u64)>) {
        if before != after {
            self.links.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Inserts or replaces the status of `status.name`.
    pub fn set(&self, status: PeerStatus) {
        let after = Some(link_signal(&status));
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let before = map
            .insert(status.name.clone(), status)
            .map(|p| link_signal(&p));
        drop(map);
        self.signal(before, after);
    }

    /// Edits the status of `name` in place, starting from a disconnected, never-seen entry
    /// if the peer is not known yet. Keeps the `*_since` fields in step with what `edit`
    /// changed: `lag_since` and `behind_since` mark when a lag became non-zero,
    /// `connected_since` and `disconnected_since` when the session came up or went down.
    pub fn update(&self, name: &str, edit: impl FnOnce(&mut PeerStatus)) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let before = map.get(name).map(link_signal);
        let entry = map.entry(name.to_owned()).or_insert_with(|| PeerStatus {
            name: name.to_owned(),
            ..PeerStatus::default()
        });
        edit_tracked(entry, edit, SystemTime::now());
        // The key stays the peer's name whatever `edit` did.
        entry.name = name.to_owned();
        let after = Some(link_signal(entry));
        drop(map);
        self.signal(before, after);
    }

    /// Like [`PeerTable::update`], but only for a peer already in the table; false if absent.
    pub fn update_existing(&self, name: &str, edit: impl FnOnce(&mut PeerStatus)) -> bool {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some(entry) => {
                let before = Some(link_signal(entry));
                edit_tracked(entry, edit, SystemTime::now());
                entry.name = name.to_owned();
                let after = Some(link_signal(entry));
                drop(map);
                self.signal(before, after);
                true
            }
            None => false,
        }
    }

    /// A copy of the status of `name`, if known.
    pub fn get(&self, name: &str) -> Option<PeerStatus> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(name).cloned()
    }

    /// Every known peer, in name order.
    pub fn snapshot(&self) -> Vec<PeerStatus> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    /// True once every configured peer has been dialled at least once.
    pub fn dialled(&self) -> bool {
        self.dialled.load(Ordering::Relaxed)
    }

    /// Records what peer `name` holds as of `heard_ms` (vectors only ever rise).
    pub fn note_vectors(
        &self,
        name: &str,
        vvs: &[(String, officesync_protocol::VersionVector)],
        heard_ms: u64,
    ) {
        let mut map = self.vectors.write().unwrap_or_else(|p| p.into_inner());
        let known = map.entry(name.to_owned()).or_default();
        for (c, vv) in vvs {
            known.vvs.entry(c.clone()).or_default().merge(vv);
        }
        known.heard_ms = known.heard_ms.max(heard_ms);
    }

    /// What every peer heard from in this run is known to hold.
    pub fn known_vectors(&self) -> BTreeMap<String, KnownVectors> {
        self.vectors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets `name`.
    pub fn remove(&self, name: &str) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let before = map.remove(name).map(|p| link_signal(&p));
        drop(map);
        self.signal(before, None);
    }
}

/// Applies `edit` to `entry` and updates the `*_since` fields for what it changed, at `now`.
fn edit_tracked(entry: &mut PeerStatus, edit: impl FnOnce(&mut PeerStatus), now: SystemTime) {
    let was_connected = entry.connected;
    edit(entry);
    let stamp = || Some(rfc3339(now));
    match (was_connected, entry.connected) {
        (false, true) => {
            entry.connected_since = stamp();
            entry.disconnected_since = None;
        }
        (true, false) => {
            entry.connected_since = None;
            entry.disconnected_since = stamp();
            entry.caught_up = false;
        }
        _ => {}
    }
    if entry.lag_versions == 0 {
        entry.lag_since = None;
    } else if entry.lag_since.is_none() {
        entry.lag_since = stamp();
    }
    if entry.behind_versions == 0 {
        entry.behind_since = None;
    } else if entry.behind_since.is_none() {
        entry.behind_since = stamp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_change_when_a_link_or_bad_input_does_and_not_for_traffic() {
        let table = PeerTable::new();
        let mut links = table.links();
        table.update("hefei", |p| p.connected = true);
        assert!(links.has_changed().expect("sender alive"), "a peer came up");
        links.borrow_and_update();
        table.update("hefei", |p| {
            p.bytes_sent += 100;
            p.lag_versions = 3;
        });
        assert!(
            !links.has_changed().expect("sender alive"),
            "traffic and lag are not links"
        );
        table.update_existing("hefei", |p| p.silent_ms = Some(12_000));
        assert!(
            links.has_changed().expect("sender alive"),
            "a peer went quiet"
        );
        links.borrow_and_update();
        table.update_existing("hefei", |p| p.rejected = 1);
        assert!(
            links.has_changed().expect("sender alive"),
            "a refused version"
        );
        links.borrow_and_update();
        assert!(!table.update_existing("wuhu", |p| p.connected = true));
        assert!(
            !links.has_changed().expect("sender alive"),
            "no entry, no change"
        );
        table.remove("hefei");
        assert!(
            links.has_changed().expect("sender alive"),
            "a peer forgotten"
        );
        links.borrow_and_update();
        table.set(PeerStatus {
            name: "wuhu".into(),
            ..PeerStatus::default()
        });
        assert!(links.has_changed().expect("sender alive"), "a new peer");
    }
}
