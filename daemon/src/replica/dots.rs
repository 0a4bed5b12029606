//! The dot index: for each collection and origin, the key holding each live version, kept in
//! rows of [`DOTS_PER_BLOCK`] consecutive counters so that a run of versions of one origin
//! (a catch-up, a group of local writes) costs one store write instead of one per version.

use std::collections::{BTreeMap, HashMap};

use officesync_protocol::{codec, Dot};

use super::keys::{self, DOTS_PER_BLOCK};
use super::ReplicaError;
use crate::store::{Store, WriteBatch};

/// One row of the index: offset of the counter within its block → key.
pub(crate) type Row = BTreeMap<u8, String>;

/// Rows the writer keeps after committing them (the tails that the next writes extend).
const CACHED_ROWS: usize = 4096;

/// Decodes a stored row.
pub(crate) fn decode_row(bytes: &[u8]) -> Result<Row, ReplicaError> {
    let entries: Vec<(u8, String)> = codec::decode(bytes).map_err(|e| ReplicaError::Corrupt {
        what: "dot index row".into(),
        detail: e.to_string(),
    })?;
    Ok(entries.into_iter().collect())
}

fn encode_row(row: &Row) -> Result<Vec<u8>, ReplicaError> {
    let entries: Vec<(u8, &String)> = row.iter().map(|(o, k)| (*o, k)).collect();
    super::encoding::encode(&entries)
}

fn offset(counter: u64) -> u8 {
    // Below DOTS_PER_BLOCK (64), so it fits.
    (counter % DOTS_PER_BLOCK) as u8
}

/// The counter of the entry at `offset` of the row whose key ends with block number `block`.
pub(crate) fn counter_at(block: u64, offset: u8) -> u64 {
    block
        .saturating_mul(DOTS_PER_BLOCK)
        .saturating_add(u64::from(offset))
}

/// Rows committed lately, kept by the writer (the only one that changes rows) so that the
/// next group extends them without reading the store.
#[derive(Default)]
pub(crate) struct RowCache {
    rows: HashMap<Vec<u8>, Row>,
}

impl RowCache {
    /// Takes in the rows a group committed.
    pub(crate) fn committed(&mut self, edits: DotEdits) {
        if self.rows.len() + edits.rows.len() > CACHED_ROWS {
            self.rows.clear();
        }
        self.rows.extend(edits.rows);
    }
}

/// The rows of the index a group of writes changes: loaded before anything changes (the
/// fallible part), then edited in memory and written with the group.
#[derive(Default)]
pub(crate) struct DotEdits {
    rows: HashMap<Vec<u8>, Row>,
    /// Rows changed since they were loaded (only these are written).
    dirty: std::collections::HashSet<Vec<u8>>,
    /// An edit of a row that was not loaded first (a bug): the group must not commit, since
    /// writing the row would drop the entries it did not load.
    unloaded: Option<String>,
}

impl DotEdits {
    /// Loads the row of `dot` into the group: from the group itself, the writer's cache (taken
    /// out of it; the group gives its rows back when it commits), or the store.
    pub(crate) fn load(
        &mut self,
        cache: &mut RowCache,
        store: &dyn Store,
        coll: &str,
        dot: &Dot,
    ) -> Result<(), ReplicaError> {
        let key = keys::dot_block(coll, &dot.origin, dot.counter);
        if self.rows.contains_key(&key) {
            return Ok(());
        }
        let row = match cache.rows.remove(&key) {
            Some(row) => row,
            None => match store.get(&key)? {
                Some(bytes) => decode_row(&bytes)?,
                None => Row::new(),
            },
        };
        self.rows.insert(key, row);
        Ok(())
    }

    fn row(&mut self, coll: &str, dot: &Dot) -> Option<&mut Row> {
        let key = keys::dot_block(coll, &dot.origin, dot.counter);
        let row = self.rows.get_mut(&key);
        match row {
            Some(_) => {
                self.dirty.insert(key);
            }
            None if self.unloaded.is_none() => self.unloaded = Some(format!("{coll} {dot}")),
            None => {}
        }
        row
    }

    /// Indexes `dot` of `coll` as held by `key` (its row loaded first).
    pub(crate) fn insert(&mut self, coll: &str, dot: &Dot, key: &str) {
        if let Some(row) = self.row(coll, dot) {
            row.insert(offset(dot.counter), key.to_owned());
        }
    }

    /// Drops `dot` of `coll` from the index (its row loaded first).
    pub(crate) fn remove(&mut self, coll: &str, dot: &Dot) {
        if let Some(row) = self.row(coll, dot) {
            row.remove(&offset(dot.counter));
        }
    }

    /// Queues every row the group loaded (an empty one as a removal).
    pub(crate) fn write(&self, batch: &mut WriteBatch) -> Result<(), ReplicaError> {
        if let Some(dot) = &self.unloaded {
            return Err(ReplicaError::Corrupt {
                what: "dot index".into(),
                detail: format!("the row of {dot} was edited without being loaded"),
            });
        }
        for (key, row) in self.rows.iter().filter(|(k, _)| self.dirty.contains(*k)) {
            if row.is_empty() {
                batch.remove(key.clone());
            } else {
                batch.put(key.clone(), encode_row(row)?);
            }
        }
        Ok(())
    }
}

/// Entries of the old per-dot layout moved per batch.
const MIGRATE_BATCH: usize = 4096;

/// Moves a dot index kept one row a dot (builds before rows of blocks) into rows, a batch at a
/// time, each batch atomic (a crash in between leaves both layouts consistent: the next open
/// goes on). Returns how many entries moved.
pub(crate) fn migrate_per_dot_index(store: &dyn Store) -> Result<u64, ReplicaError> {
    let (start, end) = ([keys::DOT], [keys::DOT + 1]);
    let mut moved = 0u64;
    loop {
        let old = store.range(&start, Some(&end), MIGRATE_BATCH)?;
        if old.is_empty() {
            break;
        }
        let mut rows: HashMap<Vec<u8>, Row> = HashMap::new();
        let mut batch = WriteBatch::default();
        for (k, v) in old {
            let Some((row_key, counter)) = keys::dot_block_of_old_key(&k) else {
                return Err(ReplicaError::Corrupt {
                    what: "dot index".into(),
                    detail: "short key".into(),
                });
            };
            let key = String::from_utf8(v).map_err(|e| ReplicaError::Corrupt {
                what: "dot index".into(),
                detail: e.to_string(),
            })?;
            if !rows.contains_key(&row_key) {
                let row = match store.get(&row_key)? {
                    Some(bytes) => decode_row(&bytes)?,
                    None => Row::new(),
                };
                rows.insert(row_key.clone(), row);
            }
            if let Some(row) = rows.get_mut(&row_key) {
                row.insert(offset(counter), key);
            }
            batch.remove(k);
            moved += 1;
        }
        for (key, row) in &rows {
            batch.put(key.clone(), encode_row(row)?);
        }
        store.apply(batch)?;
    }
    if moved > 0 {
        store.sync()?;
    }
    Ok(moved)
}
