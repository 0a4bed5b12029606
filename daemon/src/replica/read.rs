//! Reads straight from the store: one key's winner or siblings, scans, collection states.
//! Values kept in chunks are reassembled and checked against their hash.
//!
//! Every read an API client can ask for is bounded: a plain read loads only the winner's
//! value (the other siblings are counted from the sibling record, never loaded), a read of
//! every sibling loads values only within a byte budget, and a scan page stops at a byte
//! budget and at a number of rows examined (tombstoned keys included), handing back a cursor.

use officesync_protocol::query::Filter;
use officesync_protocol::{codec, Dot, Hlc, ValueMeta};
use officesync_protocol::{index_order, merge};

use super::encoding::{decode_siblings, Body, StoredSibling};
use super::index::IndexPlan;
use super::keys;
use super::{CollectionInfo, Record, ReplicaError, ScanPage, Sibling};
use crate::store::{prefix_end, Store, StoreError};

/// Rows fetched per store call while scanning.
const SCAN_BATCH: usize = 256;

/// Value bytes a read of every sibling (`?all=true`) loads at most; past it, siblings are
/// listed without their value (see [`SiblingsRead`]). Above the largest value a node accepts
/// (6 MiB), so the winner's value always fits.
pub const SIBLING_VALUES_BUDGET: usize = 8 << 20;

// The winner's value always fits the budget, whatever `storage.max_value_bytes` is.
const _: () = assert!(SIBLING_VALUES_BUDGET >= crate::config::MAX_VALUE_BYTES_LIMIT);

/// Bytes (values and keys) one scan page carries at most, beyond its first record: the page
/// ends early, with a `next` cursor, before the record that would cross it.
pub const SCAN_PAGE_BYTES: usize = 8 << 20;

/// Rows (keys, deleted ones included) one scan page examines at most: past it the page ends
/// early with a `next` cursor, even with fewer records than asked (possibly none).
pub const SCAN_MAX_EXAMINED: usize = 4096;

/// The bounds of one scan page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanBudget {
    /// Records returned at most.
    pub limit: usize,
    /// Bytes of values and keys returned at most, beyond the first record.
    pub max_bytes: usize,
    /// Rows examined at most, deleted keys included.
    pub max_examined: usize,
    /// Value bytes loaded at most to test a filter, beyond the first record tested.
    pub max_filter_bytes: usize,
}

impl ScanBudget {
    /// At most `limit` records, within [`SCAN_PAGE_BYTES`] and [`SCAN_MAX_EXAMINED`].
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            max_bytes: SCAN_PAGE_BYTES,
            max_examined: SCAN_MAX_EXAMINED,
            max_filter_bytes: SCAN_FILTER_BYTES,
        }
    }
}

/// A key's winner with its value, and how many siblings the key has (theirs not loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinnerRead {
    /// The key.
    pub key: String,
    /// The winning sibling, value loaded (`None`: a tombstone).
    pub sibling: Sibling,
    /// Current siblings of the key, tombstones and the winner included.
    pub siblings: usize,
}

impl WinnerRead {
    /// The winning sibling.
    pub fn winner(&self) -> &Sibling {
        &self.sibling
    }

    /// True when the winner is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.sibling.value.is_none()
    }
}

/// One sibling as listed by a bounded read of every sibling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiblingRead {
    /// Its dot.
    pub dot: Dot,
    /// Its timestamp.
    pub hlc: Hlc,
    /// The value's length in bytes, `None` for a tombstone.
    pub len: Option<u64>,
    /// The value when it was loaded (within the budget); `None` for a tombstone or a value
    /// left out.
    pub value: Option<Vec<u8>>,
    /// Who wrote it (see [`super::Sibling::author`]).
    pub author: Option<String>,
}

impl SiblingRead {
    /// True for a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.len.is_none()
    }

    /// True when the sibling has a value that the budget left out.
    pub fn is_omitted(&self) -> bool {
        self.len.is_some() && self.value.is_none()
    }
}

/// Every sibling of a key, winner first, with values loaded in that order while their total
/// stays within the budget; the first value that would cross it and every later one are left
/// out (listed with their length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiblingsRead {
    /// The key.
    pub key: String,
    /// Siblings, winner first, the rest in dot order. Never empty.
    pub siblings: Vec<SiblingRead>,
}

impl SiblingsRead {
    /// True when some value was left out.
    pub fn is_truncated(&self) -> bool {
        self.siblings.iter().any(SiblingRead::is_omitted)
    }

    /// True when some sibling is not a tombstone.
    pub fn any_live(&self) -> bool {
        self.siblings.iter().any(|s| !s.is_deleted())
    }
}

fn corrupt(coll: &str, key: &str, detail: &str) -> ReplicaError {
    ReplicaError::Corrupt {
        what: format!("{coll}/{key}"),
        detail: detail.to_owned(),
    }
}

/// The stored siblings of a key, winner first and the rest in dot order; `None` when the
/// key was never written.
pub(crate) fn stored(
    store: &dyn Store,
    coll: &str,
    key: &str,
) -> Result<Option<Vec<StoredSibling>>, ReplicaError> {
    match store.get(&keys::record(coll, key))? {
        None => Ok(None),
        Some(raw) => {
            let siblings = decode_siblings(&raw, &format!("{coll}/{key}"))?;
            winner_first(coll, key, siblings).map(Some)
        }
    }
}

