//! Restoring a backup: the file is read frame by frame (every length checked, the SHA-256
//! checked at its end) into a new store beside the data dir, which becomes a new incarnation
//! and only then takes the data dir's place. A damaged file, a wrong storage key or another
//! node's backup leaves the data dir as it was.

use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::frame::{self, BackupFileError, BackupHeader, TAG_END, TAG_FILE, TAG_ROWS};
use super::BackupError;
use crate::config::Config;
use crate::store::{SledStore, Store, WriteBatch};

/// Raw bytes of rows per store batch while writing the new store.
const BATCH_BYTES: usize = 4 << 20;

/// Files of the data dir a backup may carry (anything else in a file frame is refused).
pub(super) const FILES: &[&str] = &[crate::auth::USERS_FILE, crate::config::ADMIN_TOKEN_FILE];

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The backup's header.
    pub header: BackupHeader,
    /// The data dir rebuilt.
    pub data_dir: PathBuf,
    /// Store rows restored.
    pub rows: u64,
    /// The copy's replica id, now a past incarnation.
    pub old_replica: String,
    /// The node's new replica id.
    pub new_replica: String,
    /// Where the data dir that was there went (with `force`).
    pub moved_aside: Option<PathBuf>,
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> BackupError {
    move |source| BackupError::Io { what, source }
}

/// Rebuilds `config`'s data dir from the backup `file` as a new incarnation. The daemon must
/// be stopped (a data dir in use is refused); a data dir that holds anything is refused
/// unless `force`, which moves it aside (never deletes it).
pub fn restore(config: &Config, file: &Path, force: bool) -> Result<RestoreReport, BackupError> {
    let data_dir = config.node.data_dir.clone();
    let reader = fs::File::open(file).map_err(io_err(format!("cannot open {}", file.display())))?;
    let mut input = Hashing::new(BufReader::new(reader));
    let header = frame::read_opening(&mut input)?;
    if header.node != config.node.name {
        return Err(BackupError::Refused(format!(
            "{} is a backup of node {:?}, but {} is the config of node {:?}: a node is restored \
             only from its own backups",
            file.display(),
            header.node,
            config.origin.display(),
            config.node.name
        )));
    }
    let owner = check_target(&data_dir, force)?;
    let staging = sibling(&data_dir, "restoring");
    if staging.exists() {
        // What an interrupted restore left: never the data dir itself.
        fs::remove_dir_all(&staging)
            .map_err(io_err(format!("cannot remove {}", staging.display())))?;
    }
    let result = build(config, &header, &mut input, &staging);
    let (rows, old, new) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if let Some((uid, gid)) = owner {
        chown_tree(&staging, uid, gid)?;
    }
    let moved_aside = if data_dir.exists() {
        let aside = sibling(
            &data_dir,
            &format!("before-restore-{}", crate::time::unix_ms_now() / 1000),
        );
        fs::rename(&data_dir, &aside).map_err(io_err(format!(
            "cannot move {} aside to {}",
            data_dir.display(),
            aside.display()
        )))?;
        Some(aside)
    } else {
        None
    };
    fs::rename(&staging, &data_dir).map_err(io_err(format!(
        "cannot move {} to {}",
        staging.display(),
        data_dir.display()
    )))?;
    if let Some(parent) = data_dir.parent() {
        let _ = fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(RestoreReport {
        header,
        data_dir,
        rows,
        old_replica: old,
        new_replica: new,
        moved_aside,
    })
}

/// `DATA_DIR.what`, beside the data dir (so a rename moves it into place).
fn sibling(data_dir: &Path, what: &str) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "officesync".into());
    name.push(format!(".{what}"));
    data_dir.with_file_name(name)
}

/// Refuses a data dir in use, or (without `force`) one that holds anything; returns the
/// owner the restored tree gets (the old data dir's, when this process may give it).
fn check_target(data_dir: &Path, force: bool) -> Result<Option<(u32, u32)>, BackupError> {
    let meta = match fs::metadata(data_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BackupError::Io {
                what: format!("cannot read {}", data_dir.display()),
                source,
            })
        }
    };
    let lock_path = data_dir.join("LOCK");
    if let Ok(lock) = fs::OpenOptions::new().write(true).open(&lock_path) {
        if let Err(fs::TryLockError::WouldBlock) = lock.try_lock() {
            return Err(BackupError::Refused(format!(
                "data dir {} is in use by a running officesyncd: stop it first (systemctl stop \
                 officesyncd)",
                data_dir.display()
            )));
        }
    }
    let empty = fs::read_dir(data_dir)
        .map_err(io_err(format!("cannot read {}", data_dir.display())))?
        .next()
        .is_none();
    if !empty && !force {
        return Err(BackupError::Refused(format!(
            "data dir {} is not empty: restoring replaces it; pass --force to move it aside \
             (to {}) and restore",
            data_dir.display(),
            sibling(data_dir, "before-restore-TIME").display()
        )));
    }
    // Only root may give files away; anyone else restores as themselves.
    let me = crate::config::access::Account::current().map(|a| a.uid);
    Ok((me == Some(0)).then_some((meta.uid(), meta.gid())))
}

