//! [`AuditLog`]: the daemon's handle for appending to the log.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::chain::{check_chain, last_entry, Chain};
use super::entry::{Entry, Kind, Record};
use super::limit::{RefusalLimiter, RefusalLimits};
use super::segment::{list, segment_name, Segment};
use super::{AuditError, VerifySummary};

/// How much of the chain [`AuditLog::open`] checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpenCheck {
    /// Every segment (reads the whole log once).
    #[default]
    Full,
    /// The last segment and its link to the previous segment's last entry.
    LastSegment,
}

/// Settings of an [`AuditLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// A segment is closed and the next one started before an entry would take it past this
    /// many bytes (an entry larger than this gets a segment of its own). Default 8 MiB.
    pub max_segment_bytes: u64,
    /// What `open` checks.
    pub check: OpenCheck,
    /// The rate limit on `auth_refused` entries.
    pub refusals: RefusalLimits,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_segment_bytes: 8 * 1024 * 1024,
            check: OpenCheck::Full,
            refusals: RefusalLimits::default(),
        }
    }
}

/// The last entry of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its `seq`, 0 for an empty log.
    pub seq: u64,
    /// Its `hash`, [`super::GENESIS_HASH`] for an empty log.
    pub hash: String,
}

/// The audit log of one node, open for appending: cheap to clone, safe to share between
/// threads. Every append is written and fdatasync'ed before it returns (blocking file I/O; call
/// it from `spawn_blocking` in async code). After a failed append the handle refuses further
/// appends with [`AuditError::Failed`] until the log is opened again; entries of the failed
/// append were not acknowledged but may be in the log after a restart.
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Arc<Mutex<Writer>>,
    dir: Arc<Path>,
}

impl AuditLog {
    /// Opens (creating if need be, mode 0700) the log in `dir`, checks it as `options.check`
    /// says, truncates a torn last line with a warning, and gets ready to append.
    pub fn open(dir: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let writer = Writer::open(dir, options)?;
        Ok(AuditLog {
            inner: Arc::new(Mutex::new(writer)),
            dir: Arc::from(dir),
        })
    }

    /// What `open` found when it checked the log.
    pub fn opened(&self) -> Result<VerifySummary, AuditError> {
        Ok(self.lock()?.opened.clone())
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last entry's `seq` and `hash`.
    pub fn head(&self) -> Result<Head, AuditError> {
        let writer = self.lock()?;
        Ok(Head {
            seq: writer.chain.next_seq().saturating_sub(1),
            hash: writer.chain.prev_hash().to_owned(),
        })
    }

    /// Appends one entry at `now_ms` and syncs; returns its `seq`.
    pub fn append(&self, record: Record, now_ms: u64) -> Result<u64, AuditError> {
        self.append_batch(vec![record], now_ms)
    }

    /// Appends `records` in order at `now_ms` and syncs once; returns the last `seq` written
    /// (the head's if `records` is empty). Summaries of finished rate-limit windows go first.
    pub fn append_batch(&self, records: Vec<Record>, now_ms: u64) -> Result<u64, AuditError> {
        let mut writer = self.lock()?;
        let mut all = writer.summaries(now_ms);
        all.extend(records);
        writer.write(all, now_ms)
    }

    /// A refused authentication from client `addr` at `now_ms`: records an `auth_refused`
    /// entry (actor `addr`, detail `detail`) unless the rate limit suppresses it, in which case
    /// it is counted for a later `auth_suppressed` summary. `Some(seq)` if recorded.
    pub fn refused(
        &self,
        addr: &str,
        detail: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, AuditError> {
        let mut writer = self.lock()?;
        let mut all = writer.summaries(now_ms);
        let recorded = writer.limiter.handle_refused(addr, now_ms);
        if recorded {
            all.push(Record::new(Kind::AuthRefused, addr).detail(detail));
        }
        if all.is_empty() {
            return Ok(None);
        }
        let seq = writer.write(all, now_ms)?;
        Ok(recorded.then_some(seq))
    }

    /// Writes the summaries of rate-limit windows that have ended by `now_ms`, if any (call it
    /// now and then, e.g. every minute, so a summary does not wait for the next entry).
    pub fn tick(&self, now_ms: u64) -> Result<(), AuditError> {
        let mut writer = self.lock()?;
        let all = writer.summaries(now_ms);
        if !all.is_empty() {
            writer.write(all, now_ms)?;
        }
        Ok(())
    }

    /// Writes summaries of every suppressed refusal so far, the current window's included (at
    /// shutdown).
    pub fn flush_suppressed(&self, now_ms: u64) -> Result<(), AuditError> {
        let mut writer = self.lock()?;
        let mut all = writer.summaries(now_ms);
        all.extend(writer.limiter.drain().iter().map(|s| s.to_record()));
        if !all.is_empty() {
            writer.write(all, now_ms)?;
        }
        Ok(())
    }

    /// The writer; a panic while it was held leaves it unusable.
    fn lock(&self) -> Result<MutexGuard<'_, Writer>, AuditError> {
        self.inner.lock().map_err(|_| AuditError::Failed)
    }
}

/// The state behind an [`AuditLog`].
#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    options: AuditOptions,
    opened: VerifySummary,
    /// The last segment, open for appending.
    file: File,
    /// Its number.
    number: u64,
    /// Its length.
    size: u64,
    /// What the next entry continues.
    chain: Chain,
    /// Set when an append fails.
    failed: bool,
    limiter: RefusalLimiter,
}

