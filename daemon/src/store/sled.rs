//! The sled 0.34 [`Store`]: one tree, an exclusive lock on the data dir, an explicit fsync of
//! sled's log after its flush, segments large enough that no record takes sled's
//! never-fsynced blob path, and a write-ahead record that makes a small batch atomic without
//! sled's own batch (which costs two log-buffer writes to the device every time).
//!
//! sled 0.34 pins its log for an `apply_batch`: it seals the current I/O buffer before the
//! batch and again after it, and each seal is a `pwrite` plus a `sync_file_range` that waits.
//! A replica that commits every local write atomically pays that floor on every write, even
//! when nothing asks for durability. So a small batch is written instead as one insert into
//! the `wal` tree (the whole batch, encoded), then its items as plain inserts and removes, then
//! the removal of that record. sled recovers a prefix of its log, so after a crash either the
//! record is absent and so is every item of its batch, or it is present and is applied again
//! at open (its items are whole values, so applying them twice is harmless), or its removal is
//! present and so is every item before it. Readers and writers share a gate so a reader never
//! sees half a batch, as with sled's own batches.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use officesync_protocol::codec;

use super::gate::Gate;
use super::{Store, StoreError, WriteBatch};

/// Name of sled's directory inside the data dir.
pub const SLED_DIR: &str = "sled";

/// sled's log file inside [`SLED_DIR`], which sled opens once and never replaces.
const SLED_LOG: &str = "db";

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

/// Name of the sled tree that holds the write-ahead record of the batch being applied.
const WAL_TREE: &str = "wal";

/// Largest encoded batch ([`codec`]) written through the write-ahead record; a larger one
/// goes through sled's own batch, whose fixed cost it amortises. Far below sled's blob
/// threshold (a quarter segment), so the record always stays in the fsynced log.
const WAL_MAX_BYTES: usize = 64 << 10;

/// A batch's operations: `(key, Some(value))` inserts, `(key, None)` removes.
type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The write side's state, behind the gate readers share.
#[derive(Debug)]
struct WalState {
    /// Key of the next write-ahead record.
    next: u64,
    /// Set when a batch failed after its write-ahead record was written: its items may be
    /// half applied, so no later batch may run until a restart has applied it again.
    broken: bool,
}

/// A [`Store`] on sled.
pub struct SledStore {
    db: sled::Db,
    wal: sled::Tree,
    gate: Gate<WalState>,
    /// Tests: the next batch's items fail after this many are applied.
    #[cfg(test)]
    fail_items_after: std::sync::Mutex<Option<usize>>,
    dir: PathBuf,
    /// sled's log file ([`SLED_LOG`]), kept open for the fsync after every flush.
    log: File,
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
        let config = sled_config(&dir);
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
        let wal = db.open_tree(WAL_TREE).map_err(io)?;
        let (next, replayed) = replay_wal(&db, &wal).map_err(corrupt)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "applied again the write-ahead records of batches a crash had cut"
            );
        }
        // sled writes its `conf` file without fsyncing it and never fsyncs its directory: make
        // both durable now, so a store created just before a power cut opens whole (found by
        // the chaos suite's power-loss filesystem, which rolls `conf` back to empty).
        let conf = dir.join("conf");
        File::open(&conf)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(format!("cannot fsync {}: {e}", conf.display())))?;
        fsync_dir(&dir)?;
        fsync_dir(data_dir)?;
        let log_path = dir.join(SLED_LOG);
        let log = File::open(&log_path)
            .map_err(|e| io(format!("cannot open {}: {e}", log_path.display())))?;
        Ok(Self {
            db,
            wal,
            gate: Gate::new(WalState {
                next,
                broken: false,
            }),
            #[cfg(test)]
            fail_items_after: std::sync::Mutex::new(None),
            dir,
            log,
            mark,
            mark_at_open,
            _lock: lock,
        })
    }

    /// Applies `ops` as plain inserts and removes, each atomic on its own.
    fn apply_items(&self, ops: Ops) -> Result<(), sled::Error> {
        #[cfg(test)]
        if let Some(n) = self.fail_items_after.lock().expect("lock").take() {
            apply_items(&self.db, ops.into_iter().take(n).collect())?;
            return Err(sled::Error::Unsupported("injected failure".into()));
        }
        apply_items(&self.db, ops)
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

/// sled's settings for the log in `dir`.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .segment_size(SEGMENT_SIZE)
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
}

