//! Bulk transfer commands: `import` (JSON Lines or a directory tree into a
//! collection) and `export` (a collection as JSON Lines).
//!
//! A JSON Lines record is `{"key": K, "value": V}`, where `V` is any JSON and
//! is stored as its compact text, or `{"key": K, "value_base64": B}` for raw
//! bytes. `export` writes `value` only when the stored bytes are exactly the
//! compact text of the JSON they parse to, so that export followed by import
//! stores identical bytes.

use std::fs::{self, File};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use officesync_api::ScanPage;
use serde_json::{json, Value};
use ureq::http::Method;

use crate::client::Client;
use crate::exit::{CliError, Exit};
use crate::output::{self, print_json, print_text};
use crate::records::records_path;
use crate::urlenc::{encode_component, encode_key};
use crate::Global;

/// Largest value stored by `import`: no officesyncd accepts more.
const MAX_VALUE_BYTES: usize = officesync_daemon::config::MAX_VALUE_BYTES_LIMIT;
/// Longest key the daemon accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// Concurrent PUT workers of `import`, each with its own connection.
const WORKERS: usize = 4;
/// Records asked for per page by `export`. The daemon also ends a page at 8 MiB of values
/// (or after 4096 keys examined) and hands back a `next` cursor, which `export` follows;
/// asking for fewer records keeps each answer small even from a daemon without that budget.
const EXPORT_PAGE_LIMIT: u64 = 100;
/// Shortest interval between two progress updates on a terminal.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// `import COLL FILE`: load JSON Lines (`{"key", "value"}` or
/// `{"key", "value_base64"}`, `-` for stdin) or a directory tree (keys are
/// the relative paths) into a collection.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Collection to write into.
    pub collection: String,
    /// JSON Lines file, `-` for stdin, or a directory whose files become records.
    pub file: PathBuf,
}

/// `export COLL [--output FILE]`: write a collection as JSON Lines.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Collection to read.
    pub collection: String,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only keys starting with this prefix.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
}

/// One record to write: where it came from, its key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    /// A line number (1-based) or a file path, for messages.
    origin: String,
    /// The record key.
    key: String,
    /// The value, byte for byte.
    value: Vec<u8>,
}

/// What reading the input gave: records to write and problems found.
#[derive(Debug, Default)]
struct Parsed {
    /// The records, in input order.
    items: Vec<Item>,
    /// `(origin, message)` for each input line or file skipped.
    bad: Vec<(String, String)>,
}

/// Why `key` cannot be a record key, if it cannot.
fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        Some("the key is empty".to_owned())
    } else if key.len() > MAX_KEY_BYTES {
        Some(format!(
            "the key is {} bytes, more than the {MAX_KEY_BYTES} a key may have",
            key.len()
        ))
    } else {
        None
    }
}

/// Parses one JSON Lines record into its key and value bytes.
fn parse_line(line: &[u8]) -> Result<(String, Vec<u8>), String> {
    let record: Value = serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut fields) = record else {
        return Err("not a JSON object".to_owned());
    };
    let key = match fields.remove("key") {
        None | Some(Value::Null) => return Err("missing \"key\"".to_owned()),
        Some(Value::String(key)) => key,
        Some(_) => return Err("\"key\" is not a string".to_owned()),
    };
    if let Some(problem) = key_problem(&key) {
        return Err(format!("invalid key: {problem}"));
    }
    let value = match (fields.remove("value"), fields.remove("value_base64")) {
        (Some(_), Some(_)) => {
            return Err("has both \"value\" and \"value_base64\"; give one".to_owned())
        }
        (None, None) => return Err("missing \"value\" or \"value_base64\"".to_owned()),
        (Some(value), None) => value.to_string().into_bytes(),
        (None, Some(Value::String(encoded))) => output::decode_base64(&encoded)
            .map_err(|_| "\"value_base64\" is not valid base64".to_owned())?,
        (None, Some(_)) => return Err("\"value_base64\" is not a string".to_owned()),
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is larger than {} MiB, more than any officesyncd accepts",
            MAX_VALUE_BYTES / (1024 * 1024)
        ));
    }
    Ok((key, value))
}

