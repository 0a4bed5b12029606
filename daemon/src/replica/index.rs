//! Secondary indexes on declared JSON fields (`[indexes] situation = ["/river"]`): which
//! entries a record's winner has, their upkeep in the writer's group, their build and drop
//! when the declaration changes, and the choice of an index for a `where` query.
//!
//! **What is indexed.** For each declared pointer of a collection, each key whose winner is
//! live, JSON, and holds a scalar (null, boolean, number, string) at the pointer has one entry
//! `I coll pointer encoded-value key` (layout in [`super::keys`], encoding in
//! [`officesync_protocol::index_order`]). Only the winner is indexed, as a filtered scan
//! tests only the winner: a query from an index returns what the scan returns.
//!
//! **Upkeep.** The writer notes the entries of a key's winner when it first reads the key in
//! a group ([`IndexEdits::note_before`]) and, at commit, writes the difference to the entries
//! of the final winner into the group's batch, atomically with the record. A collection
//! without indexes costs one map lookup per key read.
//!
//! **Declaration changes.** The pointers whose index is complete are listed in the store
//! (`M indexes`). At open, before the writer starts, an index no longer declared is dropped
//! and a declared one not listed is built from the records (after dropping any entries a
//! build cut short left); each is listed once complete. Both are logged.
//!
//! **Queries.** [`plan`] picks an index for a filter: one with an equality on its pointer
//! first (its entries come in key order, so pages are in key order and `next` is a key, as in
//! a scan), else the first with a range (`<`, `<=`, `>`, `>=`; entries come in the order of
//! the value, then the key, and `next` is an opaque cursor starting with [`CURSOR_MARK`]).
//! Every expression is then tested on each candidate's winner, as the scan does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use officesync_protocol::index_order::{self, IndexRange};
use officesync_protocol::query::{Filter, Pointer};
use officesync_protocol::{codec, merge, names, Dot};
use serde_json::Value;

use super::encoding::{decode_siblings, encode, Body, StoredSibling};
use super::{keys, read, ReplicaError};
use crate::store::{prefix_end, Store, WriteBatch};

pub use crate::config::{MAX_INDEXES_PER_COLLECTION, MAX_INDEX_POINTER_BYTES};
/// How the `next` cursor of a page read from an index range starts.
pub const CURSOR_MARK: &str = "idx1.";
/// Longest `after` cursor accepted, in bytes.
pub const MAX_CURSOR_BYTES: usize = 4096;

/// Records read, or entries dropped, per batch of a build or a drop.
const BUILD_BATCH: usize = 512;

/// One declared index: the pointer as written and parsed.
#[derive(Debug, Clone)]
pub(crate) struct Declared {
    text: String,
    pointer: Pointer,
}

/// Every declared index, per collection; fixed for the life of the replica.
#[derive(Debug, Clone, Default)]
pub struct IndexCatalog {
    by_coll: HashMap<String, Vec<Declared>>,
}

impl IndexCatalog {
    /// Checks a declaration (collection → pointers): valid collection names, at most
    /// [`MAX_INDEXES_PER_COLLECTION`] distinct pointers of at most
    /// [`MAX_INDEX_POINTER_BYTES`] each, each usable in a `where` expression.
    pub fn new(declared: &BTreeMap<String, Vec<String>>) -> Result<Self, ReplicaError> {
        let bad = |m: String| ReplicaError::BadIndex(m);
        let mut by_coll = HashMap::new();
        for (coll, pointers) in declared {
            names::validate_collection_name(coll)
                .map_err(|e| bad(format!("indexes.{coll}: {e}")))?;
            if pointers.len() > MAX_INDEXES_PER_COLLECTION {
                return Err(bad(format!(
                    "indexes.{coll}: {} pointers, at most {MAX_INDEXES_PER_COLLECTION}",
                    pointers.len()
                )));
            }
            let mut list: Vec<Declared> = Vec::new();
            for text in pointers {
                if text.len() > MAX_INDEX_POINTER_BYTES {
                    return Err(bad(format!(
                        "indexes.{coll}: pointer {text:?} is longer than \
                         {MAX_INDEX_POINTER_BYTES} bytes"
                    )));
                }
                let pointer = Pointer::parse(text).map_err(|e| {
                    bad(format!(
                        "indexes.{coll}: {text:?} is not a JSON pointer a where expression \
                         can name ({e})"
                    ))
                })?;
                if list.iter().any(|d| d.pointer == pointer) {
                    return Err(bad(format!("indexes.{coll}: {text:?} is declared twice")));
                }
                list.push(Declared {
                    text: text.clone(),
                    pointer,
                });
            }
            if !list.is_empty() {
                by_coll.insert(coll.clone(), list);
            }
        }
        Ok(Self { by_coll })
    }

