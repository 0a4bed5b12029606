//! Compression dictionaries at the byte level: training one from sample values (zstd's
//! dictionary builder, bounded input and output), and the per-session sets the framed streams
//! read from — the peer's accepted dictionaries for the readers ([`RecvDictionaries`]) and the
//! agreed ones for the writers ([`SendDictionaries`]). Which dictionaries are agreed is the
//! session's decision (`officesync_protocol::sync`); these only hold the bytes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use officesync_protocol::wire::{DictionaryId, MAX_DICTIONARY_BYTES, MAX_DICTIONARY_COLLECTIONS};

/// Fewest sample values a dictionary is trained from (zstd's builder needs several, and a
/// dictionary of a handful of values helps little).
pub const MIN_TRAINING_SAMPLES: usize = 32;

/// Most sample bytes one training reads (16 times the largest dictionary), which bounds its
/// CPU time (a few hundred milliseconds of zstd's builder in an optimised build).
pub const MAX_TRAINING_BYTES: usize = 256 << 10;

/// A trained dictionary is kept only if it shrinks sample values compressed alone to at most
/// this fraction of their size without it: one that does not help would cost every peer its
/// bytes for nothing (values of random bytes, or already compressed). The same bar decides,
/// before any training, whether the values share content at all.
pub const MIN_GAIN: f64 = 0.9;

/// Sample values the gain is measured on.
const GAIN_SAMPLES: usize = 64;

/// The [`GAIN_SAMPLES`] values, spread over `samples`, that both gain checks measure.
fn gain_samples<'a>(samples: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> {
    let step = (samples.len() / GAIN_SAMPLES).max(1);
    samples.iter().step_by(step).copied()
}

/// Longest sample value used: longer values are cut to this many bytes.
pub const MAX_SAMPLE_BYTES: usize = 4 << 10;

/// Trains a zstd dictionary of at most [`MAX_DICTIONARY_BYTES`] from `samples` (each cut to
/// [`MAX_SAMPLE_BYTES`], in total at most [`MAX_TRAINING_BYTES`]); `None` when there are fewer
/// than [`MIN_TRAINING_SAMPLES`] or zstd finds nothing worth a dictionary. CPU-bound: run it on
/// a blocking thread.
pub fn train(samples: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut total = 0usize;
    let cut: Vec<&[u8]> = samples
        .iter()
        .map(|s| &s[..s.len().min(MAX_SAMPLE_BYTES)])
        .filter(|s| !s.is_empty())
        .take_while(|s| {
            total += s.len();
            total <= MAX_TRAINING_BYTES
        })
        .collect();
    if cut.len() < MIN_TRAINING_SAMPLES || !shares_content(&cut) {
        return None;
    }
    // A dictionary much larger than a quarter of the sample learns nothing more.
    let capacity = (total.min(MAX_TRAINING_BYTES) / 4).clamp(1 << 10, MAX_DICTIONARY_BYTES);
    let dict = zstd::dict::from_samples(&cut, capacity).ok()?;
    let fits = !dict.is_empty() && dict.len() <= MAX_DICTIONARY_BYTES;
    (fits && helps(&dict, &cut)).then_some(dict)
}

/// Whether values like `samples` have content in common: a few of them compressed as one
/// frame come to at most [`MIN_GAIN`] of the same values sent alone (each compressed, or as
/// they are when that is smaller). A dictionary is built from pieces of the sample, so it
/// cannot prime a value with more than the other values would; when they share nothing
/// (random bytes, encrypted or already compressed values) no dictionary is worth zstd's
/// builder, whose few hundred milliseconds of CPU this check (microseconds) saves.
fn shares_content(samples: &[&[u8]]) -> bool {
    let (mut joined, mut alone) = (Vec::new(), 0usize);
    for s in gain_samples(samples) {
        let Ok(c) = zstd::bulk::compress(s, 1) else {
            return false;
        };
        alone += c.len().min(s.len());
        joined.extend_from_slice(s);
    }
    match zstd::bulk::compress(&joined, 1) {
        Ok(c) => alone > 0 && (c.len() as f64) <= (alone as f64) * MIN_GAIN,
        Err(_) => false,
    }
}

/// Whether `dict` shrinks values like `samples` (each compressed alone, as the first write
/// of a stream is) to at most [`MIN_GAIN`] of their compressed size without it.
fn helps(dict: &[u8], samples: &[&[u8]]) -> bool {
    let Ok(mut with) = zstd::bulk::Compressor::with_dictionary(3, dict) else {
        return false;
    };
    let (mut primed, mut plain) = (0usize, 0usize);
    for s in gain_samples(samples) {
        match (with.compress(s), zstd::bulk::compress(s, 3)) {
            (Ok(a), Ok(b)) => {
                primed += a.len();
                plain += b.len();
            }
            _ => return false,
        }
    }
    plain > 0 && (primed as f64) <= (plain as f64) * MIN_GAIN
}

