//! Making a backup: a [`Snapshot`] of the store read page by page into frames, handed to a
//! sink one frame at a time (the API streams them; nothing holds the whole file).

use std::path::PathBuf;

use super::frame::{self, BackupHeader, TAG_FILE, TAG_ROWS, TARGET_FRAME_BYTES};
use super::BackupError;
use crate::replica::Replica;
use crate::store::{Snapshot, Snapshots};

/// The media type of a backup file.
pub const BACKUP_CONTENT_TYPE: &str = "application/vnd.officesync.backup";

/// Rows read from the snapshot per page.
const PAGE_ROWS: usize = 4096;

/// zstd level of the frames: fast, and most of the gain.
const ZSTD_LEVEL: i32 = 3;

/// Where backups come from: the store's snapshot layer and the data dir.
#[derive(Debug, Clone)]
pub struct BackupSource {
    snapshots: Snapshots,
    data_dir: PathBuf,
    sealed: bool,
}

impl BackupSource {
    /// Backups of the store under `snapshots` (values sealed when `sealed`), whose data dir
    /// is `data_dir`.
    pub fn new(snapshots: Snapshots, data_dir: PathBuf, sealed: bool) -> BackupSource {
        BackupSource {
            snapshots,
            data_dir,
            sealed,
        }
    }

    /// Begins a backup of `replica`'s store now: every write acknowledged before this call is
    /// in it, and nothing written after.
    pub fn begin(&self, replica: &Replica, now_ms: u64) -> Result<Export, BackupError> {
        let snapshot = self.snapshots.begin()?;
        let mut files = Vec::new();
        for name in super::restore::FILES {
            let path = self.data_dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => files.push(((*name).to_owned(), bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BackupError::Io {
                        what: format!("cannot read {}", path.display()),
                        source,
                    })
                }
            }
        }
        Ok(Export {
            snapshot,
            header: BackupHeader {
                node: replica.node().to_owned(),
                replica: replica.id().to_string(),
                release: crate::RELEASE.to_owned(),
                created_unix_ms: now_ms,
                sealed: self.sealed,
            },
            files,
        })
    }
}

/// A backup begun and not yet written.
#[derive(Debug)]
pub struct Export {
    snapshot: Snapshot,
    header: BackupHeader,
    files: Vec<(String, Vec<u8>)>,
}

impl Export {
    /// Its header.
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// Writes the whole file, one piece at a time, into `sink`; returns the rows written.
    /// Blocking: run it off the async workers.
    pub fn write_to(
        mut self,
        sink: &mut dyn FnMut(Vec<u8>) -> Result<(), BackupError>,
    ) -> Result<u64, BackupError> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut emit = |bytes: Vec<u8>| -> Result<(), BackupError> {
            ctx.update(&bytes);
            sink(bytes)
        };
        emit(frame::encode_opening(&self.header))?;
        for (name, bytes) in &self.files {
            emit(file_frame(name, bytes)?)?;
        }
        let mut rows = 0u64;
        let mut raw = Vec::with_capacity(TARGET_FRAME_BYTES + (64 << 10));
        loop {
            let page = self.snapshot.next_page(PAGE_ROWS)?;
            if page.is_empty() {
                break;
            }
            for (key, value) in page {
                raw.extend_from_slice(&(key.len() as u32).to_be_bytes());
                raw.extend_from_slice(&key);
                raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
                raw.extend_from_slice(&value);
                rows += 1;
                if raw.len() >= TARGET_FRAME_BYTES {
                    emit(rows_frame(&raw)?)?;
                    raw.clear();
                }
            }
        }
        if !raw.is_empty() {
            emit(rows_frame(&raw)?)?;
        }
        sink(frame::encode_end(rows, ctx))?;
        Ok(rows)
    }
}

fn compress(raw: &[u8]) -> Result<Vec<u8>, BackupError> {
    zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(|source| BackupError::Io {
        what: "cannot compress a frame".into(),
        source,
    })
}

fn too_large(what: &str, len: usize) -> BackupError {
    BackupError::Refused(format!(
        "{what} of {len} bytes is larger than a backup frame may be ({} bytes)",
        frame::MAX_FRAME_BYTES
    ))
}

fn rows_frame(raw: &[u8]) -> Result<Vec<u8>, BackupError> {
    if raw.len() > frame::MAX_FRAME_BYTES as usize {
        return Err(too_large("a store row", raw.len()));
    }
    let z = compress(raw)?;
    let mut out = Vec::with_capacity(9 + z.len());
    out.push(TAG_ROWS);
    out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    out.extend_from_slice(&(z.len() as u32).to_be_bytes());
    out.extend_from_slice(&z);
    Ok(out)
}

fn file_frame(name: &str, bytes: &[u8]) -> Result<Vec<u8>, BackupError> {
    if bytes.len() > frame::MAX_FRAME_BYTES as usize {
        return Err(too_large(name, bytes.len()));
    }
    let z = compress(bytes)?;
    let mut out = Vec::with_capacity(11 + name.len() + z.len());
    out.push(TAG_FILE);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&(z.len() as u32).to_be_bytes());
    out.extend_from_slice(&z);
    Ok(out)
}