    /// True when no index is declared.
    pub fn is_empty(&self) -> bool {
        self.by_coll.is_empty()
    }

    /// The indexes of `coll`, if it has any.
    pub(crate) fn of(&self, coll: &str) -> Option<&[Declared]> {
        if self.by_coll.is_empty() {
            return None;
        }
        self.by_coll.get(coll).map(Vec::as_slice)
    }

    /// The pointers indexed in `coll`, as declared.
    pub fn pointers(&self, coll: &str) -> Vec<String> {
        self.of(coll)
            .map(|d| d.iter().map(|d| d.text.clone()).collect())
            .unwrap_or_default()
    }

    fn pairs(&self) -> BTreeSet<(String, String)> {
        self.by_coll
            .iter()
            .flat_map(|(c, ds)| ds.iter().map(move |d| (c.clone(), d.text.clone())))
            .collect()
    }
}

/// The index entries of `key` in `coll` whose winner holds `value` (`None`: a tombstone).
pub(crate) fn entries(
    coll: &str,
    key: &str,
    declared: &[Declared],
    value: Option<&[u8]>,
) -> Vec<Vec<u8>> {
    let Some(bytes) = value else {
        return Vec::new();
    };
    let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
        return Vec::new();
    };
    declared
        .iter()
        .filter_map(|d| {
            let encoded = index_order::encode(d.pointer.resolve(&doc)?)?;
            let mut k = keys::index_prefix(coll, &d.text);
            k.extend_from_slice(&encoded);
            k.extend_from_slice(key.as_bytes());
            Some(k)
        })
        .collect()
}

/// The entries of the winner of `siblings`, its value read from `store` when in chunks. A
/// value that cannot be read has none (a stale entry is harmless: queries test every
/// candidate).
fn winner_entries(
    store: &dyn Store,
    coll: &str,
    key: &str,
    declared: &[Declared],
    siblings: &[StoredSibling],
) -> Vec<Vec<u8>> {
    let Some(w) = merge::winner(siblings) else {
        return Vec::new();
    };
    match &w.body {
        Body::None => Vec::new(),
        Body::Inline(v) => entries(coll, key, declared, Some(v)),
        Body::Chunked { .. } => match read::load_value(store, coll, w) {
            Ok(v) => entries(coll, key, declared, v.as_deref()),
            Err(e) => {
                tracing::warn!(collection = coll, key, error = %e, "cannot index a value");
                Vec::new()
            }
        },
    }
}

/// The index changes of one group of writes.
#[derive(Default)]
pub(crate) struct IndexEdits {
    /// Entries of each key's winner before the group, noted when the group first read it.
    before: HashMap<(String, String), Vec<Vec<u8>>>,
    /// Entries of versions in chunks merged by this group (their chunks are not in the store
    /// yet), by collection, key and dot.
    fresh: HashMap<(String, String, Dot), Vec<Vec<u8>>>,
}

impl IndexEdits {
    /// Notes the entries of `siblings`, the stored set of `key`, when `coll` has indexes.
    pub(crate) fn note_before(
        &mut self,
        catalog: &IndexCatalog,
        store: &dyn Store,
        coll: &str,
        key: &str,
        siblings: &[StoredSibling],
    ) {
        if let Some(declared) = catalog.of(coll) {
            let before = winner_entries(store, coll, key, declared, siblings);
            self.before
                .insert((coll.to_owned(), key.to_owned()), before);
        }
    }

    /// Notes the entries of a new version of `key` whose `value` goes into chunks.
    pub(crate) fn note_chunked(
        &mut self,
        catalog: &IndexCatalog,
        coll: &str,
        key: &str,
        dot: &Dot,
        value: &[u8],
    ) {
        if let Some(declared) = catalog.of(coll) {
            let e = entries(coll, key, declared, Some(value));
            self.fresh
                .insert((coll.to_owned(), key.to_owned(), dot.clone()), e);
        }
    }