/// The peer's dictionaries a session accepted, by id: what its frames may be primed with.
/// Clones share the set. At most `2 ×` [`MAX_DICTIONARY_COLLECTIONS`] are held (the session
/// accepts no more), each at most [`MAX_DICTIONARY_BYTES`]: 256 KiB per session.
#[derive(Debug, Clone, Default)]
pub struct RecvDictionaries(Arc<RwLock<HashMap<DictionaryId, Arc<[u8]>>>>);

impl RecvDictionaries {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `bytes` as dictionary `id` (refused past the bound, which a session never
    /// reaches).
    pub fn insert(&self, id: DictionaryId, bytes: Vec<u8>) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.len() < 2 * MAX_DICTIONARY_COLLECTIONS && bytes.len() <= MAX_DICTIONARY_BYTES {
            map.insert(id, bytes.into());
        }
    }

    /// Forgets dictionary `id`.
    pub fn remove(&self, id: &DictionaryId) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Dictionary `id`, if held.
    pub fn get(&self, id: &DictionaryId) -> Option<Arc<[u8]>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dictionary's id and bytes.
pub type IdentifiedDictionary = (DictionaryId, Arc<[u8]>);

/// This node's dictionaries the peer accepted, by collection: what the writers may prime a
/// new zstd stream with. Clones share the set.
#[derive(Debug, Clone, Default)]
pub struct SendDictionaries(Arc<RwLock<HashMap<String, IdentifiedDictionary>>>);

impl SendDictionaries {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Collection `collection`'s frames may be primed with dictionary `id` (`bytes`) from now
    /// on.
    pub fn agree(&self, collection: &str, id: DictionaryId, bytes: Arc<[u8]>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(collection.to_owned(), (id, bytes));
    }

    /// The dictionary agreed for `collection`, if any.
    pub fn get(&self, collection: &str) -> Option<IdentifiedDictionary> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(collection)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn json_samples(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    r#"{{"office":"hefei","river":"Nanfei","station":"Hefei-{:02}","level_m":{}.{:02},"trend":"{}","reporter":"Zhang Wei","checked":{},"seq":{i}}}"#,
                    i % 40,
                    10 + i % 7,
                    i * 13 % 100,
                    ["rising", "falling", "steady"][i % 3],
                    i.is_multiple_of(2)
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn trains_a_bounded_dictionary_from_enough_samples() {
        assert_eq!(train(&json_samples(MIN_TRAINING_SAMPLES - 1)), None);
        let dict = train(&json_samples(2_000)).expect("a dictionary");
        assert!(!dict.is_empty() && dict.len() <= MAX_DICTIONARY_BYTES);
        // It helps: a value alone compresses smaller with it than without.
        let value = &json_samples(2_001)[2_000];
        let plain = zstd::bulk::compress(value, 3).expect("zstd");
        let mut c = zstd::bulk::Compressor::with_dictionary(3, &dict).expect("dict");
        let primed = c.compress(value).expect("zstd");
        assert!(
            primed.len() * 2 < plain.len(),
            "{} vs {}",
            primed.len(),
            plain.len()
        );
    }

    #[test]
    fn a_dictionary_that_does_not_help_is_not_kept() {
        // Random bytes: nothing to learn.
        assert_eq!(train(&random_samples(500, 256)), None);
        // A dictionary of other values does not help them either.
        let dict = train(&json_samples(1_000)).expect("a dictionary");
        let (random, json) = (random_samples(500, 256), json_samples(500));
        let random: Vec<&[u8]> = random.iter().map(Vec::as_slice).collect();
        let json: Vec<&[u8]> = json.iter().map(Vec::as_slice).collect();
        assert!(!helps(&dict, &random));
        assert!(helps(&dict, &json));
    }

    /// `n` values of `len` random bytes (a fixed xorshift sequence).
    fn random_samples(n: usize, len: usize) -> Vec<Vec<u8>> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn only_values_with_content_in_common_are_worth_training() {
        let check = |samples: &[Vec<u8>]| {
            let cut: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
            shares_content(&cut)
        };
        assert!(check(&json_samples(1_024)));
        // Random values, short (where a frame's own bytes outweigh the value) and long.
        assert!(!check(&random_samples(1_024, 16)));
        assert!(!check(&random_samples(1_024, 256)));
        assert!(!check(&random_samples(64, 4_096)));
        // The same random value over and over: a dictionary would hold it.
        let same = vec![random_samples(1, 256).remove(0); 1_024];
        assert!(check(&same));
    }

    #[test]
    fn recv_set_is_bounded() {
        let set = RecvDictionaries::new();
        for i in 0..(4 * MAX_DICTIONARY_COLLECTIONS) as u8 {
            set.insert(DictionaryId([i; 8]), vec![i; 10]);
        }
        assert_eq!(set.len(), 2 * MAX_DICTIONARY_COLLECTIONS);
        set.insert(DictionaryId([0xee; 8]), vec![0; MAX_DICTIONARY_BYTES + 1]);
        assert!(set.get(&DictionaryId([0xee; 8])).is_none());
        set.remove(&DictionaryId([0; 8]));
        assert!(set.get(&DictionaryId([0; 8])).is_none());
        assert!(set.get(&DictionaryId([1; 8])).is_some());
    }
}
