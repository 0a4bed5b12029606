//! Bounded bincode encoding for persisted records: a leading format byte, then bincode with a
//! size limit on decode so a corrupt or hostile length can never allocate without bound.

use bincode::{Decode, Encode};
use thiserror::Error;

/// The format version of persisted records written by this build. Format 2 added each
/// sibling's author and signature; records of other types kept their layout.
pub const FORMAT_VERSION: u8 = 2;

/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u8 = 1;

/// Largest persisted record this build will decode.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Why a record could not be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The record was empty.
    #[error("empty record")]
    Empty,
    /// The record was written by an unknown format version.
    #[error(
        "record format {0} is not supported by this build (it reads {OLDEST_FORMAT_VERSION} to \
         {FORMAT_VERSION})"
    )]
    Format(u8),
    /// The record is larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// bincode refused the bytes.
    #[error("malformed record: {0}")]
    Malformed(#[from] bincode::error::DecodeError),
    /// Bytes were left after the record.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

/// Why a record could not be encoded.
#[derive(Debug, Error)]
#[error("could not encode record: {0}")]
pub struct EncodeError(#[from] bincode::error::EncodeError);

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// Encodes `value` with the format byte in front.
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// The length [`encode`] gives `value`, counted without building the bytes.
pub fn encoded_len<T: Encode>(value: &T) -> Result<usize, EncodeError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(value, &mut size, config())?;
    Ok(1 + size.bytes_written)
}

/// The format version a record was written with (its first byte), if this build reads it.
pub fn format_of(bytes: &[u8]) -> Result<u8, DecodeError> {
    let &format = bytes.first().ok_or(DecodeError::Empty)?;
    if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&format) {
        Ok(format)
    } else {
        Err(DecodeError::Format(format))
    }
}

/// Decodes a record written by [`encode`] of a type whose layout every readable format shares,
/// refusing unknown formats, oversize input and trailing bytes.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    format_of(bytes)?;
    decode_body(bytes)
}

/// Decodes a record that must be of format `format` (for a type whose layout changed).
pub fn decode_as<T: Decode<()>>(bytes: &[u8], format: u8) -> Result<T, DecodeError> {
    match format_of(bytes)? {
        f if f == format => decode_body(bytes),
        other => Err(DecodeError::Format(other)),
    }
}

fn decode_body<T: Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let body = bytes.get(1..).ok_or(DecodeError::Empty)?;
    if body.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge(body.len()));
    }
    let (value, used) = bincode::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(DecodeError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::{Dot, ReplicaId};
    use crate::hlc::Hlc;
    use crate::version::Version;

    fn sample() -> Version {
        let r = ReplicaId::new("hefei", 3).expect("valid");
        Version {
            collection: "situation".into(),
            key: "hefei/grain".into(),
            dot: Dot::new(r.clone(), 9),
            hlc: Hlc { ms: 5, logical: 1 },
            context: [(r, 8)].into_iter().collect(),
            value: Some(b"{\"t\":1}".to_vec()),
            author: None,
            signature: None,
        }
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let mut v = sample();
        assert_eq!(
            encoded_len(&v).expect("len"),
            encode(&v).expect("encode").len()
        );
        v.value = Some(vec![7; 300]);
        v.author = Some("clerk@hefei".into());
        assert_eq!(
            encoded_len(&v).expect("len"),
            encode(&v).expect("encode").len()
        );
    }

    #[test]
    fn round_trip() {
        let v = sample();
        let bytes = encode(&v).expect("encodes");
        assert_eq!(decode::<Version>(&bytes).expect("decodes"), v);
    }

    #[test]
    fn rejects_bad_input() {
        let mut bytes = encode(&sample()).expect("encodes");
        assert!(matches!(decode::<Version>(&[]), Err(DecodeError::Empty)));
        bytes[0] = 9;
        assert!(matches!(
            decode::<Version>(&bytes),
            Err(DecodeError::Format(9))
        ));
        bytes[0] = FORMAT_VERSION;
        bytes.push(0);
        assert!(matches!(
            decode::<Version>(&bytes),
            Err(DecodeError::Trailing(1))
        ));
        let truncated = &bytes[..bytes.len() - 5];
        assert!(matches!(
            decode::<Version>(truncated),
            Err(DecodeError::Malformed(_))
        ));
        // A huge declared length must fail without allocating it.
        let huge = [
            FORMAT_VERSION,
            0xfd,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert!(decode::<Vec<u8>>(&huge).is_err());
    }
}