    /// Puts into `batch` what turns the entries noted before into those of each key's final
    /// winner in `siblings`.
    pub(crate) fn write(
        &mut self,
        catalog: &IndexCatalog,
        store: &dyn Store,
        siblings: &HashMap<(String, String), Vec<StoredSibling>>,
        batch: &mut WriteBatch,
    ) {
        for ((coll, key), set) in siblings {
            let Some(declared) = catalog.of(coll) else {
                continue;
            };
            let fresh = merge::winner(set).and_then(|w| {
                self.fresh
                    .remove(&(coll.clone(), key.clone(), w.header.dot.clone()))
            });
            let after = fresh.unwrap_or_else(|| winner_entries(store, coll, key, declared, set));
            let before = self
                .before
                .remove(&(coll.clone(), key.clone()))
                .unwrap_or_default();
            for old in &before {
                if !after.contains(old) {
                    batch.remove(old.clone());
                }
            }
            for new in after {
                if !before.contains(&new) {
                    batch.put(new, Vec::new());
                }
            }
        }
    }
}

/// Brings the store's indexes in line with `catalog`: drops those no longer declared, builds
/// those declared but not complete, and lists them. Runs before the writer starts.
pub(crate) fn prepare(store: &dyn Store, catalog: &IndexCatalog) -> Result<(), ReplicaError> {
    let listed_key = keys::meta("indexes");
    let listed: BTreeSet<(String, String)> = match store.get(&listed_key)? {
        None => BTreeSet::new(),
        Some(raw) => codec::decode::<Vec<(String, String)>>(&raw)
            .map_err(|e| ReplicaError::Corrupt {
                what: "list of indexes".into(),
                detail: e.to_string(),
            })?
            .into_iter()
            .collect(),
    };
    let declared = catalog.pairs();
    if listed == declared {
        return Ok(());
    }
    let mut complete: BTreeSet<(String, String)> =
        listed.intersection(&declared).cloned().collect();
    let save = |complete: &BTreeSet<(String, String)>| -> Result<(), ReplicaError> {
        let mut batch = WriteBatch::default();
        batch.put(
            listed_key.clone(),
            encode(&complete.iter().cloned().collect::<Vec<_>>())?,
        );
        store.apply(batch)?;
        Ok(())
    };
    for (coll, pointer) in listed.difference(&declared) {
        let dropped = drop_entries(store, coll, pointer)?;
        tracing::info!(
            collection = %coll,
            pointer = %pointer,
            entries = dropped,
            "dropped the index no longer declared in [indexes]"
        );
    }
    save(&complete)?;
    let mut to_build: BTreeMap<&str, Vec<Declared>> = BTreeMap::new();
    for (coll, pointer) in declared.difference(&listed) {
        // Entries a build cut short may have left.
        drop_entries(store, coll, pointer)?;
        let d = catalog
            .of(coll)
            .and_then(|ds| ds.iter().find(|d| &d.text == pointer))
            .cloned();
        to_build.entry(coll.as_str()).or_default().extend(d);
    }
    for (coll, new) in to_build {
        let started = Instant::now();
        let (records, written) = build(store, coll, &new)?;
        complete.extend(new.iter().map(|d| (coll.to_owned(), d.text.clone())));
        save(&complete)?;
        tracing::info!(
            collection = coll,
            pointers = ?new.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
            records,
            entries = written,
            ms = started.elapsed().as_millis() as u64,
            "built the indexes newly declared in [indexes]"
        );
    }
    store.sync()?;
    Ok(())
}

/// Removes every entry of the index on `pointer` of `coll`; returns how many.
fn drop_entries(store: &dyn Store, coll: &str, pointer: &str) -> Result<u64, ReplicaError> {
    let prefix = keys::index_prefix(coll, pointer);
    let end = prefix_end(&prefix);
    let mut dropped = 0u64;
    loop {
        let rows = store.range(&prefix, end.as_deref(), BUILD_BATCH)?;
        if rows.is_empty() {
            return Ok(dropped);
        }
        let mut batch = WriteBatch::default();
        for (k, _) in rows {
            batch.remove(k);
            dropped += 1;
        }
        store.apply(batch)?;
    }
}

