//! Checking the chain across segments ([`verify`]) and paging through it ([`read`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::entry::{Entry, FORMAT_VERSION, GENESIS_HASH};
use super::segment::{is_torn, list, Lines, RawLine, Segment};
use super::{AuditError, Damage};

/// What [`verify`] found in a log that checks out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VerifySummary {
    /// Segment files checked.
    pub segments: u64,
    /// Entries checked.
    pub entries: u64,
    /// The last entry's `seq`, 0 for an empty log: record it with `last_hash` elsewhere to
    /// detect later truncation, which a hash chain alone cannot.
    pub last_seq: u64,
    /// The last entry's `hash`, [`GENESIS_HASH`] for an empty log.
    pub last_hash: String,
    /// An unfinished last line left by a crash (never acknowledged; not counted).
    pub torn_tail: Option<TornTail>,
}

/// An unfinished last line left by a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TornTail {
    /// The last segment.
    pub file: PathBuf,
    /// Where the unfinished line starts (the length the file is truncated to).
    pub offset: u64,
    /// How many bytes it has.
    pub bytes: u64,
}

/// One page of entries from [`read`] or [`read_last`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Page {
    /// Entries in chain order, oldest first.
    pub entries: Vec<Entry>,
    /// Whether entries follow the last one here (pass its `seq` to [`read`] for them).
    pub more: bool,
}

/// Checks the whole log in `dir`: segment numbering, and for every entry its form, hash,
/// `seq` and link to the one before. Changes nothing. The error names the first bad entry.
pub fn verify(dir: &Path) -> Result<VerifySummary, AuditError> {
    let segments = list(dir)?;
    Ok(check_chain(&segments, 0, Chain::new())?.summary)
}

/// Up to `limit` entries with `seq` greater than `after_seq`, oldest first. Each entry's own
/// form and hash are checked, and links between the entries returned.
pub fn read(dir: &Path, after_seq: u64, limit: usize) -> Result<Page, AuditError> {
    let segments = list(dir)?;
    let start = start_segment(&segments, after_seq)?;
    let mut page = Page {
        entries: Vec::new(),
        more: false,
    };
    let mut chain = Chain::anywhere();
    for (i, segment) in segments.iter().enumerate().skip(start) {
        let last = i + 1 == segments.len();
        scan(segment, last, |line, parsed| {
            let entry = chain.accept(&segment.path, line, parsed)?;
            if entry.seq <= after_seq {
                return Ok(true);
            }
            if page.entries.len() == limit {
                page.more = true;
                return Ok(false);
            }
            page.entries.push(entry);
            Ok(true)
        })?;
        if page.more {
            break;
        }
    }
    Ok(page)
}

/// The last `limit` entries, oldest first.
pub fn read_last(dir: &Path, limit: usize) -> Result<Page, AuditError> {
    let segments = list(dir)?;
    let mut last_seq = 0;
    for (i, segment) in segments.iter().enumerate().rev() {
        if let Some(entry) = last_entry(segment, i + 1 == segments.len())? {
            last_seq = entry.seq;
            break;
        }
    }
    let after = last_seq.saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX));
    read(dir, after, limit)
}

/// The position of the next entry and the hash it must link to.
#[derive(Clone, Debug)]
pub(crate) struct Chain {
    /// `None` until the first entry when checking from anywhere.
    next: Option<(u64, String)>,
}

impl Chain {
    /// Expects seq 1 linked to [`GENESIS_HASH`].
    pub fn new() -> Chain {
        Chain {
            next: Some((1, GENESIS_HASH.to_owned())),
        }
    }

    /// Expects whatever follows `entry`.
    pub fn after(entry: &Entry) -> Chain {
        Chain {
            next: Some((entry.seq.saturating_add(1), entry.hash.clone())),
        }
    }

    /// Expects whatever follows the entry `seq` with `hash` (seq 0: the start of the log).
    pub fn at_head(seq: u64, hash: &str) -> Chain {
        Chain {
            next: Some((seq.saturating_add(1), hash.to_owned())),
        }
    }

    /// Takes any first entry, then checks links from it.
    fn anywhere() -> Chain {
        Chain { next: None }
    }

    /// `seq` of the next entry (0 if not known yet).
    pub fn next_seq(&self) -> u64 {
        self.next.as_ref().map_or(0, |(seq, _)| *seq)
    }

    /// The hash the next entry links to.
    pub fn prev_hash(&self) -> &str {
        self.next.as_ref().map_or(GENESIS_HASH, |(_, hash)| hash)
    }

    /// Checks that `parsed` (from `line` of `file`) is the next entry, and moves past it.
    fn accept(
        &mut self,
        file: &Path,
        line: &RawLine,
        parsed: Result<Entry, Damage>,
    ) -> Result<Entry, AuditError> {
        let damaged = |seq, problem| AuditError::Damaged {
            file: file.to_owned(),
            line: line.number,
            seq,
            problem,
        };
        let entry = parsed.map_err(|problem| damaged(self.next_seq(), problem))?;
        if let Some((seq, prev)) = &self.next {
            if entry.seq != *seq {
                let problem = Damage::BadSeq {
                    expected: *seq,
                    found: entry.seq,
                };
                return Err(damaged(*seq, problem));
            }
            if entry.prev != *prev {
                let problem = Damage::BrokenLink {
                    expected: prev.clone(),
                    found: entry.prev.clone(),
                };
                return Err(damaged(*seq, problem));
            }
        }
        *self = Chain::after(&entry);
        Ok(entry)
    }
}