/// Applies `ops` to `db` as plain inserts and removes, in order.
fn apply_items(db: &sled::Db, ops: Ops) -> Result<(), sled::Error> {
    for (k, v) in ops {
        match v {
            Some(v) => db.insert(k, v)?,
            None => db.remove(k)?,
        };
    }
    Ok(())
}

/// Applies again, in order, every write-ahead record a crash left behind, removing each once
/// its items are in; returns the key for the next record and how many were applied. A record
/// that does not decode ([`codec::decode`], bounded) is corruption (sled checksums its log, so
/// it was not torn).
fn replay_wal(db: &sled::Db, wal: &sled::Tree) -> Result<(u64, usize), String> {
    let (mut next, mut replayed) = (0, 0);
    for item in wal.iter() {
        let (key, value) = item.map_err(|e| format!("cannot read the write-ahead tree: {e}"))?;
        let seq = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| format!("write-ahead record with a key of {} bytes", key.len()))?;
        let ops: Ops = codec::decode(&value)
            .map_err(|e| format!("write-ahead record {seq} does not decode: {e}"))?;
        apply_items(db, ops).map_err(|e| format!("cannot apply write-ahead record {seq}: {e}"))?;
        wal.remove(&key)
            .map_err(|e| format!("cannot remove write-ahead record {seq}: {e}"))?;
        next = seq.wrapping_add(1);
        replayed += 1;
    }
    Ok((next, replayed))
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
        let _gate = self.gate.read();
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
        let _gate = self.gate.read();
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
        let mut gate = self.gate.write();
        if gate.broken {
            return Err(io(
                "an earlier batch failed half applied; restart officesyncd to apply it again",
            ));
        }
        let ops = batch.ops;
        if ops.len() <= 1 {
            // One insert or removal is atomic by itself.
            return self.apply_items(ops).map_err(|e| self.map_err(e));
        }
        // A batch of byte strings always encodes (the codec's limit is far above any batch).
        let len = codec::encoded_len(&ops).map_err(io)?;
        if len > WAL_MAX_BYTES {
            let mut b = sled::Batch::default();
            for (k, v) in ops {
                match v {
                    Some(v) => b.insert(k, v),
                    None => b.remove(k),
                }
            }
            return self.db.apply_batch(b).map_err(|e| self.map_err(e));
        }
        let record = codec::encode(&ops).map_err(io)?;
        let key = gate.next.to_be_bytes();
        gate.next = gate.next.wrapping_add(1);
        // From here on a failure may leave the record in the log and the batch half applied:
        // only a restart (which applies the record again) may let another batch run. Even a
        // failed insert of the record counts, since it may still reach the log.
        let applied = self
            .wal
            .insert(key, record)
            .and_then(|_| self.apply_items(ops))
            .and_then(|()| self.wal.remove(key).map(drop));
        if let Err(e) = applied {
            gate.broken = true;
            return Err(self.map_err(e));
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.map_err(e))?;
        // sled's flush uses sync_file_range, which neither writes file metadata nor flushes
        // the device cache: fsync the log file itself before anything is acknowledged.
        self.log.sync_all().map_err(|e| {
            let log = self.dir.join(SLED_LOG);
            io(format!("cannot fsync {}: {e}", log.display()))
        })
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
    fn wal_records_decode_and_refuse_garbage() {
        let ops = vec![
            (b"a".to_vec(), Some(vec![1; 300])),
            (b"".to_vec(), Some(Vec::new())),
            (b"gone".to_vec(), None),
        ];
        let decodes = |bytes: &[u8]| codec::decode::<Ops>(bytes).ok();
        let bytes = codec::encode(&ops).expect("encode");
        assert_eq!(bytes.len(), codec::encoded_len(&ops).expect("len"));
        assert_eq!(decodes(&bytes), Some(ops));
        assert_eq!(decodes(&bytes[..bytes.len() - 1]), None, "truncated");
        let f = codec::FORMAT_VERSION;
        // One op, key "a", then an option tag that is neither 0 nor 1.
        assert_eq!(decodes(&[f, 1, 1, b'a', 7]), None, "unknown tag");
        // One op whose key claims u32::MAX bytes.
        assert_eq!(
            decodes(&[f, 1, 252, 255, 255, 255, 255]),
            None,
            "length past the end"
        );
    }

    #[test]
    fn a_batch_cut_by_a_crash_is_applied_whole_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = SledStore::open(dir.path()).expect("open");
            let mut first = WriteBatch::default();
            first.put(b"old".to_vec(), b"1".to_vec());
            first.put(b"keep".to_vec(), b"1".to_vec());
            s.apply(first).expect("apply");
            let mut cut = WriteBatch::default();
            cut.put(b"a".to_vec(), b"2".to_vec());
            cut.remove(b"old".to_vec());
            cut.put(b"b".to_vec(), b"2".to_vec());
            cut.put(b"a".to_vec(), b"3".to_vec());
            // Cut after its first item, as a crash in the middle of `apply` leaves it.
            *s.fail_items_after.lock().expect("lock") = Some(1);
            s.apply(cut).expect_err("cut");
            assert_eq!(s.get(b"b").expect("get"), None, "cut before b");
            s.sync().expect("sync");
        }
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get(b"a").expect("get"), Some(b"3".to_vec()), "in order");
        assert_eq!(s.get(b"b").expect("get"), Some(b"2".to_vec()));
        assert_eq!(s.get(b"old").expect("get"), None);
        assert_eq!(s.get(b"keep").expect("get"), Some(b"1".to_vec()));
        assert_eq!(s.wal.len(), 0, "the record is removed once applied");
        // Later batches take new records and apply over the replayed one.
        let mut next = WriteBatch::default();
        next.put(b"a".to_vec(), b"4".to_vec());
        next.put(b"c".to_vec(), b"4".to_vec());
        s.apply(next).expect("apply");
        drop(s);
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get(b"a").expect("get"), Some(b"4".to_vec()));
        assert_eq!(s.wal.len(), 0);
    }

    #[test]
    fn a_batch_that_fails_half_applied_stops_later_batches_until_a_restart_completes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let batch = |v: &[u8]| {
            let mut b = WriteBatch::default();
            for k in [b"x", b"y", b"z"] {
                b.put(k.to_vec(), v.to_vec());
            }
            b
        };
        {
            let s = SledStore::open(dir.path()).expect("open");
            *s.fail_items_after.lock().expect("lock") = Some(1);
            s.apply(batch(b"1")).expect_err("injected failure");
            let err = s.apply(batch(b"2")).expect_err("broken");
            assert!(err.to_string().contains("restart"), "{err}");
            assert_eq!(
                s.get(b"z").expect("get"),
                None,
                "half applied until the restart"
            );
        }
        let s = SledStore::open(dir.path()).expect("reopen");
        for k in [b"x", b"y", b"z"] {
            assert_eq!(s.get(k).expect("get"), Some(b"1".to_vec()));
        }
        s.apply(batch(b"3")).expect("apply after the restart");
        assert_eq!(s.get(b"y").expect("get"), Some(b"3".to_vec()));
    }

    #[test]
    fn a_damaged_wal_record_is_refused_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = SledStore::open(dir.path()).expect("open");
            s.wal
                .insert(0u64.to_be_bytes(), vec![9, 9])
                .expect("insert");
            s.sync().expect("sync");
        }
        let err = SledStore::open(dir.path()).expect_err("damaged record");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn readers_never_see_half_a_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = std::sync::Arc::new(SledStore::open(dir.path()).expect("open"));
        let pair = |i: u32| {
            let mut b = WriteBatch::default();
            b.put(b"p/a".to_vec(), i.to_be_bytes().to_vec());
            b.put(b"p/b".to_vec(), i.to_be_bytes().to_vec());
            b
        };
        s.apply(pair(0)).expect("apply");
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let rows = s.range(b"p/", None, 2).expect("range");
                    assert_eq!(rows.len(), 2);
                    assert_eq!(rows[0].1, rows[1].1, "half a batch seen");
                }
            })
        };
        for i in 1..5_000 {
            s.apply(pair(i)).expect("apply");
        }
        reader.join().expect("reader");
    }

    /// Set to a data dir, makes [`kill_9_child`] write batches into it until it is killed.
    const CHILD_ENV: &str = "OFFICESYNC_SLED_KILL_CHILD";
    /// Keys every batch writes (a small batch: the write-ahead path).
    const SMALL: usize = 8;
    /// Keys a large batch writes: over [`WAL_MAX_BYTES`], so sled's own batch.
    const LARGE: usize = 600;
    /// Every this many batches is large.
    const LARGE_EVERY: u64 = 7;

    fn pair_key(k: usize) -> Vec<u8> {
        format!("p/{k:04}").into_bytes()
    }

    /// The child of [`batches_stay_whole_across_kill_9`]: batches numbered from the last one
    /// the store holds, each putting its number in `counter` and in [`SMALL`] keys (in
    /// [`LARGE`] keys every [`LARGE_EVERY`]th), while another thread syncs, until killed.
    #[test]
    fn kill_9_child() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let s = std::sync::Arc::new(SledStore::open(Path::new(&dir)).expect("open"));
        // As the daemon's syncer does: flushes land in the middle of batches being applied.
        let syncer = s.clone();
        std::thread::spawn(move || loop {
            syncer.sync().expect("sync");
            std::thread::sleep(std::time::Duration::from_micros(200));
        });
        let mut i = s
            .get(b"counter")
            .expect("get")
            .map_or(0, |v| u64::from_be_bytes(v.try_into().expect("counter")));
        loop {
            i += 1;
            let keys = if i.is_multiple_of(LARGE_EVERY) {
                LARGE
            } else {
                SMALL
            };
            let mut b = WriteBatch::default();
            for k in 0..keys {
                let mut v = i.to_be_bytes().to_vec();
                v.resize(200, k as u8);
                b.put(pair_key(k), v);
            }
            b.put(b"counter".to_vec(), i.to_be_bytes().to_vec());
            s.apply(b).expect("apply");
        }
    }

    /// A process writing batches (both paths) is killed with SIGKILL at varied points, again
    /// and again on one store: after each kill the store opens, every batch is whole (the last
    /// one's keys all hold the counter it wrote), and no write-ahead record is left.
    #[test]
    fn batches_stay_whole_across_kill_9() {
        if std::env::var_os(CHILD_ENV).is_some() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = std::env::current_exe().expect("test binary");
        let (mut cut_records, mut last) = (0, 0);
        for round in 0..12u64 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "store::sled::tests::kill_9_child",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn the writer");
            std::thread::sleep(std::time::Duration::from_millis(150 + round * 53 % 250));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            // What the kill left, before the store applies it.
            {
                let db = sled_config(&dir.path().join(SLED_DIR))
                    .open()
                    .expect("raw open");
                cut_records += db.open_tree(WAL_TREE).expect("wal tree").len();
            }
            let s = SledStore::open(dir.path()).expect("open after kill -9");
            assert_eq!(s.wal.len(), 0, "round {round}: a record is left");
            let Some(counter) = s.get(b"counter").expect("get") else {
                continue;
            };
            let counter = u64::from_be_bytes(counter.try_into().expect("counter"));
            let held = |k: usize| {
                s.get(&pair_key(k))
                    .expect("get")
                    .map(|v| u64::from_be_bytes(v[..8].try_into().expect("number")))
            };
            for k in 0..SMALL {
                assert_eq!(
                    held(k),
                    Some(counter),
                    "round {round}: key {k} of the last batch"
                );
            }
            let large = held(SMALL);
            for k in SMALL..LARGE {
                assert_eq!(
                    held(k),
                    large,
                    "round {round}: key {k} of the last large batch"
                );
            }
            if let Some(large) = large {
                assert!(
                    large % LARGE_EVERY == 0 && large <= counter,
                    "round {round}"
                );
            }
            assert!(counter >= last, "round {round}: batches lost after a sync");
            last = counter;
        }
        assert!(last > 0, "the writer never committed a batch");
        eprintln!("{last} batches; kills left {cut_records} write-ahead records to apply again");
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