fn winner_first(
    coll: &str,
    key: &str,
    mut siblings: Vec<StoredSibling>,
) -> Result<Vec<StoredSibling>, ReplicaError> {
    let win = merge::winner(&siblings)
        .map(|w| w.header.dot.clone())
        .ok_or_else(|| corrupt(coll, key, "empty sibling set"))?;
    if let Some(at) = siblings.iter().position(|s| s.header.dot == win) {
        let w = siblings.remove(at);
        siblings.insert(0, w);
    }
    Ok(siblings)
}

/// `s` as listed by a bounded read, its value not loaded yet.
pub(crate) fn sibling_read(s: &StoredSibling) -> SiblingRead {
    SiblingRead {
        dot: s.header.dot.clone(),
        hlc: s.header.hlc,
        len: value_len(s),
        value: None,
        author: s.author.clone(),
    }
}

fn value_len(s: &StoredSibling) -> Option<u64> {
    match s.header.value {
        ValueMeta::Present { len, .. } => Some(len),
        ValueMeta::Tombstone => None,
    }
}

/// Every sibling of `key` with every value loaded, or `None` when the key was never written.
/// Unbounded (as many values as the key has siblings): for tests and internal use; the API
/// reads with [`winner`] and [`siblings`].
pub(crate) fn record(
    store: &dyn Store,
    coll: &str,
    key: &str,
) -> Result<Option<Record>, ReplicaError> {
    let Some(siblings) = stored(store, coll, key)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(siblings.len());
    for s in siblings {
        let value = load_value(store, coll, &s)?;
        out.push(Sibling {
            dot: s.header.dot,
            hlc: s.header.hlc,
            value,
            author: s.author,
        });
    }
    Ok(Some(Record {
        key: key.to_owned(),
        siblings: out,
    }))
}

/// The winner of `key` with its value and the number of siblings (their values not loaded),
/// or `None` when the key was never written.
pub(crate) fn winner(
    store: &dyn Store,
    coll: &str,
    key: &str,
) -> Result<Option<WinnerRead>, ReplicaError> {
    match stored(store, coll, key)? {
        None => Ok(None),
        Some(siblings) => to_winner(store, coll, key, siblings).map(Some),
    }
}

fn to_winner(
    store: &dyn Store,
    coll: &str,
    key: &str,
    mut siblings: Vec<StoredSibling>,
) -> Result<WinnerRead, ReplicaError> {
    let count = siblings.len();
    // Invariant: `stored` and `winner_first` never return an empty set.
    let w = siblings.swap_remove(0);
    let value = load_value(store, coll, &w)?;
    Ok(WinnerRead {
        key: key.to_owned(),
        sibling: Sibling {
            dot: w.header.dot,
            hlc: w.header.hlc,
            value,
            author: w.author,
        },
        siblings: count,
    })
}

/// Every sibling of `key`, winner first, values loaded in order while their total stays
/// within `max_bytes` (see [`SiblingsRead`]); `None` when the key was never written.
pub(crate) fn siblings(
    store: &dyn Store,
    coll: &str,
    key: &str,
    max_bytes: usize,
) -> Result<Option<SiblingsRead>, ReplicaError> {
    let Some(stored) = stored(store, coll, key)? else {
        return Ok(None);
    };
    let mut used: u64 = 0;
    let mut full = false;
    let mut out = Vec::with_capacity(stored.len());
    for s in stored {
        let len = value_len(&s);
        let mut value = None;
        if let Some(n) = len {
            full = full || used.saturating_add(n) > max_bytes as u64;
            if !full {
                used += n;
                value = load_value(store, coll, &s)?;
            }
        }
        out.push(SiblingRead {
            dot: s.header.dot,
            hlc: s.header.hlc,
            len,
            value,
            author: s.author,
        });
    }
    Ok(Some(SiblingsRead {
        key: key.to_owned(),
        siblings: out,
    }))
}

/// The sibling `dot` of `key` with its value; `None` when the key has no such current
/// sibling (never written, or superseded since).
pub(crate) fn sibling(
    store: &dyn Store,
    coll: &str,
    key: &str,
    dot: &Dot,
) -> Result<Option<Sibling>, ReplicaError> {
    let Some(stored) = stored(store, coll, key)? else {
        return Ok(None);
    };
    let Some(s) = stored.into_iter().find(|s| s.header.dot == *dot) else {
        return Ok(None);
    };
    let value = load_value(store, coll, &s)?;
    Ok(Some(Sibling {
        dot: s.header.dot,
        hlc: s.header.hlc,
        value,
        author: s.author,
    }))
}

pub(crate) fn load_value(
    store: &dyn Store,
    coll: &str,
    s: &StoredSibling,
) -> Result<Option<Vec<u8>>, ReplicaError> {
    let bytes = match &s.body {
        Body::None => return Ok(None),
        // An inline value is part of the sibling record itself, whose bytes sled checksums in
        // its log like the header holding the hash: re-hashing it on every read (each version
        // sent to every peer) only costs CPU, so only its length is checked.
        Body::Inline(v) => {
            let len_matches = matches!(
                s.header.value,
                ValueMeta::Present { len, .. } if u64::try_from(v.len()) == Ok(len)
            );
            if !len_matches {
                return Err(ReplicaError::Corrupt {
                    what: format!("{coll} value of {}", s.header.dot),
                    detail: "stored bytes do not match the version's length".into(),
                });
            }
            return Ok(Some(v.clone()));
        }
        Body::Chunked { chunks } => {
            let prefix = keys::chunk_prefix(coll, &s.header.dot);
            let end = prefix_end(&prefix);
            let rows = store.range(&prefix, end.as_deref(), *chunks as usize + 1)?;
            let mut out = Vec::new();
            for (_, piece) in rows {
                out.extend_from_slice(&piece);
            }
            out
        }
    };
    if ValueMeta::of(Some(&bytes)) != s.header.value {
        return Err(ReplicaError::Corrupt {
            what: format!("{coll} value of {}", s.header.dot),
            detail: "stored bytes do not match the version's length and hash".into(),
        });
    }
    Ok(Some(bytes))
}

