//! The compression dictionaries a session agrees with its peer (protocol 3): which of this
//! node's dictionaries it offered and which the peer accepted (so its frames may be primed with
//! them), and which of the peer's it holds (bounded), answering each offer.
//!
//! The bytes live with the driver: it gives the session this node's dictionaries
//! ([`Session::handle_dictionaries`](super::Session::handle_dictionaries)), and learns from
//! [`Event::DictionaryAccepted`] which of the peer's to keep for its readers (before the
//! accepting reply leaves; kept for the whole session, so a frame primed with one is never
//! refused) and from [`Event::DictionaryAgreed`] which to prime its writers with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::wire::{
    DictionaryId, DictionaryOffer, DictionaryReply, MAX_DICTIONARY_BYTES,
    MAX_DICTIONARY_COLLECTIONS,
};

use super::api::Event;
use super::error::SyncError;
use super::outbox::Outbox;

/// Most offers a peer may make in one session; later ones are declined (each costs a hash of
/// up to [`MAX_DICTIONARY_BYTES`] and a reply).
pub const MAX_DICTIONARY_OFFERS: usize = 64;

/// Most dictionaries of one collection a session holds from the peer (the peer retrained it
/// during the session); further offers for it are declined and the peer keeps using the last
/// one accepted.
pub const MAX_HELD_PER_COLLECTION: usize = 2;

/// One of this node's dictionaries, as the driver gives it to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDictionary {
    /// The collection whose values trained it.
    pub collection: String,
    /// [`DictionaryId::of`] its bytes.
    pub id: DictionaryId,
    /// The zstd dictionary, at most [`MAX_DICTIONARY_BYTES`].
    pub bytes: Arc<[u8]>,
}

impl LocalDictionary {
    /// The dictionary `bytes` of `collection`, with its id.
    pub fn new(collection: &str, bytes: Arc<[u8]>) -> Self {
        Self {
            collection: collection.to_owned(),
            id: DictionaryId::of(&bytes),
            bytes,
        }
    }
}

/// A session's dictionaries in both directions.
#[derive(Debug, Default)]
pub(super) struct Dictionaries {
    /// This node's dictionaries, by collection (the driver's latest).
    local: BTreeMap<String, LocalDictionary>,
    /// Every id offered to the peer in this session, by collection (an answer to an earlier
    /// offer may cross a newer one).
    offered: BTreeMap<String, BTreeSet<DictionaryId>>,
    /// The id the peer accepted for each collection: frames may be primed with it.
    agreed: BTreeMap<String, DictionaryId>,
    /// The peer's dictionaries held for its frames, by collection, in the order accepted: at
    /// most [`MAX_HELD_PER_COLLECTION`], none ever dropped in the session (a frame primed with
    /// any of them may still be on its way), so a later offer is declined.
    held: BTreeMap<String, Vec<DictionaryId>>,
    /// Offers answered in this session.
    answered: usize,
}

impl Dictionaries {
    /// The driver's dictionaries (replacing the earlier set).
    pub(super) fn set_local(&mut self, dicts: Vec<LocalDictionary>) {
        self.local = dicts
            .into_iter()
            .filter(|d| d.bytes.len() <= MAX_DICTIONARY_BYTES && !d.bytes.is_empty())
            .map(|d| (d.collection.clone(), d))
            .collect();
    }

    /// Offers the peer every dictionary of a collection `may_send` allows that it has not been
    /// offered yet.
    pub(super) fn offer(&mut self, out: &mut Outbox, may_send: impl Fn(&str) -> bool) {
        for (collection, d) in &self.local {
            let ids = self.offered.entry(collection.clone()).or_default();
            if ids.contains(&d.id) || !may_send(collection) {
                continue;
            }
            ids.insert(d.id);
            out.control(
                DictionaryOffer {
                    collection: collection.clone(),
                    id: d.id,
                    dictionary: d.bytes.to_vec(),
                }
                .into(),
            );
        }
    }

    /// The peer offers a dictionary (already validated: its id is its hash, its size in
    /// bounds). It is held when there is room — at most [`MAX_DICTIONARY_COLLECTIONS`]
    /// collections, [`MAX_HELD_PER_COLLECTION`] of each, [`MAX_DICTIONARY_OFFERS`] offers
    /// answered — and the driver is told to keep it before the reply goes out.
    pub(super) fn on_offer(&mut self, out: &mut Outbox, o: DictionaryOffer) {
        self.answered += 1;
        let accepted = self.answered <= MAX_DICTIONARY_OFFERS
            && match self.held.get(&o.collection) {
                Some(ids) => ids.contains(&o.id) || ids.len() < MAX_HELD_PER_COLLECTION,
                None => self.held.len() < MAX_DICTIONARY_COLLECTIONS,
            };
        if accepted {
            let ids = self.held.entry(o.collection.clone()).or_default();
            if !ids.contains(&o.id) {
                ids.push(o.id);
            }
            out.event(Event::DictionaryAccepted {
                collection: o.collection.clone(),
                id: o.id,
                dictionary: o.dictionary,
            });
        }
        out.control(
            DictionaryReply {
                collection: o.collection,
                id: o.id,
                accepted,
            }
            .into(),
        );
    }

    /// The peer answers an offer. An answer to an id never offered for the collection is the
    /// peer's error; an accepted answer for the current dictionary makes it the agreed one (a
    /// declined one leaves the earlier agreement, which the peer still holds).
    pub(super) fn on_reply(
        &mut self,
        out: &mut Outbox,
        r: DictionaryReply,
    ) -> Result<(), SyncError> {
        if !self
            .offered
            .get(&r.collection)
            .is_some_and(|ids| ids.contains(&r.id))
        {
            return Err(SyncError::Unexpected {
                kind: "dictionary_reply",
                when: "for a dictionary that was not offered",
            });
        }
        let Some(d) = self.local.get(&r.collection).filter(|d| d.id == r.id) else {
            return Ok(()); // an answer to an older offer, crossed by a newer one
        };
        if r.accepted && self.agreed.get(&r.collection) != Some(&r.id) {
            self.agreed.insert(r.collection.clone(), r.id);
            out.event(Event::DictionaryAgreed {
                dictionary: d.clone(),
            });
        }
        Ok(())
    }

    /// The dictionaries the peer accepted, by collection.
    pub(super) fn agreed(&self) -> &BTreeMap<String, DictionaryId> {
        &self.agreed
    }

    /// The peer's dictionaries held, by collection (newest last).
    pub(super) fn held(&self) -> &BTreeMap<String, Vec<DictionaryId>> {
        &self.held
    }
}
