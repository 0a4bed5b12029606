//! The sled 0.34 [`Store`]: one tree, an exclusive lock on the data dir, an explicit fsync of
//! sled's log after its flush, and segments large enough that no record takes sled's
//! never-fsynced blob path.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::{Store, StoreError, WriteBatch};

/// Name of sled's directory inside the data dir.
pub const SLED_DIR: &str = "sled";

/// sled segment size. sled writes any log item larger than a quarter segment as a separate
/// blob file that it never fsyncs; with 4 MiB segments that is 1 MiB, far above the largest
/// node the replica writes (values are chunked into small pieces above this layer).
const SEGMENT_SIZE: usize = 4 << 20;

/// sled's page cache. sled's default (1 GiB) is more than an office server should give one
/// daemon; hot sibling sets and the dot index fit well within this.
const CACHE_BYTES: u64 = 64 << 20;

/// Mode of the data dir and of the directories in it that the store creates: the daemon's
/// user only (the store holds every record of the node in clear, unless encrypted).
const DIR_MODE: u32 = 0o700;
/// Mode of the files the store creates itself (`LOCK`, `DURABLE`).
const FILE_MODE: u32 = 0o600;

/// Name of the durable-generation mark file inside the data dir.
pub const MARK_FILE: &str = "DURABLE";

/// Tags a valid mark (so a torn or foreign file is not taken for one).
const MARK_MAGIC: u64 = 0x6f66_6669_6365_7379;

/// A [`Store`] on sled.
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    mark: File,
    mark_at_open: Option<u64>,
    _lock: File,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledStore {
    /// Opens (creating if needed) the store in `data_dir`, taking an exclusive lock on
    /// `data_dir/LOCK` first so a second daemon on the same dir is refused.
    ///
    /// Directories it creates (the data dir, its missing parents, `sled/`) are owner-only
    /// (0700) and so are the files it creates itself (0600), whatever the umask: outside the
    /// systemd unit (which sets `StateDirectoryMode`) nothing else protects them. An existing
    /// data dir keeps the mode its administrator gave it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(data_dir).map_err(|e| {
            io(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let lock_path = data_dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&lock_path)
            .map_err(|e| io(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(data_dir.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
        let dir = data_dir.join(SLED_DIR);
        create_private_dir(&dir)
            .map_err(|e| io(format!("cannot create {}: {e}", dir.display())))?;
        let config = sled::Config::new()
            .path(&dir)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        // sled 0.34 can panic instead of returning an error on some damaged logs.
        let mut opened = catch_unwind(AssertUnwindSafe(|| config.open()));
        // Our LOCK is held, so a conflict on sled's own lock can only be an instance of this
        // process still being torn down (sled's I/O threads drop it last): wait it out briefly.
        for _ in 0..100 {
            match &opened {
                Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    opened = catch_unwind(AssertUnwindSafe(|| config.open()));
                }
                _ => break,
            }
        }
        let corrupt = |detail: String| StoreError::Corrupt {
            path: dir.display().to_string(),
            detail,
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Corruption { at, .. })) => {
                return Err(corrupt(format!("sled reports corruption at {at:?}")))
            }
            Ok(Err(sled::Error::Unsupported(s))) => return Err(corrupt(s)),
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => return Err(corrupt("sled panicked while recovering its log".into())),
        };
        let mark_path = data_dir.join(MARK_FILE);
        let mark = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(FILE_MODE)
            .open(&mark_path)
            .map_err(|e| io(format!("cannot open {}: {e}", mark_path.display())))?;
        let mark_at_open = read_mark(&mark);
        // sled writes its `conf` file without fsyncing it and never fsyncs its directory: make
        // both durable now, so a store created just before a power cut opens whole (found by
        // the chaos suite's power-loss filesystem, which rolls `conf` back to empty).
        let conf = dir.join("conf");
        File::open(&conf)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(format!("cannot fsync {}: {e}", conf.display())))?;
        fsync_dir(&dir)?;
        fsync_dir(data_dir)?;
        Ok(Self {
            db,
            dir,
            mark,
            mark_at_open,
            _lock: lock,
        })
    }

    fn map_err(&self, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Corruption { at, .. } => StoreError::Corrupt {
                path: self.dir.display().to_string(),
                detail: format!("sled reports corruption at {at:?}"),
            },
            other => io(other),
        }
    }
}