/// The result of checking a chain, with what the writer needs to resume it.
pub(crate) struct Scanned {
    /// What was found.
    pub summary: VerifySummary,
    /// The last segment's last entry lacks its newline (only the newline was lost in a crash).
    pub needs_newline: bool,
}

/// Checks `segments[from..]`, the first of them continuing `chain`.
pub(crate) fn check_chain(
    segments: &[Segment],
    from: usize,
    mut chain: Chain,
) -> Result<Scanned, AuditError> {
    let mut entries = 0;
    let mut torn_tail = None;
    let mut needs_newline = false;
    for (i, segment) in segments.iter().enumerate().skip(from) {
        let last = i + 1 == segments.len();
        torn_tail = scan(segment, last, |line, parsed| {
            chain.accept(&segment.path, line, parsed)?;
            entries += 1;
            needs_newline = !line.terminated;
            Ok(true)
        })?;
    }
    let segments = u64::try_from(segments.len().saturating_sub(from)).unwrap_or(u64::MAX);
    let summary = VerifySummary {
        segments,
        entries,
        last_seq: chain.next_seq().saturating_sub(1),
        last_hash: chain.prev_hash().to_owned(),
        torn_tail,
    };
    Ok(Scanned {
        summary,
        needs_newline,
    })
}

/// The last entry of `segment`, checked on its own (form and hash, not its link); `None` if
/// the segment holds none. `last` says whether a torn tail is allowed.
pub(crate) fn last_entry(segment: &Segment, last: bool) -> Result<Option<Entry>, AuditError> {
    let mut lines = Lines::open(&segment.path)?;
    let (mut before, mut current) = (None, None);
    while let Some(line) = lines.next_line()? {
        before = current.replace(line);
    }
    let Some(mut line) = current else {
        return Ok(None);
    };
    if last && !line.terminated && !line.too_long && is_torn(&line.bytes) {
        match before {
            Some(b) => line = b,
            None => return Ok(None),
        }
    }
    classify(&line, last)
        .map(Some)
        .map_err(|problem| AuditError::Damaged {
            file: segment.path.clone(),
            line: line.number,
            seq: 0,
            problem,
        })
}

/// The index of the segment holding the entry after `after_seq` (the last one if none does).
fn start_segment(segments: &[Segment], after_seq: u64) -> Result<usize, AuditError> {
    for (i, segment) in segments.iter().enumerate().rev() {
        let mut lines = Lines::open(&segment.path)?;
        let last = i + 1 == segments.len();
        let Some(line) = lines.next_line()? else {
            continue;
        };
        if last && !line.terminated && is_torn(&line.bytes) {
            continue;
        }
        let first_seq = classify(&line, last).map(|e| e.seq).unwrap_or(0);
        if first_seq <= after_seq.saturating_add(1) {
            return Ok(i);
        }
    }
    Ok(0)
}

/// Feeds each entry of `segment` (or why its line is not one) to `visit` until it returns
/// `false`. Returns the torn tail if `last` and the file ends in one; it is not fed.
fn scan(
    segment: &Segment,
    last: bool,
    mut visit: impl FnMut(&RawLine, Result<Entry, Damage>) -> Result<bool, AuditError>,
) -> Result<Option<TornTail>, AuditError> {
    let mut lines = Lines::open(&segment.path)?;
    while let Some(line) = lines.next_line()? {
        if last && !line.terminated && is_torn(&line.bytes) {
            return Ok(Some(TornTail {
                file: segment.path.clone(),
                offset: line.offset,
                bytes: line.bytes.len() as u64,
            }));
        }
        let parsed = classify(&line, last);
        if !visit(&line, parsed)? {
            break;
        }
    }
    Ok(None)
}

/// The entry `line` holds, checked on its own, or what is wrong with it.
fn classify(line: &RawLine, last_segment: bool) -> Result<Entry, Damage> {
    if line.too_long {
        return Err(Damage::TooLong);
    }
    if !line.terminated && !last_segment {
        return Err(Damage::Unterminated);
    }
    check_entry(&line.bytes)
}

/// Parses `bytes` as one entry and checks its version, canonical form and own hash.
pub(crate) fn check_entry(bytes: &[u8]) -> Result<Entry, Damage> {
    let entry: Entry =
        serde_json::from_slice(bytes).map_err(|e| Damage::Unparsable(e.to_string()))?;
    if entry.v != FORMAT_VERSION {
        return Err(Damage::UnknownVersion(entry.v));
    }
    if entry.encode().as_bytes() != bytes {
        return Err(Damage::NotCanonical);
    }
    let computed = entry.compute_hash();
    if computed != entry.hash {
        return Err(Damage::HashMismatch {
            stored: entry.hash,
            computed,
        });
    }
    Ok(entry)
}