impl Writer {
    /// See [`AuditLog::open`].
    fn open(dir: &Path, options: AuditOptions) -> Result<Writer, AuditError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| io_err(dir, source))?;
        let mut segments = list(dir)?;
        if segments.is_empty() {
            segments.push(create_segment(dir, 1)?);
        }
        let (opened, needs_newline) = check_on_open(&segments, options.check)?;
        let last = segments
            .last()
            .map_or_else(|| dir.join(segment_name(1)), |s| s.path.clone());
        let file = OpenOptions::new()
            .append(true)
            .open(&last)
            .map_err(|source| io_err(&last, source))?;
        repair_tail(&file, &last, &opened, needs_newline)?;
        let size = file
            .metadata()
            .map_err(|source| io_err(&last, source))?
            .len();
        let chain = Chain::at_head(opened.last_seq, &opened.last_hash);
        Ok(Writer {
            dir: dir.to_owned(),
            number: segments.len() as u64,
            limiter: RefusalLimiter::new(options.refusals.clone()),
            options,
            opened,
            file,
            size,
            chain,
            failed: false,
        })
    }

    /// Records for the rate-limit summaries due at `now_ms`.
    fn summaries(&mut self, now_ms: u64) -> Vec<Record> {
        let due = self.limiter.poll_summaries(now_ms);
        due.iter().map(|s| s.to_record()).collect()
    }

    /// Writes `records` at `now_ms`, syncs, and returns the last `seq`; on error marks the
    /// writer failed.
    fn write(&mut self, records: Vec<Record>, now_ms: u64) -> Result<u64, AuditError> {
        if self.failed {
            return Err(AuditError::Failed);
        }
        let result = records
            .into_iter()
            .try_for_each(|record| self.write_one(record, now_ms))
            .and_then(|()| self.sync());
        if let Err(e) = result {
            self.failed = true;
            tracing::error!(dir = %self.dir.display(), error = %e, "audit log append failed");
            return Err(e);
        }
        Ok(self.chain.next_seq().saturating_sub(1))
    }

    /// Writes one entry (not synced), starting a new segment first if it would overflow.
    fn write_one(&mut self, record: Record, now_ms: u64) -> Result<(), AuditError> {
        let entry = Entry::seal(
            record,
            self.chain.next_seq(),
            now_ms,
            self.chain.prev_hash(),
        );
        let mut line = entry.encode();
        line.push('\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.options.max_segment_bytes {
            self.rotate()?;
        }
        let path = self.path();
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| io_err(&path, source))?;
        self.size += len;
        self.chain = Chain::after(&entry);
        Ok(())
    }

    /// Syncs the current segment and starts the next one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        self.sync()?;
        let segment = create_segment(&self.dir, self.number + 1)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&segment.path)
            .map_err(|source| io_err(&segment.path, source))?;
        self.number = segment.number;
        self.size = 0;
        tracing::info!(file = %segment.path.display(), "audit log: new segment");
        Ok(())
    }

    /// fdatasyncs the current segment.
    fn sync(&mut self) -> Result<(), AuditError> {
        let path = self.path();
        self.file
            .sync_data()
            .map_err(|source| io_err(&path, source))
    }

    /// The current segment's path.
    fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.number))
    }
}

/// Checks `segments` as `check` says; returns the summary and whether the last entry lacks its
/// newline.
fn check_on_open(
    segments: &[Segment],
    check: OpenCheck,
) -> Result<(VerifySummary, bool), AuditError> {
    let n = segments.len();
    let scanned = match (check, n) {
        (OpenCheck::LastSegment, 2..) => match last_entry(&segments[n - 2], false)? {
            Some(entry) => check_chain(segments, n - 1, Chain::after(&entry))?,
            None => check_chain(segments, 0, Chain::new())?,
        },
        _ => check_chain(segments, 0, Chain::new())?,
    };
    Ok((scanned.summary, scanned.needs_newline))
}

/// Truncates a torn tail (with a warning) or adds the newline a complete last entry lacks.
fn repair_tail(
    file: &File,
    path: &Path,
    opened: &VerifySummary,
    needs_newline: bool,
) -> Result<(), AuditError> {
    let io = |source| io_err(path, source);
    if let Some(torn) = &opened.torn_tail {
        tracing::warn!(
            file = %torn.file.display(),
            offset = torn.offset,
            bytes = torn.bytes,
            "audit log: removing an unfinished last line left by a crash (never acknowledged)"
        );
        file.set_len(torn.offset).map_err(io)?;
        file.sync_data().map_err(io)?;
    } else if needs_newline {
        tracing::warn!(file = %path.display(), "audit log: adding the newline a crash left off");
        (&*file).write_all(b"\n").map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    Ok(())
}

/// Creates segment `number` in `dir` (mode 0600) and syncs the directory.
fn create_segment(dir: &Path, number: u64) -> Result<Segment, AuditError> {
    let path = dir.join(segment_name(number));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|source| io_err(&path, source))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_err(dir, source))?;
    Ok(Segment { number, path })
}

/// An [`AuditError::Io`] for `path`.
fn io_err(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.to_owned(),
        source,
    }
}
