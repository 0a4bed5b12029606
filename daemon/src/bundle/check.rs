//! The checks of a decoded bundle that need no store: its header agrees with its body, and
//! every stream and version passes the checks a `Complete` and a `Batch` of the wire protocol
//! pass (names, replica ids, counters in order, keys, contexts, value sizes, authors of the
//! origin's node, signature lengths). Each failure names the entry.

use std::collections::BTreeSet;

use officesync_api::BundleInfo;
use officesync_protocol::names;
use officesync_protocol::wire::{Batch, Complete, MAX_HANDSHAKE_COLLECTIONS, MAX_VECTOR_ENTRIES};
use officesync_protocol::Version;

use super::body::{Body, Stream};

/// Longest key shown in a message.
const SHOWN_KEY_CHARS: usize = 120;

/// `collection/key version dot`, for messages (the key clipped, what does not print escaped).
pub(super) fn entry(v: &Version) -> String {
    let key: String = v.key.chars().take(SHOWN_KEY_CHARS).collect();
    let clipped = if key.len() < v.key.len() { "..." } else { "" };
    format!(
        "{}/{}{clipped} version {}",
        v.collection.escape_debug(),
        key.escape_debug(),
        v.dot.to_string().escape_debug()
    )
}

/// Checks `info` and `body` (values of at most `max_value_bytes`); `Err` with a sentence
/// naming the first bad entry.
pub(super) fn structure(
    info: &BundleInfo,
    body: &mut Body,
    max_value_bytes: usize,
) -> Result<(), String> {
    names::validate_node_name(&info.exporter).map_err(|e| format!("its exporter: {e}"))?;
    if let Some(node) = &info.for_node {
        names::validate_node_name(node).map_err(|e| format!("its target node: {e}"))?;
    }
    if body.parts.len() > MAX_HANDSHAKE_COLLECTIONS {
        return Err(format!(
            "it holds {} collections, more than a node holds ({MAX_HANDSHAKE_COLLECTIONS})",
            body.parts.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for part in &mut body.parts {
        let name = part.collection.clone();
        names::validate_collection_name(&name)
            .map_err(|e| format!("collection {:?}: {e}", name.escape_debug().to_string()))?;
        if !seen.insert(name.clone()) {
            return Err(format!("collection {name} appears twice"));
        }
        if part.streams.len() > MAX_VECTOR_ENTRIES {
            return Err(format!(
                "collection {name} has {} origins, more than {MAX_VECTOR_ENTRIES}",
                part.streams.len()
            ));
        }
        let mut origins = BTreeSet::new();
        for stream in &mut part.streams {
            check_stream(&name, stream, max_value_bytes)?;
            if !origins.insert(stream.origin.clone()) {
                return Err(format!(
                    "collection {name}: origin {} appears twice",
                    stream.origin
                ));
            }
        }
    }
    agrees(info, body)
}

/// One stream: a valid completion above its start, versions of its origin and collection in
/// counter order within `(after, through]`, each a valid version.
fn check_stream(collection: &str, s: &mut Stream, max_value_bytes: usize) -> Result<(), String> {
    let mark = Complete {
        collection: collection.to_owned(),
        origin: s.origin.clone(),
        through: s.through,
    };
    mark.validate()
        .map_err(|e| format!("collection {collection}: {e}"))?;
    if s.after >= s.through {
        return Err(format!(
            "collection {collection}: origin {} completes through {}, not above its start {}",
            s.origin, s.through, s.after
        ));
    }
    let (Some(first), Some(last)) = (s.versions.first(), s.versions.last()) else {
        return Ok(()); // a completion alone: every version it covers was superseded
    };
    if first.dot.counter <= s.after || last.dot.counter > s.through {
        let v = if first.dot.counter <= s.after {
            first
        } else {
            last
        };
        return Err(format!(
            "{}: outside its stream's counters {}..={}",
            entry(v),
            s.after + 1,
            s.through
        ));
    }
    let batch = Batch {
        collection: collection.to_owned(),
        origin: s.origin.clone(),
        versions: std::mem::take(&mut s.versions),
    };
    let outcome = batch.validate(max_value_bytes);
    s.versions = batch.versions;
    if let Err(e) = outcome {
        return Err(first_bad_version(collection, s, max_value_bytes)
            .unwrap_or_else(|| format!("collection {collection}, origin {}: {e}", s.origin)));
    }
    Ok(())
}

/// The first version of a stream that fails validation on its own or breaks counter order.
fn first_bad_version(collection: &str, s: &Stream, max_value_bytes: usize) -> Option<String> {
    let mut previous = s.after;
    for v in &s.versions {
        if v.dot.counter <= previous && v.dot.origin == s.origin {
            return Some(format!(
                "{}: out of counter order (after {previous})",
                entry(v)
            ));
        }
        previous = v.dot.counter;
        let single = Batch {
            collection: collection.to_owned(),
            origin: s.origin.clone(),
            versions: vec![v.clone()],
        };
        if let Err(e) = single.validate(max_value_bytes) {
            return Some(format!("{}: {e}", entry(v)));
        }
    }
    None
}

/// The header says what the body holds.
fn agrees(info: &BundleInfo, body: &Body) -> Result<(), String> {
    if info.collections.len() != body.parts.len() {
        return Err(format!(
            "its header lists {} collections, its body holds {}",
            info.collections.len(),
            body.parts.len()
        ));
    }
    for (said, part) in info.collections.iter().zip(&body.parts) {
        let versions: u64 = part.streams.iter().map(|s| s.versions.len() as u64).sum();
        if said.name != part.collection
            || said.versions != versions
            || said.origins != part.streams.len() as u64
        {
            return Err(format!(
                "its header says {} holds {} versions of {} origins, its body {} holds {} of {}",
                said.name.escape_debug(),
                said.versions,
                said.origins,
                part.collection,
                versions,
                part.streams.len()
            ));
        }
    }
    if info.versions != body.versions() {
        return Err(format!(
            "its header says {} versions, its body holds {}",
            info.versions,
            body.versions()
        ));
    }
    Ok(())
}
