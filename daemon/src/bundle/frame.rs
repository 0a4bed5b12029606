//! The framing of a bundle file, readable without the node's libraries (the CLI prints the
//! header of the bundle it wrote with it): the magic, the format, the header in the clear, the
//! compressed body and the exporter's signature of everything before it.
//!
//! ```text
//! "OSBUNDLE"   8 bytes
//! format       1 byte: FORMAT
//! header_len   u32, big-endian, at most MAX_HEADER_BYTES
//! header       JSON BundleInfo (officesync-api)
//! body_len     u64, big-endian
//! body         zstd of the bincode body (the versions, see bundle::body)
//! signature    SIGNATURE_LEN bytes: the exporter's signature of every byte before it
//! ```

use officesync_api::BundleInfo;
use officesync_protocol::signing::SIGNATURE_LEN;
use thiserror::Error;

/// The first bytes of every bundle file.
pub const MAGIC: &[u8; 8] = b"OSBUNDLE";

/// The format this build writes and reads.
pub const FORMAT: u8 = 1;

/// Largest bundle file this build writes or reads, and largest body (before compression): a
/// bundle is held in memory whole, at the exporter and at the importer.
pub const MAX_BUNDLE_BYTES: usize = 256 << 20;

/// Largest header.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Bytes before the header: magic, format, header length.
const PREFIX: usize = 8 + 1 + 4;

/// The parts of a bundle file, borrowed from its bytes.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The header, parsed.
    pub info: BundleInfo,
    /// Every byte the signature covers.
    pub signed: &'a [u8],
    /// The compressed body.
    pub body: &'a [u8],
    /// The exporter's framed signature.
    pub signature: &'a [u8],
}

/// Why bytes are not a bundle this build reads.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Larger than the limit.
    #[error("the bundle is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Does not start with the magic.
    #[error("not an officesync bundle (it does not start with OSBUNDLE)")]
    NotABundle,
    /// A format this build does not read.
    #[error("bundle format {0} is not supported by this build (it reads format {FORMAT})")]
    Format(u8),
    /// Ends before a part that its lengths announce.
    #[error("the bundle is cut short: its {0} is missing or incomplete")]
    Truncated(&'static str),
    /// A header length over [`MAX_HEADER_BYTES`].
    #[error("the bundle's header claims {0} bytes, over the limit of {MAX_HEADER_BYTES}")]
    HeaderTooLarge(u64),
    /// The header is not the JSON of a bundle header.
    #[error("the bundle's header is unreadable: {0}")]
    Header(String),
    /// Bytes between the body and the signature that no length accounts for.
    #[error("the bundle has {0} bytes more than its lengths account for")]
    Trailing(usize),
}

/// Splits `bytes` (at most `max_bytes`) into its parts and parses the header; checks nothing
/// the signature vouches for.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Frame<'_>, FrameError> {
    if bytes.len() > max_bytes {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FrameError::NotABundle);
    }
    let format = *bytes.get(8).ok_or(FrameError::Truncated("format"))?;
    if format != FORMAT {
        return Err(FrameError::Format(format));
    }
    let header_len = be_u64(
        bytes
            .get(9..PREFIX)
            .ok_or(FrameError::Truncated("header"))?,
    );
    if header_len > MAX_HEADER_BYTES as u64 {
        return Err(FrameError::HeaderTooLarge(header_len));
    }
    // Checked just above: the length fits in usize.
    let header_end = PREFIX + header_len as usize;
    let header = bytes
        .get(PREFIX..header_end)
        .ok_or(FrameError::Truncated("header"))?;
    let info: BundleInfo =
        serde_json::from_slice(header).map_err(|e| FrameError::Header(e.to_string()))?;
    let body_start = header_end + 8;
    let body_len = be_u64(
        bytes
            .get(header_end..body_start)
            .ok_or(FrameError::Truncated("body"))?,
    );
    let room = bytes.len().saturating_sub(body_start);
    let body_len = usize::try_from(body_len)
        .ok()
        .filter(|n| *n <= room)
        .ok_or(FrameError::Truncated("body"))?;
    let body_end = body_start + body_len;
    let rest = bytes.len() - body_end;
    if rest < SIGNATURE_LEN {
        return Err(FrameError::Truncated("signature"));
    }
    if rest > SIGNATURE_LEN {
        return Err(FrameError::Trailing(rest - SIGNATURE_LEN));
    }
    Ok(Frame {
        info,
        signed: &bytes[..body_end],
        body: &bytes[body_start..body_end],
        signature: &bytes[body_end..],
    })
}

