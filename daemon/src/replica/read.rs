//! Reads straight from the store: one key's siblings, scans, collection states. Values kept
//! in chunks are reassembled and checked against their hash.

use officesync_protocol::merge;
use officesync_protocol::{codec, ValueMeta};

use super::keys;
use super::writer::{decode_siblings, Body, StoredSibling};
use super::{CollectionInfo, Record, ReplicaError, ScanPage, Sibling};
use crate::store::{prefix_end, Store};

/// Rows fetched per store call while scanning.
const SCAN_BATCH: usize = 256;

pub(crate) fn record(
    store: &dyn Store,
    coll: &str,
    key: &str,
) -> Result<Option<Record>, ReplicaError> {
    match store.get(&keys::record(coll, key))? {
        None => Ok(None),
        Some(raw) => {
            let siblings = decode_siblings(&raw, &format!("{coll}/{key}"))?;
            to_record(store, coll, key, siblings).map(Some)
        }
    }
}

fn to_record(
    store: &dyn Store,
    coll: &str,
    key: &str,
    mut siblings: Vec<StoredSibling>,
) -> Result<Record, ReplicaError> {
    let corrupt = |detail: &str| ReplicaError::Corrupt {
        what: format!("{coll}/{key}"),
        detail: detail.to_owned(),
    };
    let win = merge::winner(&siblings)
        .map(|w| w.header.dot.clone())
        .ok_or_else(|| corrupt("empty sibling set"))?;
    // Winner first, the rest in dot order (as stored).
    if let Some(at) = siblings.iter().position(|s| s.header.dot == win) {
        let w = siblings.remove(at);
        siblings.insert(0, w);
    }
    let mut out = Vec::with_capacity(siblings.len());
    for s in siblings {
        let value = load_value(store, coll, &s)?;
        out.push(Sibling {
            dot: s.header.dot,
            hlc: s.header.hlc,
            value,
        });
    }
    Ok(Record {
        key: key.to_owned(),
        siblings: out,
    })
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

pub(crate) fn scan(
    store: &dyn Store,
    coll: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<ScanPage, ReplicaError> {
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
    let mut records = Vec::new();
    let mut more = false;
    'outer: loop {
        let rows = store.range(&start, end.as_deref(), SCAN_BATCH)?;
        let exhausted = rows.len() < SCAN_BATCH;
        for (k, raw) in &rows {
            let key = std::str::from_utf8(&k[base.len()..]).map_err(|e| ReplicaError::Corrupt {
                what: format!("{coll} key"),
                detail: e.to_string(),
            })?;
            let siblings = decode_siblings(raw, &format!("{coll}/{key}"))?;
            let live = merge::winner(&siblings).is_some_and(|w| !w.header.value.is_tombstone());
            if !live {
                continue;
            }
            if records.len() == limit {
                more = true;
                break 'outer;
            }
            records.push(to_record(store, coll, key, siblings)?);
        }
        match rows.last() {
            Some((k, _)) if !exhausted => {
                start = k.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    let next = if more {
        records.last().map(|r| r.key.clone())
    } else {
        None
    };
    Ok(ScanPage { records, next })
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
    let start = keys::dot(
        coll,
        &officesync_protocol::Dot::new(origin.clone(), after + 1),
    );
    let end = keys::dot(
        coll,
        &officesync_protocol::Dot::new(origin.clone(), through.saturating_add(1)),
    );
    let mut bytes = 0usize;
    let mut cursor = start;
    loop {
        let rows = store.range(&cursor, Some(&end), SCAN_BATCH)?;
        for (k, key) in &rows {
            let counter = keys::counter_of_dot_key(k).ok_or_else(|| ReplicaError::Corrupt {
                what: format!("{coll} dot index"),
                detail: "short key".into(),
            })?;
            if out.len() >= max_versions || (bytes >= max_bytes && !out.is_empty()) {
                return Ok((out, counter - 1));
            }
            let key = String::from_utf8(key.clone()).map_err(|e| ReplicaError::Corrupt {
                what: format!("{coll} dot index"),
                detail: e.to_string(),
            })?;
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
            });
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