/// Splits JSON Lines input into records and bad lines; blank lines are skipped.
fn parse_lines(input: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, line) in input.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let origin = format!("line {}", index + 1);
        match parse_line(line) {
            Ok((key, value)) => parsed.items.push(Item { origin, key, value }),
            Err(message) => parsed.bad.push((origin, message)),
        }
    }
    parsed
}

/// Every regular file under `root`, in path order, keyed by its path relative
/// to `root` with `/` separators. Symbolic links and other non-regular entries
/// are reported and skipped, and each file is opened without following links
/// and checked to be the very file listed (see [`open_listed`]): a folder that
/// others can write cannot make the import read a file outside it.
fn parse_dir(root: &Path) -> Result<Parsed, CliError> {
    let mut parsed = Parsed::default();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    collect_files(root, &mut files, &mut skipped)?;
    for (path, message) in skipped {
        parsed
            .bad
            .push((output::escape_text(&path.display().to_string()), message));
    }
    parsed.bad.sort();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let real_root = fs::canonicalize(root).map_err(|e| {
        CliError::usage(format!("cannot resolve directory {}: {e}", root.display()))
    })?;
    for listed in files {
        let path = &listed.path;
        let shown = output::escape_text(&path.display().to_string());
        let relative = match path.strip_prefix(root) {
            Ok(relative) => relative,
            Err(_) => continue,
        };
        let mut parts = Vec::new();
        for part in relative.components() {
            match part.as_os_str().to_str() {
                Some(text) => parts.push(text),
                None => break,
            }
        }
        if parts.len() != relative.components().count() {
            parsed
                .bad
                .push((shown, "the path is not valid UTF-8".to_owned()));
            continue;
        }
        let key = parts.join("/");
        if let Some(problem) = key_problem(&key) {
            parsed.bad.push((shown, format!("invalid key: {problem}")));
            continue;
        }
        let value = match read_listed(&listed, &real_root.join(relative)) {
            Ok(value) => value,
            Err(message) => {
                parsed.bad.push((shown, message));
                continue;
            }
        };
        parsed.items.push(Item {
            origin: shown,
            key,
            value,
        });
    }
    Ok(parsed)
}

/// A regular file found by the directory walk, with the identity (device and
/// inode) it had when listed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    /// Its path (under the import root).
    path: PathBuf,
    /// Device of the listed file.
    dev: u64,
    /// Inode of the listed file.
    ino: u64,
}

/// `open(2)` flags that std does not name: do not follow a symbolic link in the
/// last component (the open fails instead), and do not wait on a FIFO. Zero
/// where the value is not known here; the identity checks of [`open_listed`]
/// hold without them.
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "x86")))]
const NO_FOLLOW_FLAGS: i32 = 0o400_000 | 0o4000;
/// See the Linux x86 definition.
#[cfg(all(target_os = "linux", any(target_arch = "aarch64", target_arch = "arm")))]
const NO_FOLLOW_FLAGS: i32 = 0o100_000 | 0o4000;
/// See the Linux x86 definition.
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm"
    )
)))]
const NO_FOLLOW_FLAGS: i32 = 0;