/// Writes the store and files of the backup into `staging`, checks the checksum, then makes
/// the store a new incarnation. Returns the rows and the old and new replica ids.
fn build(
    config: &Config,
    header: &BackupHeader,
    input: &mut Hashing<impl Read>,
    staging: &Path,
) -> Result<(u64, String, String), BackupError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(io_err(format!("cannot create {}", staging.display())))?;
    let store = SledStore::open(staging)?;
    let mut rows = 0u64;
    let mut batch = WriteBatch::default();
    let mut batch_bytes = 0usize;
    loop {
        let tag = input.read_tag()?;
        match tag {
            TAG_ROWS => {
                let raw = read_body(input, "a rows frame")?;
                for (key, value) in parse_rows(&raw)? {
                    batch_bytes += key.len() + value.len();
                    batch.put(key.to_vec(), value.to_vec());
                    rows += 1;
                }
                if batch_bytes >= BATCH_BYTES {
                    store.apply(std::mem::take(&mut batch))?;
                    batch_bytes = 0;
                }
            }
            TAG_FILE => {
                let len = u16::from_be_bytes(frame::read_array(input, "a file name length")?);
                if len > frame::MAX_NAME_BYTES {
                    return Err(malformed(format!("a file name of {len} bytes")));
                }
                let mut name = vec![0u8; usize::from(len)];
                frame::read_exact(input, &mut name, "a file name")?;
                let name = String::from_utf8(name)
                    .ok()
                    .filter(|n| FILES.contains(&n.as_str()))
                    .ok_or_else(|| malformed("a file this build does not restore".into()))?;
                let bytes = read_body(input, "a file frame")?;
                let path = staging.join(&name);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err(format!("cannot create {}", path.display())))?;
                io::Write::write_all(&mut f, &bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err(format!("cannot write {}", path.display())))?;
            }
            TAG_END => break,
            other => return Err(malformed(format!("unknown frame tag {other:#04x}"))),
        }
    }
    let declared = u64::from_be_bytes(frame::read_array(input, "the end frame")?);
    let digest = input.finish();
    let end: [u8; 32] = frame::read_array(input, "the end frame")?;
    if digest.as_ref() != end {
        return Err(BackupFileError::Checksum.into());
    }
    if declared != rows {
        return Err(malformed(format!(
            "its end frame counts {declared} rows, its frames hold {rows}"
        )));
    }
    let mut extra = [0u8; 1];
    if input.inner.read(&mut extra).map_err(BackupFileError::Io)? != 0 {
        return Err(malformed("bytes after its end frame".into()));
    }
    if !batch.is_empty() {
        store.apply(batch)?;
    }
    store.sync()?;
    drop(store);
    // Opened as the daemon will (the storage key checked), then a new incarnation.
    let mut at = config.clone();
    at.node.data_dir = staging.to_path_buf();
    let store = crate::node::open_store(&at).map_err(Box::new)?;
    let (old, new) = crate::replica::start_new_incarnation(store.as_ref(), &config.node.name)?;
    if old.as_str() != header.replica {
        tracing::warn!(header = %header.replica, store = %old, "the backup's header names another replica id than its store");
    }
    Ok((rows, old.to_string(), new.to_string()))
}

fn malformed(what: String) -> BackupError {
    BackupFileError::Malformed(what).into()
}

