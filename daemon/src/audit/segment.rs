//! Segment files: their names, listing them in order, and reading their lines.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::AuditError;

/// The longest line a segment may hold, newline excluded; longer is damage.
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// The file name of segment `number` (from 1): `000001.log`.
pub fn segment_name(number: u64) -> String {
    format!("{number:06}.log")
}

/// One segment file of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Its number, from 1.
    pub number: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The segments in `dir`, in order, checked to be numbered 1, 2, ... without gaps. Files whose
/// names are not six or more digits then `.log` are ignored. A missing `dir` has no segments.
pub(crate) fn list(dir: &Path) -> Result<Vec<Segment>, AuditError> {
    let io = |source| AuditError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let name = entry.map_err(io)?.file_name();
        if let Some(number) = name.to_str().and_then(parse_name) {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    let mut segments = Vec::with_capacity(numbers.len());
    for (expected, number) in (1u64..).zip(numbers) {
        if number != expected {
            return Err(AuditError::MissingSegment {
                file: dir.join(segment_name(expected)),
            });
        }
        segments.push(Segment {
            number,
            path: dir.join(segment_name(number)),
        });
    }
    Ok(segments)
}

/// The number in a segment file name, if `name` is one.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

/// One line of a segment as stored.
#[derive(Debug)]
pub(crate) struct RawLine {
    /// Its number in the file, from 1.
    pub number: u64,
    /// Its byte offset in the file.
    pub offset: u64,
    /// Its bytes, without the newline.
    pub bytes: Vec<u8>,
    /// Whether a newline ended it (only the file's last line may lack one).
    pub terminated: bool,
    /// Whether it is longer than [`MAX_LINE_BYTES`] (then `bytes` holds only the start).
    pub too_long: bool,
}

/// Reads a segment's lines one at a time, never holding more than one line.
pub(crate) struct Lines {
    reader: BufReader<File>,
    path: PathBuf,
    number: u64,
    offset: u64,
}

impl Lines {
    /// Opens the segment at `path`.
    pub fn open(path: &Path) -> Result<Lines, AuditError> {
        let file = File::open(path).map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Lines {
            reader: BufReader::new(file),
            path: path.to_owned(),
            number: 0,
            offset: 0,
        })
    }

    /// The next line, `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<RawLine>, AuditError> {
        let mut bytes = Vec::new();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut bytes)
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read == 0 {
            return Ok(None);
        }
        let terminated = bytes.last() == Some(&b'\n');
        if terminated {
            bytes.pop();
        }
        let too_long = bytes.len() > MAX_LINE_BYTES;
        let offset = self.offset;
        self.offset += read as u64;
        if too_long {
            self.skip_rest_of_line()?;
        }
        self.number += 1;
        Ok(Some(RawLine {
            number: self.number,
            offset,
            bytes,
            terminated: terminated || too_long,
            too_long,
        }))
    }

    /// Skips to just after the next newline (or the end), counting the bytes skipped.
    fn skip_rest_of_line(&mut self) -> Result<(), AuditError> {
        let mut sink = Vec::new();
        loop {
            sink.clear();
            let read = (&mut self.reader)
                .take(64 * 1024)
                .read_until(b'\n', &mut sink)
                .map_err(|source| AuditError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            self.offset += read as u64;
            if read == 0 || sink.last() == Some(&b'\n') {
                return Ok(());
            }
        }
    }
}

/// Whether `tail` (bytes after the last newline) is a JSON value cut short: what a crash in the
/// middle of writing a line leaves. A tail cut inside a multi-byte character also counts.
pub(crate) fn is_torn(tail: &[u8]) -> bool {
    let text = match std::str::from_utf8(tail) {
        Ok(text) => text,
        // Cut inside a character at the very end: judge what comes before it.
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&tail[..e.valid_up_to()]) {
            Ok(text) => text,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => false,
        Err(e) => e.is_eof(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_format() {
        assert_eq!(segment_name(1), "000001.log");
        assert_eq!(segment_name(1_234_567), "1234567.log");
        assert_eq!(parse_name("000001.log"), Some(1));
        assert_eq!(parse_name("1234567.log"), Some(1_234_567));
        assert_eq!(parse_name("000000.log"), None);
        assert_eq!(parse_name("00001.log"), None);
        assert_eq!(parse_name("000001.log.tmp"), None);
        assert_eq!(parse_name("00000a.log"), None);
    }

    #[test]
    fn torn_means_cut_short() {
        assert!(is_torn(b""));
        assert!(is_torn(b"{"));
        assert!(is_torn(b"{\"a\":nu"));
        assert!(is_torn(b"{\"a\":12"));
        assert!(is_torn("{\"a\":\"zo\u{eb}".as_bytes()));
        assert!(is_torn(&"{\"a\":\"\u{eb}".as_bytes()[..7]));
        assert!(!is_torn(b"{}"));
        assert!(!is_torn(b"{}\x0b"));
        assert!(!is_torn(b"{}x"));
        assert!(!is_torn(b"x"));
        assert!(!is_torn(b"{\"a\":\xff"));
    }
}