/// Opens a listed file for reading, refusing anything but the regular file
/// that was listed: the last component is opened without following a link,
/// the opened file must be regular and have the listed device and inode, and
/// (on Linux) must really be `expected`, the file's place under the resolved
/// import root, so a directory swapped for a link after the listing is caught.
fn open_listed(listed: &Listed, expected: &Path) -> Result<File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(NO_FOLLOW_FLAGS)
        .open(&listed.path)
        .map_err(|e| match fs::symlink_metadata(&listed.path) {
            Ok(m) if m.file_type().is_symlink() => {
                "it became a symbolic link after it was listed; not followed".to_owned()
            }
            _ => format!("cannot open: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat the opened file: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file once opened; refused".to_owned());
    }
    if (meta.dev(), meta.ino()) != (listed.dev, listed.ino) {
        return Err("it was replaced after it was listed; refused".to_owned());
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        if let Ok(real) = fs::read_link(&fd_path) {
            if real != expected {
                return Err(format!(
                    "it resolves to {} outside the directory imported (a directory on \
                     its path became a symbolic link); refused",
                    output::escape_text(&real.display().to_string())
                ));
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = expected;
    Ok(file)
}

/// Reads a listed file whole (see [`open_listed`]), refusing one larger than
/// any daemon accepts.
fn read_listed(listed: &Listed, expected: &Path) -> Result<Vec<u8>, String> {
    let file = open_listed(listed, expected)?;
    let mut value = Vec::new();
    file.take(MAX_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut value)
        .map_err(|e| format!("cannot read: {e}"))?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "larger than {} MiB, more than any officesyncd accepts",
            MAX_VALUE_BYTES / (1024 * 1024)
        ));
    }
    Ok(value)
}