/// The header of a bundle file, without checking anything it says (see [`parse`]).
pub fn read_info(bytes: &[u8]) -> Result<BundleInfo, FrameError> {
    parse(bytes, MAX_BUNDLE_BYTES).map(|f| f.info)
}

/// The bytes of a bundle with header `info` and compressed body `body`, up to its signature:
/// what the exporter signs (and then appends the signature to).
pub fn unsigned(info: &BundleInfo, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header = serde_json::to_vec(info).map_err(|e| FrameError::Header(e.to_string()))?;
    if header.len() > MAX_HEADER_BYTES {
        return Err(FrameError::HeaderTooLarge(header.len() as u64));
    }
    let mut out = Vec::with_capacity(PREFIX + header.len() + 8 + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    // At most MAX_HEADER_BYTES (1 MiB): fits in u32.
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Big-endian integer of up to 8 bytes.
fn be_u64(b: &[u8]) -> u64 {
    b.iter().fold(0, |n, byte| (n << 8) | u64::from(*byte))
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The bytes of lowercase or uppercase hex `text`, `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BundleInfo {
        BundleInfo {
            exporter: "general-office".into(),
            exporter_certificate: to_hex(b"cert"),
            created_ms: 1,
            for_node: Some("hefei".into()),
            incremental: false,
            versions: 0,
            body_bytes: 0,
            collections: Vec::new(),
        }
    }

    fn bundle(body: &[u8]) -> Vec<u8> {
        let mut bytes = unsigned(&info(), body).expect("frames");
        bytes.extend_from_slice(&[7; SIGNATURE_LEN]);
        bytes
    }

    #[test]
    fn frames_round_trip() {
        let bytes = bundle(b"body");
        let f = parse(&bytes, MAX_BUNDLE_BYTES).expect("parses");
        assert_eq!(f.info, info());
        assert_eq!(f.body, b"body");
        assert_eq!(f.signature, &[7; SIGNATURE_LEN]);
        assert_eq!(f.signed.len() + SIGNATURE_LEN, bytes.len());
        assert_eq!(read_info(&bytes).expect("info"), info());
    }

    #[test]
    fn every_bad_frame_is_refused_without_panicking() {
        let bytes = bundle(b"body");
        assert_eq!(parse(b"", 100).err(), Some(FrameError::NotABundle));
        assert!(matches!(
            parse(&bytes, 10),
            Err(FrameError::TooLarge { max: 10, .. })
        ));
        let mut format = bytes.clone();
        format[8] = 9;
        assert_eq!(
            parse(&format, usize::MAX).err(),
            Some(FrameError::Format(9))
        );
        let mut huge = bytes.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse(&huge, usize::MAX),
            Err(FrameError::HeaderTooLarge(_))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            parse(&trailing, usize::MAX).err(),
            Some(FrameError::Trailing(1))
        );
        // Every truncation is refused.
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len], usize::MAX).is_err(), "cut at {len}");
        }
        // A body length past the end.
        let at = bytes.len() - SIGNATURE_LEN - 4 - 8;
        let mut long = bytes.clone();
        long[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            parse(&long, usize::MAX).err(),
            Some(FrameError::Truncated("body"))
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("+1"), None);
    }
}