/// Value bytes a filtered scan page loads at most to test records against its `where`
/// expressions, beyond the first record tested: past it the page ends early with a `next`
/// cursor, so a filter that matches little still costs a bounded amount of work per page.
pub const SCAN_FILTER_BYTES: usize = 64 << 20;

/// What a walk hands each row to: its key and stored siblings (winner first).
type Visit<'a> = dyn FnMut(&str, Vec<StoredSibling>) -> Result<Step, ReplicaError> + 'a;

/// What a visit of one row tells [`walk`].
enum Step {
    /// Go on with the next row.
    Next,
    /// End the page before this row: it is not consumed, the next page starts with it.
    Stop,
}

/// Walks the rows of `coll` whose key starts with `prefix` and sorts after `after`, in key
/// order, handing each key and its stored siblings (winner first) to `visit`, at most
/// `max_examined` of them. Returns the page's `next` cursor: `None` when the range ended,
/// else the last key visited, so the following page skips the keys this one walked over
/// (deleted ones included).
fn walk(
    store: &dyn Store,
    coll: &str,
    prefix: &str,
    after: Option<&str>,
    max_examined: usize,
    visit: &mut Visit<'_>,
) -> Result<Option<String>, ReplicaError> {
    let base = keys::record_prefix(coll);
    let mut want = base.clone();
    want.extend_from_slice(prefix.as_bytes());
    let end = prefix_end(&want);
    let mut start = want.clone();
    if let Some(a) = after {
        let mut after_key = base.clone();
        after_key.extend_from_slice(a.as_bytes());
        after_key.push(0);
        start = start.max(after_key);
    }
    let max_examined = max_examined.max(1);
    let mut examined = 0usize;
    let mut last_examined: Option<String> = None;
    loop {
        // One row more than the examined allowance, to learn whether the range goes on.
        let want_rows = SCAN_BATCH.min(max_examined.saturating_sub(examined) + 1);
        let rows = store.range(&start, end.as_deref(), want_rows)?;
        let exhausted = rows.len() < want_rows;
        for (k, raw) in &rows {
            let key = std::str::from_utf8(&k[base.len()..]).map_err(|e| ReplicaError::Corrupt {
                what: format!("{coll} key"),
                detail: e.to_string(),
            })?;
            if examined >= max_examined {
                return Ok(last_examined);
            }
            examined += 1;
            let siblings =
                winner_first(coll, key, decode_siblings(raw, &format!("{coll}/{key}"))?)?;
            match visit(key, siblings)? {
                Step::Next => last_examined = Some(key.to_owned()),
                Step::Stop => return Ok(last_examined),
            }
        }
        match rows.last() {
            Some((k, _)) if !exhausted => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(None),
        }
    }
}

/// One page of the live records of `coll` whose key starts with `prefix`, sorts after
/// `after` and whose winner's value matches `filter`, in key order, within `budget`: each
/// record's winner with its value and its sibling count. `next` is set when the page ended
/// before the end of the range (limit, byte budget, rows examined or, with a filter, the
/// [`SCAN_FILTER_BYTES`] tested reached); it is the last key examined, so the following page
/// skips the deleted and unmatched keys this one already walked over.
pub(crate) fn scan(
    store: &dyn Store,
    coll: &str,
    prefix: &str,
    after: Option<&str>,
    budget: ScanBudget,
    filter: &Filter,
) -> Result<ScanPage, ReplicaError> {
    collect(store, coll, budget, filter, |visit| {
        walk(store, coll, prefix, after, budget.max_examined, visit)
    })
}

/// [`scan`] with the candidates taken from the index `plan` names (see
/// [`super::index::plan`]): the entries in its range after its position, in index order,
/// whose key starts with `prefix`; each candidate's winner is tested against `filter` as the
/// scan tests it, within the same `budget` (entries examined count as rows).
pub(crate) fn scan_index(
    store: &dyn Store,
    coll: &str,
    plan: &IndexPlan,
    prefix: &str,
    budget: ScanBudget,
    filter: &Filter,
) -> Result<ScanPage, ReplicaError> {
    collect(store, coll, budget, filter, |visit| {
        let first_batch = budget.limit.saturating_add(1);
        walk_index(
            store,
            coll,
            plan,
            prefix,
            (first_batch, budget.max_examined),
            visit,
        )
    })
}