/// Appends the regular files under `dir`, recursively, to `files`, and every
/// other entry that is not a directory (symbolic links, devices, FIFOs) with
/// the reason to `skipped`. Links are never followed.
fn collect_files(
    dir: &Path,
    files: &mut Vec<Listed>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let entries = fs::read_dir(dir)
        .map_err(|e| CliError::usage(format!("cannot read directory {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            CliError::failure(format!("cannot read directory {}: {e}", dir.display()))
        })?;
        let path = entry.path();
        // The entry itself, not what a link points to.
        let meta = entry
            .metadata()
            .map_err(|e| CliError::failure(format!("cannot stat {}: {e}", path.display())))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            collect_files(&path, files, skipped)?;
        } else if kind.is_file() {
            files.push(Listed {
                path,
                dev: meta.dev(),
                ino: meta.ino(),
            });
        } else if kind.is_symlink() {
            skipped.push((
                path,
                "a symbolic link; import reads only regular files and does not follow links"
                    .to_owned(),
            ));
        } else {
            skipped.push((
                path,
                "not a regular file (a device, FIFO or socket); import reads only regular files"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// Reads the import input named by `file`.
fn read_input(file: &Path) -> Result<Parsed, CliError> {
    if file.as_os_str() == "-" {
        let mut stdin = io::stdin().lock();
        if stdin.is_terminal() {
            eprintln!("reading JSON Lines from stdin; end with Ctrl-D");
        }
        let mut input = Vec::new();
        stdin
            .read_to_end(&mut input)
            .map_err(|e| CliError::failure(format!("cannot read stdin: {e}")))?;
        return Ok(parse_lines(&input));
    }
    let shown = file.display();
    let meta =
        fs::metadata(file).map_err(|e| CliError::usage(format!("cannot open {shown}: {e}")))?;
    if meta.is_dir() {
        return parse_dir(file);
    }
    let input = fs::read(file).map_err(|e| CliError::usage(format!("cannot read {shown}: {e}")))?;
    Ok(parse_lines(&input))
}

/// The outcome of writing the records.
#[derive(Debug, Default)]
struct Outcome {
    /// Records the daemon acknowledged.
    imported: usize,
    /// `(index into items, message)` of each record the daemon refused.
    failed: Vec<(usize, String)>,
    /// The first error that means the daemon is unreachable; writing stopped.
    unreachable: Option<CliError>,
}

/// PUTs every item with [`WORKERS`] threads, each with its own client.
fn write_items(items: &[Item], base: &str, global: &Global) -> Outcome {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let imported = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failed = Mutex::new(Vec::new());
    let unreachable: Mutex<Option<CliError>> = Mutex::new(None);
    let finished = AtomicUsize::new(0);
    let workers = WORKERS.min(items.len()).max(1);
    let progress = io::stderr().is_terminal();

    let found = global.api_addr().and_then(|addr| {
        let token = global.token_for(&addr)?;
        Ok((addr, token))
    });
    let (addr, token) = match found {
        Ok(found) => found,
        Err(error) => {
            return Outcome {
                unreachable: Some(error),
                ..Outcome::default()
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let client = Client::new(addr.clone(), global.timeout).with_token(token.clone());
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let path = format!("{base}/{}", encode_key(&item.key));
                    match client.send(Method::PUT, &path, Some(item.value.clone())) {
                        Ok(reply) => match reply.check(None).and_then(|r| r.bytes()) {
                            Ok(_) => {
                                imported.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(error) if error.exit == Exit::Unreachable => {
                                stop.store(true, Ordering::Relaxed);
                                lock(&unreachable).get_or_insert(error);
                            }
                            Err(error) => lock(&failed).push((index, error.to_string())),
                        },
                        Err(error) if error.exit == Exit::Unreachable => {
                            stop.store(true, Ordering::Relaxed);
                            lock(&unreachable).get_or_insert(error);
                        }
                        Err(error) => lock(&failed).push((index, error.to_string())),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                finished.fetch_add(1, Ordering::Relaxed);
            });
        }
        if progress {
            let total = items.len();
            let mut last = Instant::now();
            eprint!("\r0/{total}");
            while finished.load(Ordering::Relaxed) < workers {
                std::thread::sleep(Duration::from_millis(20));
                if last.elapsed() >= PROGRESS_INTERVAL {
                    last = Instant::now();
                    eprint!("\r{}/{total}", done.load(Ordering::Relaxed));
                }
            }
            // Clear the progress line.
            eprint!("\r{:width$}\r", "", width = 2 * total.to_string().len() + 1);
        }
    });

    let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_by_key(|(index, _)| *index);
    Outcome {
        imported: imported.into_inner(),
        failed,
        unreachable: unreachable.into_inner().unwrap_or_else(|e| e.into_inner()),
    }
}

/// Locks a mutex, even one a panicking worker poisoned.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `import`: writes every record of the input, reporting bad lines and
/// refused records by line number (or path), then a summary.
pub fn import(args: ImportArgs, global: &Global) -> Result<(), CliError> {
    let base = records_path(&args.collection)?;
    let parsed = read_input(&args.file)?;
    for (origin, message) in &parsed.bad {
        eprintln!("{origin}: skipped: {message}");
    }
    let outcome = if parsed.items.is_empty() {
        Outcome::default()
    } else {
        write_items(&parsed.items, &base, global)
    };
    for (index, message) in &outcome.failed {
        let origin = parsed
            .items
            .get(*index)
            .map_or("?", |item| item.origin.as_str());
        eprintln!("{origin}: not imported: {message}");
    }

    let (imported, bad, failed) = (outcome.imported, parsed.bad.len(), outcome.failed.len());
    if global.json {
        print_json(&json!({
            "collection": args.collection,
            "imported": imported,
            "bad_lines": bad,
            "failed": failed,
            "complete": outcome.unreachable.is_none(),
        }))?;
    } else {
        print_text(&format!(
            "imported {imported} records, {bad} bad lines, {failed} failed"
        ))?;
    }
    if let Some(error) = outcome.unreachable {
        return Err(error);
    }
    if bad > 0 || failed > 0 {
        return Err(CliError::quiet(Exit::Usage));
    }
    Ok(())
}

/// The JSON Lines record of one exported value.
fn export_line(key: &str, value: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<Value>(value) {
        // Only when import would store these very bytes again.
        if parsed.to_string().as_bytes() == value {
            return json!({ "key": key, "value": parsed }).to_string();
        }
    }
    json!({ "key": key, "value_base64": output::encode_base64(value) }).to_string()
}

/// The error for a failed write of the export.
fn write_error(error: io::Error, target: &str) -> CliError {
    if error.kind() == io::ErrorKind::BrokenPipe {
        CliError::quiet(Exit::Success)
    } else {
        CliError::failure(format!("cannot write to {target}: {e}", e = error))
    }
}

/// `export`: pages through the collection in key order and writes one JSON
/// line per live record.
pub fn export(args: ExportArgs, global: &Global) -> Result<(), CliError> {
    let base = records_path(&args.collection)?;
    let (mut out, target): (Box<dyn Write>, String) = match &args.output {
        Some(path) if path.as_os_str() != "-" => {
            let file = File::create(path)
                .map_err(|e| CliError::usage(format!("cannot create {}: {e}", path.display())))?;
            (Box::new(BufWriter::new(file)), path.display().to_string())
        }
        _ => (
            Box::new(BufWriter::new(io::stdout().lock())),
            "stdout".to_owned(),
        ),
    };
    let client = global.client()?;
    let mut after: Option<String> = None;
    let mut count: u64 = 0;
    loop {
        let mut query = vec![format!("limit={EXPORT_PAGE_LIMIT}")];
        if let Some(prefix) = &args.prefix {
            query.push(format!("prefix={}", encode_component(prefix)));
        }
        if let Some(after) = &after {
            query.push(format!("after={}", encode_component(after)));
        }
        let path = format!("{base}?{}", query.join("&"));
        let page: ScanPage = client.send(Method::GET, &path, None)?.check(None)?.json()?;
        let mut text = String::new();
        for record in &page.records {
            // A deleted winner has no value: nothing to export.
            let Some(encoded) = &record.value_base64 else {
                continue;
            };
            let value = output::decode_base64(encoded)?;
            text.push_str(&export_line(&record.key, &value));
            text.push('\n');
            count += 1;
        }
        out.write_all(text.as_bytes())
            .map_err(|e| write_error(e, &target))?;
        match page.next {
            None => break,
            Some(next) if after.as_deref() == Some(next.as_str()) => {
                return Err(CliError::failure(format!(
                    "officesyncd at {} returned the same scan page twice (next = {next:?})",
                    client.addr()
                )))
            }
            Some(next) => after = Some(next),
        }
    }
    out.flush().map_err(|e| write_error(e, &target))?;
    if args.output.is_some() && target != "stdout" {
        eprintln!("exported {count} records to {target}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_records_and_bad_lines() {
        let input = b"{\"key\":\"a\",\"value\":{\"x\": [1, 2]}}\n\
            \n\
            not json\n\
            {\"value\":1}\n\
            {\"key\":\"\",\"value\":1}\n\
            {\"key\":\"b/c\",\"value_base64\":\"AP8=\"}\r\n\
            {\"key\":\"d\",\"value\":\"text\"}";
        let parsed = parse_lines(input);
        assert_eq!(
            parsed.items,
            vec![
                Item {
                    origin: "line 1".into(),
                    key: "a".into(),
                    value: b"{\"x\":[1,2]}".to_vec()
                },
                Item {
                    origin: "line 6".into(),
                    key: "b/c".into(),
                    value: vec![0, 255]
                },
                Item {
                    origin: "line 7".into(),
                    key: "d".into(),
                    value: b"\"text\"".to_vec()
                },
            ]
        );
        let lines: Vec<&str> = parsed.bad.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(lines, ["line 3", "line 4", "line 5"]);
    }

    #[test]
    fn export_lines_round_trip_exactly() {
        for value in [
            b"{\"a\":1}".as_slice(),
            b"{\"a\": 1}",
            b"{\"b\":1,\"a\":2}",
            b"\"s\"",
            b"plain text",
            b"\x00\xff",
            b"",
            b"1.0",
            b"12345678901234567890123",
        ] {
            let line = export_line("k", value);
            let parsed = parse_lines(line.as_bytes());
            assert_eq!(parsed.bad, Vec::new(), "{line}");
            assert_eq!(parsed.items[0].value, value, "{line}");
        }
        assert_eq!(
            export_line("k", b"{\"a\":1}"),
            "{\"key\":\"k\",\"value\":{\"a\":1}}"
        );
        assert!(export_line("k", b"\x00").contains("value_base64"));
    }

    #[test]
    fn directories_become_records_keyed_by_relative_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        fs::write(dir.path().join("top.txt"), b"top").expect("write");
        fs::write(dir.path().join("a/b/deep.bin"), [0u8, 1, 2]).expect("write");
        let parsed = parse_dir(dir.path()).expect("dir");
        let keys: Vec<(&str, &[u8])> = parsed
            .items
            .iter()
            .map(|i| (i.key.as_str(), i.value.as_slice()))
            .collect();
        assert_eq!(
            keys,
            [
                ("a/b/deep.bin", [0u8, 1, 2].as_slice()),
                ("top.txt", b"top")
            ]
        );
    }

    #[test]
    fn links_and_special_files_are_reported_not_read() {
        let outside = tempfile::tempdir().expect("tempdir");
        let secret = outside.path().join("node.key");
        fs::write(&secret, b"PRIVATE KEY").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("ok.txt"), b"ok").expect("write");
        std::os::unix::fs::symlink(&secret, dir.path().join("key-link")).expect("symlink");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dir-link")).expect("symlink");
        let parsed = parse_dir(dir.path()).expect("dir");
        let keys: Vec<&str> = parsed.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["ok.txt"]);
        let bad: Vec<(String, &str)> = parsed
            .bad
            .iter()
            .map(|(origin, message)| {
                let name = Path::new(origin).file_name().expect("name");
                (name.to_string_lossy().into_owned(), message.as_str())
            })
            .collect();
        assert_eq!(bad.len(), 2, "{bad:?}");
        for (name, message) in &bad {
            assert!(["dir-link", "key-link"].contains(&name.as_str()), "{name}");
            assert!(message.contains("symbolic link"), "{message}");
        }
    }

    /// Lists `dir` and returns its one regular file.
    fn list_one(dir: &Path) -> Listed {
        let (mut files, mut skipped) = (Vec::new(), Vec::new());
        collect_files(dir, &mut files, &mut skipped).expect("list");
        assert_eq!(files.len(), 1, "{files:?}");
        files.remove(0)
    }

    #[test]
    fn a_file_swapped_after_the_listing_is_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        let secret = outside.path().join("node.key");
        fs::write(&secret, b"PRIVATE KEY").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(dir.path()).expect("root");
        let file = dir.path().join("report.txt");
        fs::write(&file, b"report").expect("write");

        let listed = list_one(dir.path());
        let expected = root.join("report.txt");
        assert_eq!(read_listed(&listed, &expected).expect("read"), b"report");

        // Swapped for a link to the secret between the listing and the open. The listed
        // file moves aside rather than being deleted: a deleted file's inode number is
        // free for the file system to hand to the next file made, and the replacement
        // below would then carry the listed identity.
        fs::rename(&file, dir.path().join("kept")).expect("move aside");
        std::os::unix::fs::symlink(&secret, &file).expect("symlink");
        let error = read_listed(&listed, &expected).expect_err("link followed");
        assert!(error.contains("symbolic link"), "{error}");

        // Swapped for another regular file (a copy, or a hard link to the secret).
        let other = dir.path().join("other");
        fs::write(&other, b"PRIVATE KEY").expect("write");
        fs::rename(&other, &file).expect("rename");
        let error = read_listed(&listed, &expected).expect_err("replaced file read");
        assert!(error.contains("replaced"), "{error}");
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_the_listing_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(dir.path()).expect("root");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::write(dir.path().join("sub/f"), b"data").expect("write");
        let listed = list_one(dir.path());
        let expected = root.join("sub/f");
        // The directory moves out of the tree (same file, same inode) and a link to its new
        // place takes its name: the open would follow the link in the middle of the path.
        let away = root.join("away");
        fs::create_dir(&away).expect("mkdir");
        fs::rename(dir.path().join("sub"), away.join("sub")).expect("move");
        std::os::unix::fs::symlink(away.join("sub"), dir.path().join("sub")).expect("symlink");
        let error = read_listed(&listed, &expected).expect_err("followed a directory link");
        assert!(error.contains("outside the directory imported"), "{error}");
    }
}