/// Reads `raw length | zstd length | zstd` and decompresses into at most the raw length.
fn read_body(input: &mut impl Read, what: &str) -> Result<Vec<u8>, BackupError> {
    let raw_len = u32::from_be_bytes(frame::read_array(input, what)?);
    let z_len = u32::from_be_bytes(frame::read_array(input, what)?);
    if raw_len > frame::MAX_FRAME_BYTES || z_len > frame::MAX_FRAME_BYTES + (1 << 20) {
        return Err(malformed(format!(
            "{what} declares {raw_len} bytes ({z_len} compressed); at most {}",
            frame::MAX_FRAME_BYTES
        )));
    }
    let mut z = vec![0u8; z_len as usize];
    frame::read_exact(input, &mut z, what)?;
    let raw = zstd::bulk::decompress(&z, raw_len as usize)
        .map_err(|e| malformed(format!("{what} does not decompress: {e}")))?;
    if raw.len() != raw_len as usize {
        return Err(malformed(format!(
            "{what} holds {} bytes, not the {raw_len} it declares",
            raw.len()
        )));
    }
    Ok(raw)
}

/// One store row of a frame: key and value.
type Row<'a> = (&'a [u8], &'a [u8]);

/// The rows of a rows frame: `key length u32 | key | value length u32 | value`, repeated.
fn parse_rows(mut raw: &[u8]) -> Result<Vec<Row<'_>>, BackupError> {
    fn take<'a>(raw: &mut &'a [u8], what: &str) -> Result<&'a [u8], BackupError> {
        let (len, rest) = raw
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed(format!("a row cut inside its {what} length")))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return Err(malformed(format!("a row's {what} runs past its frame")));
        }
        let (bytes, rest) = rest.split_at(len);
        *raw = rest;
        Ok(bytes)
    }
    let mut rows = Vec::new();
    while !raw.is_empty() {
        let key = take(&mut raw, "key")?;
        let value = take(&mut raw, "value")?;
        if key.is_empty() {
            return Err(malformed("a row with an empty key".into()));
        }
        rows.push((key, value));
    }
    Ok(rows)
}

/// A reader that hashes what it reads until [`Hashing::finish`] (the checksum covers every
/// byte before the digest).
struct Hashing<R> {
    inner: R,
    ctx: Option<ring::digest::Context>,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            ctx: Some(ring::digest::Context::new(&ring::digest::SHA256)),
        }
    }

    /// Reads one frame tag.
    fn read_tag(&mut self) -> Result<u8, BackupError> {
        let [tag] = frame::read_array(self, "a frame tag")?;
        Ok(tag)
    }

    /// The digest of everything hashed; nothing is hashed after.
    fn finish(&mut self) -> ring::digest::Digest {
        self.ctx
            .take()
            .unwrap_or_else(|| ring::digest::Context::new(&ring::digest::SHA256))
            .finish()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(ctx) = self.ctx.as_mut() {
            ctx.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Gives `dir` and everything in it to `uid:gid`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), BackupError> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(io_err(format!("cannot chown {}", dir.display())))?;
    for entry in fs::read_dir(dir).map_err(io_err(format!("cannot read {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("cannot read {}", dir.display())))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            chown_tree(&path, uid, gid)?;
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(io_err(format!("cannot chown {}", path.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_every_damaged_frame_is_an_error_not_a_panic() {
        let mut raw = Vec::new();
        for (k, v) in [(&b"Mformat"[..], &b"\x02"[..]), (b"Kx", b"")] {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k);
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v);
        }
        let rows = parse_rows(&raw).expect("rows");
        assert_eq!(
            rows,
            vec![(&b"Mformat"[..], &b"\x02"[..]), (&b"Kx"[..], &b""[..])]
        );
        // Every cut and every declared length past the frame is refused.
        for cut in 1..raw.len() {
            if cut == 4 + 7 + 4 + 1 {
                continue; // a whole first row
            }
            assert!(parse_rows(&raw[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut long = raw.clone();
        long[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_rows(&long).is_err());
        assert!(
            parse_rows(&[0, 0, 0, 0, 0, 0, 0, 0]).is_err(),
            "an empty key"
        );
    }

    #[test]
    fn declared_frame_sizes_are_bounded_before_anything_is_allocated() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        frame.extend_from_slice(&8u32.to_be_bytes());
        frame.extend_from_slice(&[0; 8]);
        let err = read_body(&mut frame.as_slice(), "a rows frame").expect_err("refused");
        assert!(err.to_string().contains("at most"), "{err}");
        // A body that decompresses to more than it declares is refused too.
        let z = zstd::bulk::compress(&[7u8; 1000], 3).expect("compress");
        let mut lying = Vec::new();
        lying.extend_from_slice(&10u32.to_be_bytes());
        lying.extend_from_slice(&(z.len() as u32).to_be_bytes());
        lying.extend_from_slice(&z);
        assert!(read_body(&mut lying.as_slice(), "a rows frame").is_err());
    }
}
