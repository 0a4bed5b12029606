//! The backup file's layout, its header, and the whole-file checksum check (built without
//! the node, so the CLI checks what it downloaded).
//!
//! ```text
//! magic "OSBACKUP" | format u16 | header length u32 | header (JSON, BackupHeader)
//! frames:  1 | raw length u32 | zstd length u32 | zstd(rows)          rows of the store
//!          2 | name length u16 | name | raw length u32 | zstd length u32 | zstd(file)
//! end:     0xFF | rows u64 | SHA-256 of every byte before it (the 0xFF and rows included)
//! ```
//!
//! Integers are big-endian. `rows` is `key length u32 | key | value length u32 | value`,
//! repeated. Every length is checked against the limits below before anything is allocated,
//! and a frame's body is decompressed into at most its declared raw length.

use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"OSBACKUP";
/// The format this build writes and reads.
pub const FORMAT: u16 = 1;
/// Largest header accepted.
pub const MAX_HEADER_BYTES: u32 = 64 << 10;
/// Largest raw (decompressed) frame accepted; a writer fills frames to [`TARGET_FRAME_BYTES`].
pub const MAX_FRAME_BYTES: u32 = 64 << 20;
/// How many raw bytes a writer puts in one frame (one larger row makes a frame of its own).
pub const TARGET_FRAME_BYTES: usize = 4 << 20;
/// Largest file name of a file frame.
pub const MAX_NAME_BYTES: u16 = 255;
/// Tag of a frame of store rows.
pub const TAG_ROWS: u8 = 1;
/// Tag of a frame holding one file of the data dir.
pub const TAG_FILE: u8 = 2;
/// Tag of the end frame.
pub const TAG_END: u8 = 0xFF;
/// Bytes of the end frame: tag, row count, SHA-256.
pub const END_BYTES: usize = 1 + 8 + 32;

/// What a backup says about itself, in the clear at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The node it was taken from.
    pub node: String,
    /// That node's replica id when the backup began (`name@incarnation`).
    pub replica: String,
    /// The release that wrote it (`officesyncd 0.1.0 (commit)`).
    pub release: String,
    /// When the snapshot began, in Unix milliseconds.
    pub created_unix_ms: u64,
    /// True when the store's values are sealed (encryption at rest): they are copied as
    /// stored, and a restore needs the same storage key.
    pub sealed: bool,
}

