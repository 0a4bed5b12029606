//! Compression dictionaries on the wire (protocol 3): their ids, their size limits, and the
//! offer and reply that agree one per collection in a session.
//!
//! A node trains a zstd dictionary from a sample of a collection's values and offers it to a
//! peer on the control stream ([`DictionaryOffer`]). The peer keeps it and answers
//! [`DictionaryReply`]; only after an accepting reply does the offerer prime the zstd streams
//! of its data frames with it ([`FrameFlags::ZSTD_DICT`](super::FrameFlags::ZSTD_DICT)). A
//! peer that declines, has not answered yet, or speaks protocol 1 or 2 gets frames without it.

use std::fmt;

use bincode::{Decode, Encode};

use super::error::WireError;
use super::validate::check_collection;

/// Largest dictionary, in bytes, that is offered or accepted.
pub const MAX_DICTIONARY_BYTES: usize = 16 << 10;

/// Most collections whose dictionaries a node keeps for one peer's session (at most two
/// each): at most 2 × 8 × 16 KiB = 256 KiB per session.
pub const MAX_DICTIONARY_COLLECTIONS: usize = 8;

/// Bytes of a [`DictionaryId`]; a frame primed with a dictionary starts with them.
pub const DICTIONARY_ID_LEN: usize = 8;

/// Names a dictionary by its content: the first 8 bytes of the SHA-256 of its bytes, so two
/// nodes never disagree on what an id means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct DictionaryId(pub [u8; DICTIONARY_ID_LEN]);

impl DictionaryId {
    /// The id of the dictionary `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut id = [0u8; DICTIONARY_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..DICTIONARY_ID_LEN]);
        Self(id)
    }
}

impl fmt::Display for DictionaryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Protocol 3, on the control stream: "I would compress `collection`'s data frames with this
/// dictionary". The receiver answers with a [`DictionaryReply`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DictionaryOffer {
    /// The collection whose values trained it.
    pub collection: String,
    /// [`DictionaryId::of`] its bytes.
    pub id: DictionaryId,
    /// The dictionary (a zstd dictionary), 1 to [`MAX_DICTIONARY_BYTES`] bytes.
    pub dictionary: Vec<u8>,
}

/// Protocol 3, on the control stream: the answer to a [`DictionaryOffer`]. With `accepted`
/// the receiver holds the dictionary and decodes frames primed with it from now on.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DictionaryReply {
    /// The offer's collection.
    pub collection: String,
    /// The offer's id.
    pub id: DictionaryId,
    /// The receiver keeps the dictionary (else the sender goes on without it).
    pub accepted: bool,
}

impl DictionaryOffer {
    /// Checks the collection name, a length of 1 to [`MAX_DICTIONARY_BYTES`], and that the id
    /// is the content hash of the bytes.
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)?;
        let len = self.dictionary.len();
        if len == 0 || len > MAX_DICTIONARY_BYTES {
            return Err(WireError::BadDictionary(format!(
                "{len} bytes (1 to {MAX_DICTIONARY_BYTES})"
            )));
        }
        if DictionaryId::of(&self.dictionary) != self.id {
            return Err(WireError::BadDictionary(format!(
                "id {} is not the hash of its bytes",
                self.id
            )));
        }
        Ok(())
    }
}

impl DictionaryReply {
    /// Checks the collection name (whether it answers an offer is the session's to check).
    pub fn validate(&self) -> Result<(), WireError> {
        check_collection(&self.collection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(bytes: &[u8]) -> DictionaryOffer {
        DictionaryOffer {
            collection: "situation".into(),
            id: DictionaryId::of(bytes),
            dictionary: bytes.to_vec(),
        }
    }

    #[test]
    fn offer_id_must_be_the_content_hash() {
        assert_eq!(offer(b"dictionary bytes").validate(), Ok(()));
        let mut forged = offer(b"dictionary bytes");
        forged.dictionary[0] ^= 1;
        assert!(matches!(
            forged.validate(),
            Err(WireError::BadDictionary(_))
        ));
    }

    #[test]
    fn offer_size_is_bounded() {
        assert!(offer(&[]).validate().is_err());
        assert_eq!(offer(&vec![1; MAX_DICTIONARY_BYTES]).validate(), Ok(()));
        let e = offer(&vec![1; MAX_DICTIONARY_BYTES + 1])
            .validate()
            .expect_err("too large");
        assert_eq!(e.code(), super::super::ErrorCode::Malformed);
    }

    #[test]
    fn bad_collection_name_is_refused() {
        let mut o = offer(b"x");
        o.collection = "Bad Name".into();
        assert!(o.validate().is_err());
        let r = DictionaryReply {
            collection: String::new(),
            id: DictionaryId([0; 8]),
            accepted: true,
        };
        assert!(r.validate().is_err());
    }

    #[test]
    fn id_displays_as_hex() {
        assert_eq!(
            DictionaryId([0xab, 0, 1, 2, 3, 4, 5, 0xff]).to_string(),
            "ab000102030405ff"
        );
    }
}