/// Writes the entries of `declared` for every record of `coll`; returns the records read and
/// the entries written.
fn build(store: &dyn Store, coll: &str, declared: &[Declared]) -> Result<(u64, u64), ReplicaError> {
    let base = keys::record_prefix(coll);
    let end = prefix_end(&base);
    let mut start = base.clone();
    let (mut records, mut written) = (0u64, 0u64);
    loop {
        let rows = store.range(&start, end.as_deref(), BUILD_BATCH)?;
        let mut batch = WriteBatch::default();
        for (k, raw) in &rows {
            let key = std::str::from_utf8(&k[base.len()..]).map_err(|e| ReplicaError::Corrupt {
                what: format!("{coll} key"),
                detail: e.to_string(),
            })?;
            let siblings = decode_siblings(raw, &format!("{coll}/{key}"))?;
            for e in winner_entries(store, coll, key, declared, &siblings) {
                batch.put(e, Vec::new());
                written += 1;
            }
            records += 1;
        }
        if !batch.is_empty() {
            store.apply(batch)?;
        }
        match rows.last() {
            Some((k, _)) if rows.len() == BUILD_BATCH => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok((records, written)),
        }
    }
}

/// How a query is answered from an index.
#[derive(Debug, Clone)]
pub(crate) struct IndexPlan {
    /// The pointer of the index, as declared.
    pub pointer: String,
    /// The positions (encoded value, then key) holding every candidate.
    pub range: IndexRange,
    /// For an equality: the one encoded value of the range. Its entries come in key order,
    /// and the page's cursor is a key.
    pub bucket: Option<Vec<u8>>,
    /// The position after which the page starts.
    pub after: Option<Vec<u8>>,
}

impl IndexPlan {
    /// The `next` cursor of a page whose last examined entry is at `position`.
    pub(crate) fn cursor(&self, position: &[u8]) -> Option<String> {
        if self.bucket.is_some() {
            let len = index_order::encoded_len(position)?;
            return std::str::from_utf8(&position[len..])
                .ok()
                .map(str::to_owned);
        }
        let mut raw = Vec::with_capacity(1 + self.pointer.len() + position.len());
        raw.push(self.pointer.len() as u8);
        raw.extend_from_slice(self.pointer.as_bytes());
        raw.extend_from_slice(position);
        Some(format!("{CURSOR_MARK}{}", B64.encode(raw)))
    }
}

/// The pointer and position of an index cursor; `None` when `after` is not one.
fn decode_cursor(after: &str) -> Option<(String, Vec<u8>)> {
    let raw = B64.decode(after.strip_prefix(CURSOR_MARK)?).ok()?;
    let (&len, rest) = raw.split_first()?;
    let pointer = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
    let position = rest.get(usize::from(len)..)?;
    let value_len = index_order::encoded_len(position)?;
    std::str::from_utf8(&position[value_len..]).ok()?;
    Some((pointer.to_owned(), position.to_vec()))
}

