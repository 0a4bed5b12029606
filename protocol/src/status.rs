//! The `_status` system collection: one status report per node (key = the node's name, value
//! a small JSON document), written only by that node and read by admins; the rule every
//! receiver holds a `_status` version to; and the direction reports travel: up only, from the
//! node that dials to the node it dials, so the general office gathers every report while no
//! relay is sent the whole province's (which would cost every admin link as much as the
//! general office's own).

use crate::version::Version;

/// The system collection of node status reports: key `NODE`, written only by node `NODE`.
pub const STATUS_COLLECTION: &str = "_status";

/// Largest `_status` value accepted from a peer, in bytes: a report lists the node's peers and
/// collections, and no honest report of a node with a thousand peers comes near it.
pub const MAX_STATUS_VALUE_BYTES: usize = 256 * 1024;

/// Whether a session sends `collection` at all, given its side: `_status` goes only from the
/// dialer to the acceptor (up); every other collection either way (the policy decides).
pub fn sends_on_side(collection: &str, dialer: bool) -> bool {
    dialer || collection != STATUS_COLLECTION
}

/// Why `v`, a version of [`STATUS_COLLECTION`], is refused, if it is: its key must be its
/// origin's node name (a node reports only on itself) and its value at most
/// [`MAX_STATUS_VALUE_BYTES`]. A tombstone of its own key is allowed.
pub fn status_entry_refusal(v: &Version) -> Option<String> {
    let origin = v.dot.origin.node_name();
    if v.key != origin {
        return Some(format!(
            "{origin} wrote {STATUS_COLLECTION}/{}: a node reports only on itself",
            v.key
        ));
    }
    match &v.value {
        Some(value) if value.len() > MAX_STATUS_VALUE_BYTES => Some(format!(
            "{STATUS_COLLECTION}/{} of {} bytes exceeds the limit of {MAX_STATUS_VALUE_BYTES}",
            v.key,
            value.len()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, Hlc, ReplicaId, VersionVector};

    fn version(origin: &str, key: &str, len: usize) -> Version {
        Version {
            collection: STATUS_COLLECTION.into(),
            key: key.into(),
            dot: Dot {
                origin: ReplicaId::new(origin, 1).expect("id"),
                counter: 1,
            },
            hlc: Hlc {
                ms: 1_700_000_000_000,
                logical: 0,
            },
            context: VersionVector::default(),
            value: Some(vec![b'x'; len]),
            author: None,
            signature: None,
        }
    }

    #[test]
    fn reports_travel_up_only() {
        assert!(sends_on_side(STATUS_COLLECTION, true));
        assert!(!sends_on_side(STATUS_COLLECTION, false));
        assert!(sends_on_side("situation", false));
        assert!(sends_on_side("_nodes", false));
    }

    #[test]
    fn a_node_reports_only_on_itself() {
        assert_eq!(status_entry_refusal(&version("hefei", "hefei", 10)), None);
        let other = status_entry_refusal(&version("hefei", "beijing", 10)).expect("refused");
        assert!(other.contains("reports only on itself"), "{other}");
        let big = version("hefei", "hefei", MAX_STATUS_VALUE_BYTES + 1);
        assert!(status_entry_refusal(&big).is_some());
        let mut deleted = version("hefei", "hefei", 0);
        deleted.value = None;
        assert_eq!(status_entry_refusal(&deleted), None);
    }
}
