//! Writing results: raw bytes and JSON on stdout, aligned tables, and the
//! human forms of values, sizes, durations and dates.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;

use crate::exit::{CliError, Exit};

/// Writes `bytes` to stdout exactly as given and flushes.
///
/// A closed stdout (`officesync get ... | head -c 10`) stops the command
/// quietly with exit 0, as `cat` would; other write errors are failures.
pub fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Copies `reader` to stdout byte for byte, without buffering it all.
///
/// `on_read_error` turns a failure of the reader (the daemon's connection)
/// into the command's error.
pub fn copy_to_stdout(
    reader: &mut impl io::Read,
    on_read_error: impl FnOnce(io::Error) -> CliError,
) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(on_read_error(e)),
        };
        out.write_all(&buf[..n]).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)
}

/// The error for a failed write to stdout.
fn stdout_error(error: io::Error) -> CliError {
    if error.kind() == io::ErrorKind::BrokenPipe {
        CliError::quiet(Exit::Success)
    } else {
        CliError::failure(format!("cannot write to stdout: {error}"))
    }
}

/// Prints `value` as pretty JSON and a newline on stdout, the keys of every object in sorted
/// order (as `--json` has always printed the daemon's answers).
pub fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    let fail = |e: serde_json::Error| CliError::failure(format!("cannot render JSON: {e}"));
    let value = serde_json::to_value(value).map_err(fail)?;
    let mut text = serde_json::to_string_pretty(&value).map_err(fail)?;
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Prints `text` on stdout, adding a final newline if it has none.
pub fn print_text(text: &str) -> Result<(), CliError> {
    if text.ends_with('\n') || text.is_empty() {
        write_stdout(text.as_bytes())
    } else {
        write_stdout(format!("{text}\n").as_bytes())
    }
}

/// Decodes a `value_base64` field of an API answer.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, CliError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| CliError::failure(format!("officesyncd sent a value that is not base64: {e}")))
}

/// Encodes bytes as standard base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A value as text if it is UTF-8 that prints as it is (no control or
/// invisible characters, so it fits on one line of a listing and cannot steer
/// the terminal), else `<N bytes>`.
pub fn value_inline(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().all(prints) => text.to_owned(),
        _ => format!("<{} bytes>", bytes.len()),
    }
}

/// True for a character that shows as itself on a terminal: not a control
/// character (C0, DEL, C1: terminal escapes start with ESC or CSI) and not an
/// invisible format character (zero-width, line and paragraph separators,
/// bidirectional overrides that reorder what follows, tags).
pub fn prints(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'))
}

/// Text from the daemon or the file system (a key, a path, a message) as it
/// may be written to a terminal: unchanged when every character prints (see
/// [`prints`]) and it does not start with `"`; else between double quotes with
/// the others escaped as Rust writes them (`\n`, `\u{1b}`), and `"` and `\`
/// escaped, so no byte of it can act on the terminal and the quoted form is
/// never mistaken for a key that prints as it is. `--json` output keeps the
/// exact text instead.
pub fn escape_text(text: &str) -> String {
    if !text.starts_with('"') && text.chars().all(prints) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if prints(c) => out.push(c),
            c => out.extend(c.escape_default()),
        }
    }
    out.push('"');
    out
}

/// A message (not a key) for a terminal: every character that does not print
/// (see [`prints`]) escaped as Rust writes it, the rest unchanged and unquoted.
pub fn escape_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if prints(c) {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// Sizes and durations, written as the daemon's status page writes them.
pub use officesync_daemon::time::{human_bytes, human_duration};

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_unix(secs: i64) -> String {
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = officesync_daemon::time::civil_from_days(secs.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds since the Unix epoch now (0 if the clock is before 1970).
pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Rows of cells printed as left-aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    /// The rows, header included.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header`.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, each line prefixed by `indent`; the last column
    /// is not padded.
    pub fn render(&self, indent: &str) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = indent.to_owned();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 < row.len() {
                    let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_show_inline_only_when_printable() {
        assert_eq!(value_inline(b"{\"a\":1}"), "{\"a\":1}");
        assert_eq!(value_inline(b"two\nlines"), "<9 bytes>");
        assert_eq!(value_inline(b"tab\there"), "<8 bytes>");
        assert_eq!(value_inline(&[0xff, 0x00]), "<2 bytes>");
        assert_eq!(value_inline("合肥".as_bytes()), "合肥");
        assert_eq!(value_inline("a\u{202e}b".as_bytes()), "<5 bytes>");
    }

    #[test]
    fn text_with_control_or_invisible_characters_is_quoted_and_escaped() {
        assert_eq!(escape_text("hefei/grain"), "hefei/grain");
        assert_eq!(escape_text("合肥/粮食"), "合肥/粮食");
        assert_eq!(escape_text("a\\nb"), "a\\nb", "a printable backslash stays");
        assert_eq!(
            escape_text("evil\u{1b}]0;owned\u{7}"),
            "\"evil\\u{1b}]0;owned\\u{7}\""
        );
        assert_eq!(escape_text("a\nb\tc"), "\"a\\nb\\tc\"");
        assert_eq!(escape_text("\u{9b}31m"), "\"\\u{9b}31m\"", "C1 CSI");
        assert_eq!(escape_text("txt.\u{202e}exe"), "\"txt.\\u{202e}exe\"");
        // Quoted text cannot pass for a key that prints as it is.
        assert_eq!(escape_text("\"a\\n\""), "\"\\\"a\\\\n\\\"\"");
        for text in ["\u{1b}[2J", "x\ry", "\u{0}", "a\u{7f}"] {
            let shown = escape_text(text);
            assert!(shown.chars().all(prints), "{shown:?}");
            assert!(escape_message(text).chars().all(prints), "{text:?}");
        }
        assert_eq!(escape_message("key \"a\\b\"\u{1b}"), "key \"a\\b\"\\u{1b}");
    }

    #[test]
    fn sizes_durations_and_dates_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3600), "1h 0m 0s");
        assert_eq!(human_duration(90_061), "1d 1h 1m 1s");
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix(1_735_689_599), "2024-12-31 23:59:59 UTC");
        assert_eq!(format_unix(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "N"]);
        table.row(vec!["situation".into(), "3".into()]);
        table.row(vec!["hefei".into(), "12".into()]);
        assert_eq!(
            table.render("  "),
            "  NAME       N\n  situation  3\n  hefei      12\n"
        );
    }
}