/// The index that answers `filter` on `coll` after `after` (a key, or a cursor of an
/// earlier page), if any: see the module's doc. A cursor that no index of this query can
/// resume is refused; a key after which a range would resume falls back to the scan.
pub(crate) fn plan(
    catalog: &IndexCatalog,
    coll: &str,
    filter: &Filter,
    after: Option<&str>,
) -> Result<Option<IndexPlan>, ReplicaError> {
    if filter.is_empty() {
        return Ok(None);
    }
    let cursor = after.and_then(decode_cursor);
    let stale = || {
        ReplicaError::BadCursor(
            "this after= cursor belongs to an index this query no longer uses; start the \
             query again without after="
                .into(),
        )
    };
    let Some(declared) = catalog.of(coll) else {
        return match cursor {
            Some(_) => Err(stale()),
            None => Ok(None),
        };
    };
    // Per declared pointer: the range its expressions allow, and an equality's value.
    let mut options: Vec<(&Declared, IndexRange, Option<Vec<u8>>)> = Vec::new();
    for d in declared {
        let mut range: Option<IndexRange> = None;
        let mut bucket = None;
        for w in filter.exprs().iter().filter(|w| w.pointer() == &d.pointer) {
            let Some(r) = index_order::range_of(w) else {
                continue;
            };
            if r.single && bucket.is_none() {
                bucket = Some(r.start.clone());
            }
            range = Some(match range {
                None => r,
                Some(had) => had.intersect(&r),
            });
        }
        if let Some(range) = range {
            options.push((d, range, bucket));
        }
    }
    if let Some((pointer, position)) = cursor {
        let (d, range, bucket) = options
            .into_iter()
            .find(|(d, _, _)| d.text == pointer)
            .ok_or_else(stale)?;
        return Ok(Some(IndexPlan {
            pointer: d.text.clone(),
            range,
            bucket,
            after: Some(position),
        }));
    }
    let chosen = match options.iter().position(|(_, _, b)| b.is_some()) {
        Some(at) => Some(options.swap_remove(at)),
        None => options.into_iter().next(),
    };
    let Some((d, range, bucket)) = chosen else {
        return Ok(None);
    };
    let after = match (after, &bucket) {
        (None, _) => None,
        (Some(key), Some(value)) => {
            let mut position = value.clone();
            position.extend_from_slice(key.as_bytes());
            Some(position)
        }
        // A key in a range in value order: only the scan, in key order, resumes after it.
        (Some(_), None) => return Ok(None),
    };
    Ok(Some(IndexPlan {
        pointer: d.text.clone(),
        range,
        bucket,
        after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(pointers: &[&str]) -> IndexCatalog {
        let mut decl = BTreeMap::new();
        decl.insert(
            "situation".to_owned(),
            pointers.iter().map(|p| (*p).to_owned()).collect(),
        );
        IndexCatalog::new(&decl).expect("valid")
    }

    #[test]
    fn declarations_are_checked() {
        let one = |c: &str, ps: &[&str]| {
            let mut decl = BTreeMap::new();
            decl.insert(c.to_owned(), ps.iter().map(|p| (*p).to_owned()).collect());
            IndexCatalog::new(&decl)
        };
        assert!(one("situation", &["/river", "/level_m"]).is_ok());
        assert!(one("Bad Name", &["/river"]).is_err());
        assert!(one("situation", &["river"]).is_err());
        assert!(one("situation", &["/a=b"]).is_err());
        assert!(one("situation", &["/river", "/river"]).is_err());
        assert!(one("situation", &[&format!("/{}", "x".repeat(300))]).is_err());
        let many: Vec<String> = (0..17).map(|i| format!("/f{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(one("situation", &many).is_err());
        assert!(one("situation", &[]).expect("empty").is_empty());
    }

    #[test]
    fn equality_is_preferred_and_pages_by_key() {
        let c = catalog(&["/level_m", "/river"]);
        let f = Filter::parse(&["/level_m>=7", "/river=\"Nanfei\""]).expect("valid");
        let p = plan(&c, "situation", &f, Some("k5"))
            .expect("plan")
            .expect("indexed");
        assert_eq!(p.pointer, "/river");
        let bucket = p.bucket.clone().expect("equality");
        let mut at = bucket.clone();
        at.extend_from_slice(b"k9");
        assert_eq!(p.cursor(&at).as_deref(), Some("k9"));
        assert_eq!(
            p.after.as_deref().map(|a| &a[bucket.len()..]),
            Some(&b"k5"[..])
        );
        assert!(plan(&c, "other", &f, None).expect("plan").is_none());
        let unindexed = Filter::parse(&["/river~\"N\""]).expect("valid");
        assert!(plan(&c, "situation", &unindexed, None)
            .expect("plan")
            .is_none());
    }

    #[test]
    fn range_cursors_resume_and_stale_ones_are_refused() {
        let c = catalog(&["/level_m"]);
        let f = Filter::parse(&["/level_m>=7", "/level_m<9"]).expect("valid");
        let p = plan(&c, "situation", &f, None)
            .expect("plan")
            .expect("indexed");
        assert!(p.bucket.is_none());
        let mut at = index_order::encode(&Value::from(8)).expect("scalar");
        at.extend_from_slice("k/中".as_bytes());
        let cursor = p.cursor(&at).expect("cursor");
        assert!(cursor.starts_with(CURSOR_MARK));
        let resumed = plan(&c, "situation", &f, Some(&cursor))
            .expect("plan")
            .expect("indexed");
        assert_eq!(resumed.after, Some(at));
        // A key after which a range would resume: the scan answers.
        assert!(plan(&c, "situation", &f, Some("k1"))
            .expect("plan")
            .is_none());
        // The cursor of an index this query does not use.
        let other = Filter::parse(&["/level_m!=1"]).expect("valid");
        assert!(matches!(
            plan(&c, "situation", &other, Some(&cursor)),
            Err(ReplicaError::BadCursor(_))
        ));
        assert!(matches!(
            plan(&IndexCatalog::default(), "situation", &f, Some(&cursor)),
            Err(ReplicaError::BadCursor(_))
        ));
    }
}
