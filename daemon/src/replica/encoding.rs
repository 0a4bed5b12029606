//! The replica's on-disk encoding: how sibling sets, collection states and the node's
//! identity are laid out as store values (the keys are in [`super::keys`]), and the checks
//! that refuse a store this build cannot read (wrong node, unknown format, lost writes).

use bincode::{Decode, Encode};
use officesync_protocol::{codec, Causal, ReplicaId, VersionHeader};

use super::keys;
use super::{CollectionMeta, ReplicaError};
use crate::store::{Store, StoreError, WriteBatch};

/// How a version's value is kept.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum Body {
    /// A tombstone: no value.
    None,
    /// Small values live inside the sibling record.
    Inline(Vec<u8>),
    /// Large values live in `chunks` pieces of [`CHUNK_SIZE`] under the `V` prefix.
    Chunked {
        /// Number of pieces.
        chunks: u32,
    },
}

/// One sibling as persisted (format 2).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct StoredSibling {
    pub header: VersionHeader,
    pub body: Body,
    /// `USER@NODE` or `NODE`; `None` for versions from before authors (or from a peer of
    /// protocol 1).
    pub author: Option<String>,
    /// The origin's signature, when it signed.
    pub signature: Option<Vec<u8>>,
}

/// One sibling as format 1 persisted it (before authors and signatures).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct StoredSiblingV1 {
    header: VersionHeader,
    body: Body,
}

impl From<StoredSiblingV1> for StoredSibling {
    fn from(s: StoredSiblingV1) -> Self {
        StoredSibling {
            header: s.header,
            body: s.body,
            author: None,
            signature: None,
        }
    }
}

impl Causal for StoredSibling {
    fn dot(&self) -> &officesync_protocol::Dot {
        &self.header.dot
    }
    fn context(&self) -> &officesync_protocol::VersionVector {
        &self.header.context
    }
    fn hlc(&self) -> officesync_protocol::Hlc {
        self.header.hlc
    }
}

