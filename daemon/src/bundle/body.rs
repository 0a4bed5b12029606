//! The body of a bundle: per collection, per origin, the versions above a counter and the
//! counter they complete through (exactly what catch-up sends), as bincode compressed with
//! zstd; decoded within bounds, whatever the bytes.

use std::io::{BufReader, Read};

use bincode::{Decode, Encode};
use officesync_protocol::{ReplicaId, Version};

use super::frame::MAX_BUNDLE_BYTES;

/// The versions a bundle carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Body {
    /// Per collection, `_nodes` first (the certificates the rest is verified with).
    pub parts: Vec<Part>,
}

/// What a bundle carries of one collection.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Part {
    /// The collection.
    pub collection: String,
    /// One stream per origin.
    pub streams: Vec<Stream>,
}

/// What a bundle carries of one origin in one collection, as catch-up sends it: every live
/// version with `after < counter <= through`, in counter order, and "complete through
/// `through`" (superseded versions are left out; their successors cover them).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Stream {
    /// The origin.
    pub origin: ReplicaId,
    /// The counter the stream continues from: the importer must hold this much already.
    pub after: u64,
    /// The counter it completes the importer's vector through.
    pub through: u64,
    /// The versions, in counter order.
    pub versions: Vec<Version>,
}

impl Body {
    /// Versions in the body.
    pub fn versions(&self) -> u64 {
        self.parts
            .iter()
            .flat_map(|p| &p.streams)
            .map(|s| s.versions.len() as u64)
            .sum()
    }
}

/// Bounds on a bundle: its file and its body before compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file.
    pub max_file: usize,
    /// Largest body before compression.
    pub max_body: usize,
}

impl Default for Limits {
    /// [`MAX_BUNDLE_BYTES`] for both.
    fn default() -> Self {
        Self {
            max_file: MAX_BUNDLE_BYTES,
            max_body: MAX_BUNDLE_BYTES,
        }
    }
}

/// zstd level: the default, fast enough for 256 MiB in a few seconds.
const LEVEL: i32 = 3;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BUNDLE_BYTES>()
}

/// The compressed body and its length before compression; `Err` with a sentence when it is
/// over `max_body`.
pub fn compress(body: &Body, max_body: usize) -> Result<(Vec<u8>, u64), String> {
    let raw = bincode::encode_to_vec(body, config()).map_err(|e| e.to_string())?;
    if raw.len() > max_body {
        return Err(format!(
            "the bundle's versions take {} bytes, over the limit of {max_body}",
            raw.len()
        ));
    }
    let packed = zstd::stream::encode_all(raw.as_slice(), LEVEL).map_err(|e| e.to_string())?;
    Ok((packed, raw.len() as u64))
}

/// A reader that counts what it reads.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Decodes the compressed body `packed`, which must be exactly `expected` bytes (at most
/// `max_body`) before compression; `Err` with a sentence for anything else. Never allocates
/// beyond the bounds, whatever the bytes.
pub fn decompress(packed: &[u8], expected: u64, max_body: usize) -> Result<Body, String> {
    if expected > max_body as u64 {
        return Err(format!(
            "its body claims {expected} bytes, over the limit of {max_body}"
        ));
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(packed)
        .map_err(|e| format!("its body is not zstd: {e}"))?;
    let mut reader = BufReader::new(Counted {
        // One byte more than expected, so a longer body is noticed.
        inner: decoder.take(expected + 1),
        read: 0,
    });
    let body: Body = bincode::decode_from_std_read(&mut reader, config())
        .map_err(|e| format!("its body does not decode: {e}"))?;
    let mut more = [0u8; 1];
    let extra = reader
        .read(&mut more)
        .map_err(|e| format!("its body does not decompress: {e}"))?;
    if extra != 0 {
        return Err("its body holds bytes after its versions".to_owned());
    }
    // Nothing is left in the buffer: everything read was decoded.
    let read = reader.get_ref().read;
    if read != expected {
        return Err(format!(
            "its body is {read} bytes, not the {expected} its header says"
        ));
    }
    Ok(body)
}