/// The generation in a mark file: 8 bytes little-endian, then the same XOR [`MARK_MAGIC`].
fn read_mark(file: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 16];
    file.read_exact_at(&mut buf, 0).ok()?;
    let (g, check) = buf.split_at(8);
    let g = u64::from_le_bytes(g.try_into().ok()?);
    let check = u64::from_le_bytes(check.try_into().ok()?);
    (check == g ^ MARK_MAGIC).then_some(g)
}

/// Creates `dir` and its missing parents with mode [`DIR_MODE`] (before the umask, which
/// can only remove bits); an existing directory is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(format!("cannot fsync {}: {e}", dir.display())))
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(key)
            .map_err(|e| self.map_err(e))?
            .map(|v| v.to_vec()))
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::Rows, StoreError> {
        let iter = match end {
            Some(end) => self.db.range(start..end),
            None => self.db.range(start..),
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(|e| self.map_err(e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(|e| self.map_err(e))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.map_err(e))?;
        // sled's flush uses sync_file_range, which neither writes file metadata nor flushes
        // the device cache: fsync the log file itself before anything is acknowledged.
        let log = self.dir.join("db");
        File::open(&log)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(format!("cannot fsync {}: {e}", log.display())))
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn mark_durable(&self, generation: u64) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&generation.to_le_bytes());
        buf[8..].copy_from_slice(&(generation ^ MARK_MAGIC).to_le_bytes());
        // Not fsynced: after a crash the mark may be older than the store, never newer, since
        // it is written only after the sync that made `generation` durable returned.
        self.mark
            .write_all_at(&buf, 0)
            .map_err(|e| io(format!("cannot write {MARK_FILE}: {e}")))
    }

    fn durable_mark(&self) -> Option<u64> {
        self.mark_at_open
    }

    fn unsynced_blob_files(&self) -> u64 {
        std::fs::read_dir(self.dir.join("blobs")).map_or(0, |d| d.count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::contract::exercise(&SledStore::open(dir.path()).expect("open"));
    }

    #[test]
    fn a_new_data_dir_and_its_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let parent = tempfile::tempdir().expect("tempdir");
        let data = parent.path().join("var/lib/officesync");
        let store = SledStore::open(&data).expect("open");
        assert_eq!(mode(&data), 0o700, "the data dir");
        assert_eq!(
            mode(&parent.path().join("var")),
            0o700,
            "a parent it created"
        );
        assert_eq!(mode(&data.join(SLED_DIR)), 0o700, "sled's dir");
        assert_eq!(mode(&data.join("LOCK")), 0o600);
        assert_eq!(mode(&data.join(MARK_FILE)), 0o600);
        drop(store);
        // An existing data dir keeps the mode its administrator chose.
        let chosen = parent.path().join("chosen");
        std::fs::create_dir(&chosen).expect("mkdir");
        std::fs::set_permissions(&chosen, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        drop(SledStore::open(&chosen).expect("open"));
        assert_eq!(mode(&chosen), 0o750);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = SledStore::open(dir.path()).expect("open");
        let err = SledStore::open(dir.path()).expect_err("locked");
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        drop(first);
        SledStore::open(dir.path()).expect("reopen after release");
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = SledStore::open(dir.path()).expect("open");
            let mut b = WriteBatch::default();
            b.put(b"k".to_vec(), vec![7; 1000]);
            s.apply(b).expect("apply");
            s.sync().expect("sync");
        }
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get(b"k").expect("get"), Some(vec![7; 1000]));
    }

    #[test]
    fn durable_mark_survives_reopen_and_ignores_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = SledStore::open(dir.path()).expect("open");
            assert_eq!(s.durable_mark(), None);
            s.mark_durable(41).expect("mark");
            s.mark_durable(42).expect("mark");
        }
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(s.durable_mark(), Some(42));
        drop(s);
        std::fs::write(dir.path().join(MARK_FILE), [7u8; 16]).expect("overwrite");
        assert_eq!(
            SledStore::open(dir.path()).expect("reopen").durable_mark(),
            None
        );
    }

    #[test]
    fn garbage_log_is_refused_not_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = SledStore::open(dir.path()).expect("open");
            let mut b = WriteBatch::default();
            for i in 0..2000u32 {
                b.put(i.to_be_bytes().to_vec(), vec![1; 100]);
            }
            s.apply(b).expect("apply");
            s.sync().expect("sync");
        }
        let conf = dir.path().join(SLED_DIR).join("conf");
        std::fs::write(&conf, b"garbage that is not a sled config").expect("overwrite conf");
        let err = SledStore::open(dir.path()).expect_err("corrupt store must not open");
        assert!(
            matches!(err, StoreError::Corrupt { .. } | StoreError::Io(_)),
            "{err}"
        );
    }
}