/// Why a backup file is refused.
#[derive(Debug, Error)]
pub enum BackupFileError {
    /// Reading the file failed.
    #[error("cannot read the backup: {0}")]
    Io(#[from] io::Error),
    /// Not a backup, another format, or damaged.
    #[error("not a usable backup file: {0}")]
    Malformed(String),
    /// The checksum at its end does not match its bytes.
    #[error("the backup is damaged: its SHA-256 does not match its contents (a copy cut short or altered)")]
    Checksum,
}

/// Encodes the file's opening: magic, format, header.
pub fn encode_opening(header: &BackupHeader) -> Vec<u8> {
    // Invariant: a struct of strings, an integer and a bool always serialises.
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(14 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Reads and checks the opening from `r`; returns the header.
pub fn read_opening(r: &mut impl Read) -> Result<BackupHeader, BackupFileError> {
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic, "the magic")?;
    if &magic != MAGIC {
        return Err(BackupFileError::Malformed(
            "it does not start with OSBACKUP (is it a backup made by `officesync backup`?)".into(),
        ));
    }
    let format = u16::from_be_bytes(read_array(r, "the format")?);
    if format != FORMAT {
        return Err(BackupFileError::Malformed(format!(
            "backup format {format}; this build reads format {FORMAT} (use the release that made it)"
        )));
    }
    let len = u32::from_be_bytes(read_array(r, "the header length")?);
    if len > MAX_HEADER_BYTES {
        return Err(BackupFileError::Malformed(format!(
            "header of {len} bytes (at most {MAX_HEADER_BYTES})"
        )));
    }
    let mut json = vec![0u8; len as usize];
    read_exact(r, &mut json, "the header")?;
    serde_json::from_slice(&json)
        .map_err(|e| BackupFileError::Malformed(format!("unreadable header: {e}")))
}

/// Encodes the end frame: its tag and `rows` are hashed into `ctx` (which has hashed every
/// byte before them), and the digest follows.
pub fn encode_end(rows: u64, mut ctx: ring::digest::Context) -> Vec<u8> {
    let mut out = Vec::with_capacity(END_BYTES);
    out.push(TAG_END);
    out.extend_from_slice(&rows.to_be_bytes());
    ctx.update(&out);
    out.extend_from_slice(ctx.finish().as_ref());
    out
}

/// What [`check_file`] found.
#[derive(Debug, Clone)]
pub struct CheckedFile {
    /// Its header.
    pub header: BackupHeader,
    /// Store rows it holds, as its end frame says.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Checks the file at `path` whole: its opening, and the SHA-256 in its end frame against its
/// bytes (the frames themselves are read by a restore).
pub fn check_file(path: &Path) -> Result<CheckedFile, BackupFileError> {
    let bytes = std::fs::metadata(path)?.len();
    let mut file = io::BufReader::new(std::fs::File::open(path)?);
    let header = read_opening(&mut file)?;
    let opening = encode_opening(&header).len() as u64;
    if bytes < opening + END_BYTES as u64 {
        return Err(BackupFileError::Malformed(
            "it ends before its end frame (cut short)".into(),
        ));
    }
    // Hash again from the start: the opening as read, then everything up to the end frame.
    let mut file = io::BufReader::new(std::fs::File::open(path)?);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = bytes - 32;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = buf.len().min(left as usize);
        read_exact(&mut file, &mut buf[..n], "the frames")?;
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    let mut digest = [0u8; 32];
    read_exact(&mut file, &mut digest, "the end frame")?;
    if ctx.finish().as_ref() != digest {
        return Err(BackupFileError::Checksum);
    }
    // The end frame's head, now known intact.
    let mut file = io::BufReader::new(std::fs::File::open(path)?);
    io::Seek::seek(&mut file, io::SeekFrom::Start(bytes - END_BYTES as u64))?;
    let mut head = [0u8; 9];
    read_exact(&mut file, &mut head, "the end frame")?;
    if head[0] != TAG_END {
        return Err(BackupFileError::Malformed(
            "no end frame (cut short)".into(),
        ));
    }
    let mut rows = [0u8; 8];
    rows.copy_from_slice(&head[1..]);
    Ok(CheckedFile {
        header,
        rows: u64::from_be_bytes(rows),
        bytes,
    })
}

/// Reads exactly `buf.len()` bytes; an early end names `what`.
pub fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BackupFileError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            BackupFileError::Malformed(format!("it ends inside {what} (cut short)"))
        } else {
            BackupFileError::Io(e)
        }
    })
}

/// Reads `N` bytes.
pub fn read_array<const N: usize>(
    r: &mut impl Read,
    what: &str,
) -> Result<[u8; N], BackupFileError> {
    let mut a = [0u8; N];
    read_exact(r, &mut a, what)?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BackupHeader {
        BackupHeader {
            node: "hefei".into(),
            replica: "hefei@0000002a".into(),
            release: "officesyncd test".into(),
            created_unix_ms: 1,
            sealed: false,
        }
    }

    fn file_with(body: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = encode_opening(&header());
        bytes.extend_from_slice(body);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&bytes);
        bytes.extend_from_slice(&encode_end(7, ctx));
        let path = dir.path().join("b.osbackup");
        std::fs::write(&path, &bytes).expect("write");
        (dir, path)
    }

    #[test]
    fn a_whole_file_checks_and_any_altered_byte_is_refused() {
        let (_dir, path) = file_with(b"\x01frames");
        let checked = check_file(&path).expect("intact");
        assert_eq!((checked.header, checked.rows), (header(), 7));
        let good = std::fs::read(&path).expect("read");
        for at in [0, 9, 20, good.len() - 41, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            std::fs::write(&path, &bad).expect("write");
            assert!(
                check_file(&path).is_err(),
                "byte {at} altered, still accepted"
            );
        }
        std::fs::write(&path, &good[..good.len() - 1]).expect("write");
        assert!(check_file(&path).is_err(), "a cut file was accepted");
    }

    #[test]
    fn a_huge_declared_header_is_refused_before_allocation() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read_opening(&mut bytes.as_slice()).expect_err("refused");
        assert!(err.to_string().contains("header of"), "{err}");
    }
}