/// Decodes the sibling set stored for `what` (`collection/key`, for the error).
pub(crate) fn decode_siblings(
    bytes: &[u8],
    what: &str,
) -> Result<Vec<StoredSibling>, ReplicaError> {
    let decoded = match codec::format_of(bytes) {
        Ok(1) => codec::decode_as::<Vec<StoredSiblingV1>>(bytes, 1)
            .map(|old| old.into_iter().map(StoredSibling::from).collect()),
        Ok(format) => codec::decode_as(bytes, format),
        Err(e) => Err(e),
    };
    decoded.map_err(|e| ReplicaError::Corrupt {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// Encodes a store value (a sibling set or a collection state).
pub(crate) fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, ReplicaError> {
    codec::encode(value).map_err(|e| ReplicaError::Corrupt {
        what: "new record".into(),
        detail: e.to_string(),
    })
}

/// The store's generation: how many groups of writes it has applied. Refuses a store whose
/// generation is below the mark recorded after an earlier durable sync: the engine lost
/// acknowledged writes (sled 0.34 can cut its log short at a damaged spot and open anyway).
pub(crate) fn check_durable_mark(store: &dyn Store) -> Result<u64, ReplicaError> {
    let generation =
        match store.get(&keys::meta("generation"))? {
            None => 0,
            Some(raw) => u64::from_be_bytes(raw.as_slice().try_into().map_err(|_| {
                ReplicaError::Corrupt {
                    what: "store generation".into(),
                    detail: "not 8 bytes".into(),
                }
            })?),
        };
    match store.durable_mark() {
        Some(mark) if mark > generation => Err(ReplicaError::Store(StoreError::Corrupt {
            path: "the data dir".into(),
            detail: format!(
                "it holds changes up to generation {generation}, but generation {mark} was \
                 made durable before: acknowledged writes are missing"
            ),
        })),
        _ => Ok(generation),
    }
}

/// Reads the replica id from the store, or creates a new incarnation in an empty store.
/// A store that holds data but no identity is corrupt and is refused.
pub(crate) fn load_or_create_identity(
    store: &dyn Store,
    node: &str,
) -> Result<ReplicaId, ReplicaError> {
    let corrupt = |detail: String| ReplicaError::Corrupt {
        what: "node identity".into(),
        detail,
    };
    if let Some(raw) = store.get(&keys::meta("replica"))? {
        let text = String::from_utf8(raw).map_err(|e| corrupt(e.to_string()))?;
        let id: ReplicaId = text.parse().map_err(|e| corrupt(format!("{e}")))?;
        if id.node_name() != node {
            return Err(ReplicaError::WrongNode {
                found: id.node_name().to_owned(),
                expected: node.to_owned(),
            });
        }
        match store.get(&keys::meta("format"))?.as_deref() {
            Some([codec::FORMAT_VERSION]) => {}
            Some([format])
                if *format >= codec::OLDEST_FORMAT_VERSION && *format < codec::FORMAT_VERSION =>
            {
                // Records of the older format stay as they are (they are read as such) until
                // rewritten; from now on an older build, which cannot read the new ones, is
                // refused by the format mark.
                let mut batch = WriteBatch::default();
                batch.put(keys::meta("format"), vec![codec::FORMAT_VERSION]);
                store.apply(batch)?;
                store.sync()?;
            }
            other => return Err(corrupt(format!("unsupported store format {other:?}"))),
        }
        return Ok(id);
    }
    if !store.range(b"", None, 1)?.is_empty() {
        return Err(corrupt(
            "the store holds records but no node identity".into(),
        ));
    }
    let mut incarnation = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut incarnation)
        .map_err(|_| StoreError::Io("no system randomness for the incarnation".into()))?;
    let id = ReplicaId::new(node, u32::from_be_bytes(incarnation))
        .map_err(|e| corrupt(e.to_string()))?;
    let mut batch = WriteBatch::default();
    batch.put(keys::meta("format"), vec![codec::FORMAT_VERSION]);
    batch.put(keys::meta("replica"), id.as_str().as_bytes().to_vec());
    store.apply(batch)?;
    store.sync()?;
    Ok(id)
}

/// The stored state of `coll` (empty when the collection was never written).
pub(crate) fn load_meta(store: &dyn Store, coll: &str) -> Result<CollectionMeta, ReplicaError> {
    match store.get(&keys::collection(coll))? {
        None => Ok(CollectionMeta::default()),
        Some(raw) => codec::decode(&raw).map_err(|e| ReplicaError::Corrupt {
            what: format!("collection {coll} state"),
            detail: e.to_string(),
        }),
    }
}

/// The node's earlier incarnations, one a restore (the `past_replicas` list).
pub(crate) fn past_replicas(store: &dyn Store) -> Result<Vec<ReplicaId>, ReplicaError> {
    let raw = store.get(&keys::meta("past_replicas"))?.unwrap_or_default();
    let text = String::from_utf8(raw).map_err(|e| ReplicaError::Corrupt {
        what: "node identity".into(),
        detail: e.to_string(),
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.parse::<ReplicaId>().ok())
        .collect())
}

/// Makes the store's node a new incarnation (a restored copy): a fresh random replica id for
/// `node`, unlike the current one and every incarnation of `node` any collection's vector
/// names, so the node never issues a dot again that it (or any earlier copy) issued. The old
/// id is added to the `past_replicas` list; its versions stay as they are. Returns the old and
/// the new id.
pub(crate) fn start_new_incarnation(
    store: &dyn Store,
    node: &str,
) -> Result<(ReplicaId, ReplicaId), ReplicaError> {
    let corrupt = |detail: String| ReplicaError::Corrupt {
        what: "node identity".into(),
        detail,
    };
    let old = load_or_create_identity(store, node)?;
    let mut known: Vec<ReplicaId> = vec![old.clone()];
    for c in super::read::collections(store)? {
        known.extend(
            c.meta
                .vv
                .iter()
                .map(|(o, _)| o.clone())
                .filter(|o| o.node_name() == node),
        );
    }
    known.extend(past_replicas(store)?);
    let past = store.get(&keys::meta("past_replicas"))?.unwrap_or_default();
    let past = String::from_utf8(past).map_err(|e| corrupt(e.to_string()))?;
    let new = loop {
        let mut incarnation = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut incarnation)
            .map_err(|_| StoreError::Io("no system randomness for the incarnation".into()))?;
        let id = ReplicaId::new(node, u32::from_be_bytes(incarnation))
            .map_err(|e| corrupt(e.to_string()))?;
        if !known.contains(&id) {
            break id;
        }
    };
    let mut list = past;
    list.push_str(old.as_str());
    list.push('\n');
    let mut batch = WriteBatch::default();
    batch.put(keys::meta("replica"), new.as_str().as_bytes().to_vec());
    batch.put(keys::meta("past_replicas"), list.into_bytes());
    super::changes::skip_after_restore(store, &mut batch)?;
    store.apply(batch)?;
    store.sync()?;
    Ok((old, new))
}