/// One page of the live records handed over by `rows` (a walk in key or index order) whose
/// winner's value matches `filter`, within `budget`; `rows` returns the page's `next`.
fn collect(
    store: &dyn Store,
    coll: &str,
    budget: ScanBudget,
    filter: &Filter,
    rows: impl FnOnce(&mut Visit<'_>) -> Result<Option<String>, ReplicaError>,
) -> Result<ScanPage, ReplicaError> {
    let limit = budget.limit.max(1);
    let mut records: Vec<WinnerRead> = Vec::new();
    let mut bytes = 0u64;
    let mut tested = 0u64;
    let next = rows(&mut |key, siblings| {
        let Some(len) = value_len(&siblings[0]) else {
            return Ok(Step::Next);
        };
        if records.len() >= limit {
            return Ok(Step::Stop);
        }
        let size = len.saturating_add(key.len() as u64);
        let over_bytes = |bytes: u64| bytes.saturating_add(size) > budget.max_bytes as u64;
        let read = if filter.is_empty() {
            if !records.is_empty() && over_bytes(bytes) {
                return Ok(Step::Stop);
            }
            to_winner(store, coll, key, siblings)?
        } else {
            // A walk ends a page only after a row was visited (`tested > 0`), so every page
            // moves on.
            if tested > 0 && tested.saturating_add(len) > budget.max_filter_bytes as u64 {
                return Ok(Step::Stop);
            }
            tested = tested.saturating_add(len);
            let read = to_winner(store, coll, key, siblings)?;
            if !filter.matches(read.sibling.value.as_deref()) {
                return Ok(Step::Next);
            }
            if !records.is_empty() && over_bytes(bytes) {
                return Ok(Step::Stop);
            }
            read
        };
        bytes = bytes.saturating_add(size);
        records.push(read);
        Ok(Step::Next)
    })?;
    Ok(ScanPage { records, next })
}

/// Walks the entries of the index `plan` names, in index order from its position (or the
/// start of its range), handing the key of each entry whose key starts with `prefix` and that
/// is still held to `visit` with its stored siblings (winner first), at most `max_examined`
/// entries, reading `first_batch` entries first (about a page) and more after. Returns the page's `next` cursor (see [`IndexPlan::cursor`]) as [`walk`] does.
fn walk_index(
    store: &dyn Store,
    coll: &str,
    plan: &IndexPlan,
    prefix: &str,
    (first_batch, max_examined): (usize, usize),
    visit: &mut Visit<'_>,
) -> Result<Option<String>, ReplicaError> {
    let base = keys::index_prefix(coll, &plan.pointer);
    let at = |position: &[u8]| {
        let mut k = base.clone();
        k.extend_from_slice(position);
        k
    };
    let mut start = at(&plan.range.start);
    let mut end = at(&plan.range.end);
    if let Some(bucket) = &plan.bucket {
        // In key order: the prefix is a range of the bucket.
        let mut want = bucket.clone();
        want.extend_from_slice(prefix.as_bytes());
        let want = at(&want);
        if let Some(past) = prefix_end(&want) {
            end = end.min(past);
        }
        start = start.max(want);
    }
    if let Some(after) = &plan.after {
        let mut first = at(after);
        first.push(0);
        start = start.max(first);
    }
    let max_examined = max_examined.max(1);
    let mut examined = 0usize;
    let mut last: Option<Vec<u8>> = None;
    let cursor = |last: Option<Vec<u8>>| last.and_then(|p| plan.cursor(&p));
    // The first batch is about one page: an index range holds mostly matches.
    let mut batch = first_batch.clamp(1, SCAN_BATCH);
    while start < end {
        let want_rows = batch.min(max_examined.saturating_sub(examined) + 1);
        batch = SCAN_BATCH;
        let rows = store.range(&start, Some(&end), want_rows)?;
        let exhausted = rows.len() < want_rows;
        // The entries this walk may examine, then their records, read together.
        let taken = rows.len().min(max_examined - examined);
        let entries = rows
            .iter()
            .take(taken)
            .map(|(k, _)| {
                let position = &k[base.len()..];
                index_order::encoded_len(position)
                    .and_then(|len| std::str::from_utf8(&position[len..]).ok())
                    .map(|key| (position, key))
                    .ok_or_else(|| ReplicaError::Corrupt {
                        what: format!("{coll} index {} entry", plan.pointer),
                        detail: "not an encoded value and a key".into(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let wanted: Vec<&str> = entries
            .iter()
            .map(|(_, key)| *key)
            .filter(|key| key.starts_with(prefix))
            .collect();
        let mut records = stored_many(store, coll, &wanted)?.into_iter();
        for (position, key) in entries {
            examined += 1;
            if key.starts_with(prefix) {
                if let Some(siblings) = records.next().flatten() {
                    if let Step::Stop = visit(key, siblings)? {
                        return Ok(cursor(last));
                    }
                }
            }
            last = Some(position.to_vec());
        }
        if rows.len() > taken {
            // The examination budget ends before this batch does.
            return Ok(cursor(last));
        }
        match rows.last() {
            Some((k, _)) if !exhausted => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Reads at or above this many records at once are split over two threads: the records of
/// an index page are scattered over the key space, so each is mostly a cache miss of its own.
const PARALLEL_READS: usize = 16;

/// [`stored`] of each of `keys`, in order; many are read on two threads.
fn stored_many(
    store: &dyn Store,
    coll: &str,
    keys: &[&str],
) -> Result<Vec<Option<Vec<StoredSibling>>>, ReplicaError> {
    let read = |keys: &[&str]| -> Result<Vec<_>, ReplicaError> {
        keys.iter().map(|key| stored(store, coll, key)).collect()
    };
    if keys.len() < PARALLEL_READS {
        return read(keys);
    }
    let (first, second) = keys.split_at(keys.len() / 2);
    let (first, second) = std::thread::scope(|s| {
        let other = s.spawn(|| read(second));
        let first = read(first);
        (first, other.join())
    });
    let mut all = first?;
    all.extend(second.map_err(|_| ReplicaError::Closed)??);
    Ok(all)
}

/// One page of the keys of `coll` (starting with `prefix`, after `after`) that have two or
/// more siblings, tombstones included, in key order: each with every sibling's version,
/// HLC, author and length (no value). At most `limit` keys and [`SCAN_MAX_EXAMINED`] rows
/// examined; `next` as for [`scan`].
pub(crate) fn conflicts(
    store: &dyn Store,
    coll: &str,
    prefix: &str,
    after: Option<&str>,
    budget: ScanBudget,
) -> Result<ConflictsPage, ReplicaError> {
    let limit = budget.limit.max(1);
    let mut conflicts: Vec<SiblingsRead> = Vec::new();
    let next = walk(
        store,
        coll,
        prefix,
        after,
        budget.max_examined,
        &mut |key, siblings| {
            if siblings.len() < 2 {
                return Ok(Step::Next);
            }
            if conflicts.len() >= limit {
                return Ok(Step::Stop);
            }
            conflicts.push(SiblingsRead {
                key: key.to_owned(),
                siblings: siblings
                    .into_iter()
                    .map(|s| SiblingRead {
                        len: value_len(&s),
                        dot: s.header.dot,
                        hlc: s.header.hlc,
                        value: None,
                        author: s.author,
                    })
                    .collect(),
            });
            Ok(Step::Next)
        },
    )?;
    Ok(ConflictsPage { conflicts, next })
}

/// A page of keys with siblings: the answer of [`conflicts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictsPage {
    /// Keys with two or more siblings, in key order, their siblings winner first without
    /// values.
    pub conflicts: Vec<SiblingsRead>,
    /// The `after` of the following page; `None` at the end of the range.
    pub next: Option<String>,
}

pub(crate) fn collections(store: &dyn Store) -> Result<Vec<CollectionInfo>, ReplicaError> {
    let prefix = [keys::COLLECTION];
    let end = prefix_end(&prefix);
    let mut out = Vec::new();
    let mut start = prefix.to_vec();
    loop {
        let rows = store.range(&start, end.as_deref(), SCAN_BATCH)?;
        for (k, raw) in &rows {
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            let meta = codec::decode(raw).map_err(|e| ReplicaError::Corrupt {
                what: format!("collection {name} state"),
                detail: e.to_string(),
            })?;
            out.push(CollectionInfo { name, meta });
        }
        match rows.last() {
            Some((k, _)) if rows.len() == SCAN_BATCH => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// A read-only view of a store that allows a few point reads and no range (a large value's
/// chunks): past that every read fails and the view says it was exhausted, so the caller
/// can run the whole read again elsewhere.
pub(crate) struct Budgeted {
    inner: std::sync::Arc<dyn Store>,
    left: std::sync::atomic::AtomicU32,
    exhausted: std::sync::atomic::AtomicBool,
}

impl Budgeted {
    pub(crate) fn new(inner: std::sync::Arc<dyn Store>, reads: u32) -> Self {
        Self {
            inner,
            left: reads.into(),
            exhausted: false.into(),
        }
    }

    /// Whether a read was refused for want of budget (the result is then not to be used).
    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn spend(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let spent = self
            .left
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if spent {
            Ok(())
        } else {
            self.exhausted.store(true, Relaxed);
            Err(StoreError::Io(
                "read budget of the calling task spent".into(),
            ))
        }
    }
}

impl Store for Budgeted {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.spend()?;
        self.inner.get(key)
    }

    fn range(
        &self,
        _start: &[u8],
        _end: Option<&[u8]>,
        _limit: usize,
    ) -> Result<crate::store::Rows, StoreError> {
        self.left.store(0, std::sync::atomic::Ordering::Relaxed);
        self.spend().map(|()| Vec::new())
    }

    fn apply(&self, _batch: crate::store::WriteBatch) -> Result<(), StoreError> {
        Err(StoreError::Io("a read-only view cannot write".into()))
    }

    fn sync(&self) -> Result<(), StoreError> {
        Err(StoreError::Io("a read-only view cannot sync".into()))
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn versions_since(
    store: &dyn Store,
    coll: &str,
    origin: &officesync_protocol::ReplicaId,
    after: u64,
    through: u64,
    max_versions: usize,
    max_bytes: usize,
) -> Result<(Vec<officesync_protocol::Version>, u64), ReplicaError> {
    let mut out = Vec::new();
    if through <= after {
        return Ok((out, through));
    }
    // Rows of the dot index from the one holding `after + 1` to the one holding `through`.
    let start = keys::dot_block(coll, origin, after + 1);
    let mut end = keys::dot_block(coll, origin, through);
    end.push(0);
    let corrupt = |detail: String| ReplicaError::Corrupt {
        what: format!("{coll} dot index"),
        detail,
    };
    let mut bytes = 0usize;
    let mut cursor = start;
    loop {
        let rows = store.range(&cursor, Some(&end), SCAN_BATCH)?;
        for (k, row) in &rows {
            let block = keys::counter_of_dot_key(k).ok_or_else(|| corrupt("short key".into()))?;
            for (offset, key) in super::dots::decode_row(row)? {
                let counter = super::dots::counter_at(block, offset);
                if counter <= after || counter > through {
                    continue;
                }
                if out.len() >= max_versions || (bytes >= max_bytes && !out.is_empty()) {
                    return Ok((out, counter - 1));
                }
                let dot = officesync_protocol::Dot::new(origin.clone(), counter);
                let Some(raw) = store.get(&keys::record(coll, &key))? else {
                    continue;
                };
                let siblings = decode_siblings(&raw, &format!("{coll}/{key}"))?;
                // Superseded since the index was read: the superseding version goes out in its
                // own origin's stream.
                let Some(s) = siblings.into_iter().find(|s| s.header.dot == dot) else {
                    continue;
                };
                let value = load_value(store, coll, &s)?;
                bytes += value.as_ref().map_or(0, Vec::len) + key.len();
                out.push(officesync_protocol::Version {
                    collection: coll.to_owned(),
                    key,
                    dot,
                    hlc: s.header.hlc,
                    context: s.header.context,
                    value,
                    author: s.author,
                    signature: s.signature,
                });
            }
        }
        match rows.last() {
            Some((k, _)) if rows.len() == SCAN_BATCH => {
                cursor = k.clone();
                cursor.push(0);
            }
            _ => return Ok((out, through)),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use officesync_protocol::{ReplicaId, Version, VersionVector};

    use super::*;
    use crate::replica::{now_ms, Replica, ReplicaOptions};
    use crate::store::{MemoryStore, Rows, StoreError, WriteBatch};

    /// A memory store that counts the value bytes of chunk rows it hands out.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        chunk_bytes: AtomicU64,
    }

    impl Counting {
        fn take(&self) -> u64 {
            self.chunk_bytes.swap(0, Ordering::Relaxed)
        }
    }

    impl Store for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn range(
            &self,
            start: &[u8],
            end: Option<&[u8]>,
            limit: usize,
        ) -> Result<Rows, StoreError> {
            let rows = self.inner.range(start, end, limit)?;
            let chunks: usize = rows
                .iter()
                .filter(|(k, _)| k.first() == Some(&keys::CHUNK))
                .map(|(_, v)| v.len())
                .sum();
            self.chunk_bytes.fetch_add(chunks as u64, Ordering::Relaxed);
            Ok(rows)
        }
        fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
            self.inner.apply(batch)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.inner.sync()
        }
        fn size_on_disk(&self) -> u64 {
            0
        }
    }

    fn open() -> (Arc<Counting>, Replica) {
        let store = Arc::new(Counting::default());
        let mut opts = ReplicaOptions::new("hub");
        opts.max_value_bytes = 6 << 20;
        let r = Replica::open(store.clone(), opts).expect("open");
        (store, r)
    }

    /// Version 1 of `origin` for `key` in `docs`, concurrent with every other.
    pub(in crate::replica) fn concurrent(
        origin: &str,
        ms: u64,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Version {
        Version {
            collection: "docs".into(),
            key: key.into(),
            dot: Dot::new(ReplicaId::new(origin, 1).expect("valid"), 1),
            hlc: Hlc { ms, logical: 0 },
            context: VersionVector::new(),
            value,
            author: None,
            signature: None,
        }
    }

    /// `n` concurrent siblings of `key`, sibling `i` holding `len` bytes of `i`; the last one
    /// (highest HLC) wins.
    async fn siblings_of(r: &Replica, key: &str, n: u8, len: usize) {
        let ms = now_ms() - 60_000;
        let versions = (0..n)
            .map(|i| {
                let origin = format!("office-{i}");
                concurrent(&origin, ms + u64::from(i), key, Some(vec![i; len]))
            })
            .collect();
        let report = r.apply_remote(versions, Vec::new()).await.expect("apply");
        assert_eq!(report.applied, u64::from(n), "{report:?}");
    }

    #[tokio::test]
    async fn a_read_past_the_inline_budget_is_done_again_in_full() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let r = Replica::open(store.clone(), ReplicaOptions::new("hefei")).expect("open");
        let big = vec![9u8; 5 * crate::replica::CHUNK_SIZE];
        r.write("situation", "big", Some(big.clone()))
            .await
            .expect("write");
        r.write("situation", "small", Some(b"s".to_vec()))
            .await
            .expect("write");

        let small = Budgeted::new(store.clone(), 1);
        let rec = record(&small, "situation", "small").expect("read");
        assert!(!small.exhausted(), "one record read fits the budget");
        assert_eq!(
            rec.expect("held").winner().value.as_deref(),
            Some(&b"s"[..])
        );
        let large = Budgeted::new(store.clone(), 1);
        let _ = record(&large, "situation", "big");
        assert!(large.exhausted(), "a chunked value is not read on the task");
        // Through the replica, the large read is done again off the task, in full.
        let rec = r.get("situation", "big").await.expect("get").expect("held");
        assert_eq!(rec.winner().value.as_deref(), Some(&big[..]));
    }

    #[tokio::test]
    async fn a_plain_read_loads_only_the_winner_value() {
        let (store, r) = open();
        siblings_of(&r, "k", 6, 100_000).await;
        store.take();
        let read = winner(store.as_ref(), "docs", "k")
            .expect("read")
            .expect("present");
        assert_eq!(read.siblings, 6);
        assert_eq!(read.winner().value, Some(vec![5; 100_000]));
        assert_eq!(store.take(), 100_000, "only the winner's chunks are read");
        let all = record(store.as_ref(), "docs", "k")
            .expect("read")
            .expect("present");
        assert_eq!(all.siblings.len(), 6);
        assert_eq!(store.take(), 600_000);
    }

    #[tokio::test]
    async fn every_sibling_is_listed_but_values_stop_at_the_budget() {
        let (store, r) = open();
        siblings_of(&r, "k", 5, 3 << 20).await;
        r.apply_remote(
            vec![concurrent("gone", now_ms() - 120_000, "k", None)],
            Vec::new(),
        )
        .await
        .expect("tombstone");
        store.take();
        let read = siblings(store.as_ref(), "docs", "k", 8 << 20)
            .expect("read")
            .expect("present");
        assert_eq!(read.siblings.len(), 6);
        let loaded: Vec<bool> = read.siblings.iter().map(|s| s.value.is_some()).collect();
        // The winner, then in dot order: the tombstone of `gone`, then `office-0..=3`.
        assert_eq!(loaded, [true, false, true, false, false, false]);
        assert_eq!(
            read.siblings[0].value,
            Some(vec![4; 3 << 20]),
            "winner first"
        );
        let omitted: Vec<bool> = read.siblings.iter().map(SiblingRead::is_omitted).collect();
        assert_eq!(omitted, [false, false, false, true, true, true]);
        assert!(read.siblings[1].is_deleted());
        assert!(read.is_truncated() && read.any_live());
        assert_eq!(store.take(), 6 << 20, "values past the budget are not read");
        // A budget of 0 reads headers only; a large one reads every value.
        let headers = siblings(store.as_ref(), "docs", "k", 0)
            .expect("read")
            .expect("present");
        assert!(headers.siblings.iter().all(|s| s.value.is_none()));
        assert_eq!(store.take(), 0);
        let whole = siblings(store.as_ref(), "docs", "k", 64 << 20)
            .expect("read")
            .expect("present");
        assert!(!whole.is_truncated());
        // Any listed sibling can be fetched on its own.
        let third = &read.siblings[4];
        let one = sibling(store.as_ref(), "docs", "k", &third.dot)
            .expect("read")
            .expect("current");
        assert_eq!(one.value.map(|v| v.len() as u64), third.len);
        let unknown = Dot::new(ReplicaId::new("nobody", 1).expect("valid"), 1);
        assert!(sibling(store.as_ref(), "docs", "k", &unknown)
            .expect("read")
            .is_none());
    }

    /// Every page of a scan of `docs` under `budget`, following `next` to the end.
    fn pages(store: &dyn Store, budget: ScanBudget) -> Vec<ScanPage> {
        pages_where(store, budget, &Filter::default())
    }

    /// Every page of a scan of `docs` under `budget` with `filter`, following `next`.
    fn pages_where(store: &dyn Store, budget: ScanBudget, filter: &Filter) -> Vec<ScanPage> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = scan(store, "docs", "", after.as_deref(), budget, filter).expect("scan");
            let next = page.next.clone();
            out.push(page);
            assert!(out.len() < 1000, "the scan never ends");
            match next {
                Some(n) => {
                    assert!(after.as_deref() < Some(n.as_str()), "next goes forward");
                    after = Some(n);
                }
                None => return out,
            }
        }
    }

    fn keys_of(pages: &[ScanPage]) -> Vec<String> {
        pages
            .iter()
            .flat_map(|p| p.records.iter().map(|r| r.key.clone()))
            .collect()
    }

    #[tokio::test]
    async fn scan_pages_end_at_the_byte_budget_with_at_least_one_record() {
        let (store, r) = open();
        for i in 0..10u8 {
            r.write("docs", &format!("k{i}"), Some(vec![i; 1 << 20]))
                .await
                .expect("write");
        }
        r.write("docs", "k5", Some(vec![5; 5 << 20]))
            .await
            .expect("big");
        siblings_of(&r, "k7", 4, 1 << 20).await;
        let budget = ScanBudget {
            limit: 1000,
            max_bytes: 3 << 20,
            max_examined: 1000,
            max_filter_bytes: SCAN_FILTER_BYTES,
        };
        let pages = pages(store.as_ref(), budget);
        let sizes: Vec<usize> = pages.iter().map(|p| p.records.len()).collect();
        // 1 MiB values, two per 3 MiB page (with their keys); the 5 MiB one (k5) alone.
        assert_eq!(sizes, [2, 2, 1, 1, 2, 2], "records per page");
        let want: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        assert_eq!(keys_of(&pages), want);
        for p in &pages {
            let bytes: usize = p
                .records
                .iter()
                .map(|r| r.winner().value.as_ref().map_or(0, Vec::len))
                .sum();
            assert!(
                p.records.len() == 1 || bytes <= 3 << 20,
                "{bytes} bytes in a page"
            );
        }
        let k7 = pages
            .iter()
            .flat_map(|p| &p.records)
            .find(|r| r.key == "k7")
            .expect("k7");
        assert_eq!(k7.siblings, 5, "siblings counted");
    }

    #[tokio::test]
    async fn scan_pages_end_after_max_examined_rows_even_without_records() {
        let (_store, r) = open();
        for i in 0..95 {
            let key = format!("k{i:03}");
            r.write("docs", &key, Some(b"v".to_vec()))
                .await
                .expect("write");
            if i % 19 != 0 {
                r.write("docs", &key, None).await.expect("delete");
            }
        }
        let budget = ScanBudget {
            limit: 1000,
            max_bytes: SCAN_PAGE_BYTES,
            max_examined: 10,
            max_filter_bytes: SCAN_FILTER_BYTES,
        };
        let pages = pages(r.store().as_ref(), budget);
        assert_eq!(pages.len(), 10, "95 keys, 10 examined per page");
        assert!(pages
            .iter()
            .any(|p| p.records.is_empty() && p.next.is_some()));
        assert_eq!(keys_of(&pages), ["k000", "k019", "k038", "k057", "k076"]);
        // The limit still holds, and the page after it starts where it stopped.
        let limited = pages_with_limit(r.store().as_ref(), 2);
        assert_eq!(limited, ["k000", "k019", "k038", "k057", "k076"]);
    }

    fn pages_with_limit(store: &dyn Store, limit: usize) -> Vec<String> {
        let pages = pages(store, ScanBudget::new(limit));
        assert!(pages.iter().all(|p| p.records.len() <= limit));
        keys_of(&pages)
    }

    #[tokio::test]
    async fn a_filtered_scan_keeps_the_examined_bound_and_its_cursor() {
        let (_store, r) = open();
        for i in 0..50u32 {
            let value = format!(r#"{{"level_m":{i},"river":"r{}"}}"#, i % 5);
            r.write("docs", &format!("k{i:03}"), Some(value.into_bytes()))
                .await
                .expect("write");
        }
        r.write("docs", "text", Some(b"level_m=60".to_vec()))
            .await
            .expect("write");
        let filter = Filter::parse(&["/level_m>=40", "/river!=\"r1\""]).expect("valid");
        let budget = ScanBudget {
            limit: 1000,
            max_bytes: SCAN_PAGE_BYTES,
            max_examined: 7,
            max_filter_bytes: SCAN_FILTER_BYTES,
        };
        let pages = pages_where(r.store().as_ref(), budget, &filter);
        assert_eq!(pages.len(), 8, "51 keys, 7 examined per page");
        assert!(pages
            .iter()
            .any(|p| p.records.is_empty() && p.next.is_some()));
        let want: Vec<String> = (40..50)
            .filter(|i| i % 5 != 1)
            .map(|i| format!("k{i:03}"))
            .collect();
        assert_eq!(keys_of(&pages), want, "matches, in key order, none twice");
        // The limit counts matches only.
        let limited = ScanBudget::new(3);
        let first = scan(r.store().as_ref(), "docs", "", None, limited, &filter).expect("scan");
        assert_eq!(keys_of(std::slice::from_ref(&first)), want[..3]);
        assert_eq!(first.next.as_deref(), Some("k043"));
    }

    #[tokio::test]
    async fn a_filtered_scan_stops_at_the_tested_bytes() {
        let (_store, r) = open();
        for i in 0..6u8 {
            let mut value = format!(r#"{{"n":{i},"pad":""#).into_bytes();
            value.extend(std::iter::repeat_n(b'x', 1000));
            value.extend_from_slice(b"\"}");
            r.write("docs", &format!("k{i}"), Some(value))
                .await
                .expect("write");
        }
        let filter = Filter::parse(&["/n>=4"]).expect("valid");
        let budget = ScanBudget {
            limit: 1000,
            max_bytes: SCAN_PAGE_BYTES,
            max_examined: 1000,
            max_filter_bytes: 2500,
        };
        let pages = pages_where(r.store().as_ref(), budget, &filter);
        // About 1 KiB per value: two tested per page.
        assert_eq!(
            pages.len(),
            3,
            "{:?}",
            pages.iter().map(|p| &p.next).collect::<Vec<_>>()
        );
        assert_eq!(keys_of(&pages), ["k4", "k5"]);
    }

    #[tokio::test]
    async fn conflicts_list_keys_with_siblings_without_values() {
        let (_store, r) = open();
        for i in 0..20u32 {
            r.write("docs", &format!("a{i:02}"), Some(b"v".to_vec()))
                .await
                .expect("write");
        }
        siblings_of(&r, "a05", 3, 10).await;
        siblings_of(&r, "a17", 2, 10).await;
        let budget = ScanBudget {
            limit: 1000,
            max_bytes: SCAN_PAGE_BYTES,
            max_examined: 6,
            max_filter_bytes: SCAN_FILTER_BYTES,
        };
        let mut after: Option<String> = None;
        let mut found = Vec::new();
        let mut pages = 0;
        loop {
            let page = conflicts(r.store().as_ref(), "docs", "", after.as_deref(), budget)
                .expect("conflicts");
            pages += 1;
            for c in page.conflicts {
                assert!(c.siblings.iter().all(|s| s.value.is_none()), "no values");
                found.push((c.key, c.siblings.len()));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 4, "20 keys, 6 examined per page");
        // The local write and the concurrent remote ones.
        assert_eq!(found, [("a05".to_owned(), 4), ("a17".to_owned(), 3)]);
        let one =
            conflicts(r.store().as_ref(), "docs", "", None, ScanBudget::new(1)).expect("conflicts");
        assert_eq!(one.conflicts.len(), 1);
        // The page ends before the next conflict (a17): after the last key examined.
        assert_eq!(one.next.as_deref(), Some("a16"));
    }
}
