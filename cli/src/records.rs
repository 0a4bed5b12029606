//! Record commands: `put`, `get`, `delete` and `scan` (with `--where`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::Args;
use officesync_api::{ScanPage, ScanRecord, SiblingsBody, WriteBody};
use serde_json::json;
use ureq::http::Method;

use crate::client::Reply;
use crate::exit::{CliError, Exit};
use crate::output::{self, print_json, print_text};
use crate::urlenc::{encode_component, encode_key};
use crate::Global;

/// Largest value read for `put`: no officesyncd accepts more
/// (`storage.max_value_bytes` is capped there).
const MAX_VALUE_BYTES: usize = officesync_daemon::config::MAX_VALUE_BYTES_LIMIT;
/// Most records asked for in one scan page when `--limit` is given.
const SCAN_PAGE_LIMIT: u64 = 1000;

/// `put COLL KEY [VALUE]`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Collection name.
    pub collection: String,
    /// Record key (UTF-8; may contain `/`).
    pub key: String,
    /// The value, stored as these exact bytes; `-` reads it from stdin.
    pub value: Option<OsString>,
    /// Read the value from this file (`-` for stdin), byte for byte.
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "value")]
    pub file: Option<PathBuf>,
}

/// `get COLL KEY [--all]`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Collection name.
    pub collection: String,
    /// Record key.
    pub key: String,
    /// Show every sibling (concurrent versions), not only the winner's value.
    #[arg(long)]
    pub all: bool,
    /// Print the value of this sibling (`origin:counter`, as `--all` lists it)
    /// instead of the winner's.
    #[arg(long, value_name = "VERSION", conflicts_with = "all")]
    pub version: Option<String>,
}

/// `delete COLL KEY`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Collection name.
    pub collection: String,
    /// Record key.
    pub key: String,
}

/// `scan COLL [--prefix P] [--limit N] [--after K] [--where EXPR]...`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Collection name.
    pub collection: String,
    /// Only keys starting with this prefix.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Print at most this many records.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Start after this key (exclusive), or go on from the `next` of an earlier scan (a key,
    /// or an `idx1.` cursor when an index on a `--where` field gave the records in its order).
    #[arg(long, value_name = "K")]
    pub after: Option<String>,
    /// Only records whose JSON value matches: a JSON pointer, an operator
    /// (`=`, `!=`, `<`, `<=`, `>`, `>=`, `~` substring) and a JSON value, e.g.
    /// '/level_m>=7.5' or '/river="Nanfei"'. Repeatable: all must hold. Values that are
    /// not JSON never match.
    #[arg(long = "where", value_name = "EXPR")]
    pub filters: Vec<String>,
}

/// Where `put` takes the value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// The VALUE argument itself.
    Literal(Vec<u8>),
    /// Standard input, to its end.
    Stdin,
    /// A file, whole.
    File(PathBuf),
}

impl ValueSource {
    /// Picks the source from the VALUE argument and `--file`: exactly one
    /// must be given; `-` in either means stdin.
    pub fn select(value: Option<&OsStr>, file: Option<&Path>) -> Result<ValueSource, CliError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(CliError::usage(
                "give the value either as VALUE or with --file, not both",
            )),
            (None, None) => Err(CliError::usage(
                "put needs a value: give VALUE, --file FILE, or - to read stdin",
            )),
            (Some(value), None) if value == "-" => Ok(ValueSource::Stdin),
            (Some(value), None) => Ok(ValueSource::Literal(os_bytes(value)?)),
            (None, Some(file)) if file.as_os_str() == "-" => Ok(ValueSource::Stdin),
            (None, Some(file)) => Ok(ValueSource::File(file.to_owned())),
        }
    }

    /// Reads the value, byte for byte, from `stdin` when the source is stdin.
    pub fn read(self, stdin: &mut dyn Read) -> Result<Vec<u8>, CliError> {
        match self {
            ValueSource::Literal(bytes) => check_size(bytes, "VALUE"),
            ValueSource::Stdin => {
                let bytes = read_limited(stdin).map_err(|e| {
                    CliError::failure(format!("cannot read the value from stdin: {e}"))
                })?;
                check_size(bytes, "stdin")
            }
            ValueSource::File(path) => {
                let what = path.display().to_string();
                let mut file = File::open(&path)
                    .map_err(|e| CliError::usage(format!("cannot open {what}: {e}")))?;
                let bytes = read_limited(&mut file)
                    .map_err(|e| CliError::failure(format!("cannot read {what}: {e}")))?;
                check_size(bytes, &what)
            }
        }
    }
}

/// Reads at most one byte more than [`MAX_VALUE_BYTES`], so that an
/// oversized value is noticed without reading all of it.
fn read_limited(reader: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Refuses values no daemon would store, before sending them.
fn check_size(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, CliError> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(CliError::usage(format!(
            "the value from {what} is larger than {} MiB, more than any officesyncd accepts",
            MAX_VALUE_BYTES / (1024 * 1024)
        )));
    }
    Ok(bytes)
}

/// The bytes of a command-line argument, exactly as given.
fn os_bytes(value: &OsStr) -> Result<Vec<u8>, CliError> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(value.as_bytes().to_vec())
    }
    #[cfg(not(unix))]
    {
        value
            .to_str()
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| {
                CliError::usage("VALUE is not valid Unicode; use --file to store raw bytes")
            })
    }
}

/// `/v1/collections/{c}/records/{key}`, after checking both are non-empty
/// (an empty key would name the scan endpoint instead).
pub(crate) fn record_path(collection: &str, key: &str) -> Result<String, CliError> {
    if key.is_empty() {
        return Err(CliError::usage("the key must not be empty"));
    }
    Ok(format!("{}/{}", records_path(collection)?, encode_key(key)))
}

/// `/v1/collections/{c}/records`, after checking the name is non-empty.
pub(crate) fn records_path(collection: &str) -> Result<String, CliError> {
    if collection.is_empty() {
        return Err(CliError::usage("the collection name must not be empty"));
    }
    Ok(format!(
        "/v1/collections/{}/records",
        encode_component(collection)
    ))
}

/// The message for a key that does not exist.
pub(crate) fn missing(collection: &str, key: &str) -> String {
    format!("key {key:?} not found in collection {collection:?}")
}

/// `put`: writes the value and prints the new version.
pub fn put(args: PutArgs, global: &Global) -> Result<(), CliError> {
    let path = record_path(&args.collection, &args.key)?;
    let source = ValueSource::select(args.value.as_deref(), args.file.as_deref())?;
    if source == ValueSource::Stdin && io::stdin().is_terminal() {
        eprintln!("reading the value from stdin; end it with Ctrl-D");
    }
    let value = source.read(&mut io::stdin().lock())?;
    let client = global.client()?;
    let ack = client
        .send(Method::PUT, &path, Some(value))?
        .check(None)?
        .json()?;
    print_ack(&ack, global.json)
}

/// Prints a write acknowledgement: its `version`, or the JSON.
pub(crate) fn print_ack(ack: &WriteBody, json: bool) -> Result<(), CliError> {
    if json {
        print_json(ack)
    } else {
        print_text(&output::escape_text(&ack.version))
    }
}

/// `get`: the winner's value on stdout, or every sibling with `--all`.
pub fn get(args: GetArgs, global: &Global) -> Result<(), CliError> {
    let path = record_path(&args.collection, &args.key)?;
    let missing = missing(&args.collection, &args.key);
    let client = global.client()?;
    if args.all {
        let answer: SiblingsBody = client
            .send(Method::GET, &format!("{path}?all=true"), None)?
            .check(Some(&missing))?
            .json()?;
        if answer.truncated {
            eprintln!(
                "note: the values of some siblings were left out to keep the answer small; \
                 print one with --version VERSION"
            );
        }
        return if global.json {
            print_json(&answer)
        } else {
            print_text(&render_siblings(&answer)?)
        };
    }

    let (path, missing) = match &args.version {
        Some(version) => (
            format!("{path}?version={}", encode_component(version)),
            format!(
                "key {:?} in collection {:?} has no current version {version:?}",
                args.key, args.collection
            ),
        ),
        None => (path, missing),
    };
    let reply = client
        .send(Method::GET, &path, None)?
        .check(Some(&missing))?;
    let version = reply.header("officesync-version").unwrap_or("-").to_owned();
    let siblings: u64 = reply
        .header("officesync-siblings")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1);
    if global.json {
        let value = reply.bytes()?;
        return print_json(&json!({
            "collection": args.collection,
            "key": args.key,
            "version": version,
            "siblings": siblings,
            "value_base64": output::encode_base64(&value),
            "value": std::str::from_utf8(&value).ok(),
        }));
    }
    if siblings > 1 && args.version.is_none() {
        // Before the value: the value has no trailing newline to end a line.
        eprintln!(
            "note: {siblings} siblings; winner {} (use --all to see all)",
            output::escape_text(&version)
        );
    }
    stream_value(reply)
}

/// Copies a value from the daemon to stdout as it arrives.
fn stream_value(reply: Reply<'_>) -> Result<(), CliError> {
    let addr = reply.addr().clone();
    output::copy_to_stdout(&mut reply.into_reader(), |e| {
        CliError::new(
            Exit::Unreachable,
            format!("officesyncd at {addr} broke off while sending the value: {e}"),
        )
    })
}

/// The text form of a `get --all` answer: one block per sibling, the
/// winner (listed first by the daemon) marked.
fn render_siblings(answer: &SiblingsBody) -> Result<String, CliError> {
    let siblings = &answer.siblings;
    let mut out = String::new();
    for (i, sibling) in siblings.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let winner = if i == 0 { " (winner)" } else { "" };
        out.push_str(&format!(
            "sibling {} of {}{winner}\n",
            i + 1,
            siblings.len()
        ));
        let version = output::escape_text(&sibling.version);
        out.push_str(&format!("  version: {version}\n"));
        out.push_str(&format!("  hlc:     {}\n", sibling.hlc));
        let author = sibling.author.as_deref().map_or_else(
            || "(not recorded: written before authors, or relayed by an older node)".to_owned(),
            output::escape_text,
        );
        out.push_str(&format!("  author:  {author}\n"));
        out.push_str(&format!("  deleted: {}\n", sibling.deleted));
        match &sibling.value_base64 {
            None if sibling.value_omitted => out.push_str(&format!(
                "  value:   (left out: {} bytes; print it with --version {version})\n",
                sibling
                    .value_bytes
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            )),
            None => out.push_str("  value:   (none: tombstone)\n"),
            Some(encoded) => {
                let bytes = output::decode_base64(encoded)?;
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        out.push_str(&format!("  value:   {}\n", output::escape_text(&text)))
                    }
                    Err(_) => out.push_str(&format!("  value (base64): {encoded}\n")),
                }
            }
        }
    }
    Ok(out)
}

/// `delete`: writes a tombstone and prints its version.
pub fn delete(args: DeleteArgs, global: &Global) -> Result<(), CliError> {
    let path = record_path(&args.collection, &args.key)?;
    let missing = missing(&args.collection, &args.key);
    let client = global.client()?;
    let body = client
        .send(Method::DELETE, &path, None)?
        .check(Some(&missing))?
        .bytes()?;
    match serde_json::from_slice::<WriteBody>(&body) {
        Ok(ack) => print_ack(&ack, global.json),
        // An empty (204) or non-JSON answer: the delete happened all the same.
        Err(_) if global.json => print_json(&json!({
            "collection": args.collection,
            "key": args.key,
            "deleted": true,
        })),
        Err(_) => Ok(()),
    }
}

/// `scan`: follows `next` pages until `--limit` records or the end.
pub fn scan(args: ScanArgs, global: &Global) -> Result<(), CliError> {
    let base = records_path(&args.collection)?;
    let client = global.client()?;
    let mut after = args.after.clone();
    let mut printed: u64 = 0;
    let mut collected = Vec::new();
    let cursor = loop {
        let remaining = args.limit.map(|limit| limit - printed);
        let mut query = Vec::new();
        if let Some(prefix) = &args.prefix {
            query.push(format!("prefix={}", encode_component(prefix)));
        }
        if let Some(after) = &after {
            query.push(format!("after={}", encode_component(after)));
        }
        for expr in &args.filters {
            query.push(format!("where={}", encode_component(expr)));
        }
        if let Some(remaining) = remaining {
            query.push(format!("limit={}", remaining.min(SCAN_PAGE_LIMIT)));
        }
        let path = if query.is_empty() {
            base.clone()
        } else {
            format!("{base}?{}", query.join("&"))
        };
        let ScanPage { records, next } =
            client.send(Method::GET, &path, None)?.check(None)?.json()?;

        let take = remaining.map_or(records.len(), |r| usize::try_from(r).unwrap_or(usize::MAX));
        let mut text = String::new();
        for record in records.iter().take(take) {
            if global.json {
                collected.push(record.clone());
            } else {
                text.push_str(&scan_line(record)?);
            }
            printed += 1;
        }
        output::write_stdout(text.as_bytes())?;

        if args.limit.is_some_and(|limit| printed >= limit) {
            // Stopped by --limit: the key to go on after, if any.
            break if take < records.len() {
                Some(records[take - 1].key.clone())
            } else {
                next
            };
        }
        match next {
            None => break None,
            Some(next) if after.as_deref() == Some(next.as_str()) => {
                return Err(CliError::failure(format!(
                    "officesyncd at {} returned the same scan page twice (next = {next:?})",
                    client.addr()
                )))
            }
            Some(next) => after = Some(next),
        }
    };
    if global.json {
        print_json(&json!({ "records": collected, "next": cursor }))?;
    }
    Ok(())
}

/// One line of `scan`: `key<TAB>version<TAB>value-or-<N bytes>`, the key and
/// version escaped when they hold characters that do not print (see
/// [`output::escape_text`]; `--json` keeps them exact).
fn scan_line(record: &ScanRecord) -> Result<String, CliError> {
    let value = match &record.value_base64 {
        Some(encoded) => output::value_inline(&output::decode_base64(encoded)?),
        None => "-".to_owned(),
    };
    Ok(format!(
        "{}\t{}\t{value}\n",
        output::escape_text(&record.key),
        output::escape_text(&record.version)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn select(value: Option<&str>, file: Option<&str>) -> Result<ValueSource, CliError> {
        ValueSource::select(value.map(OsStr::new), file.map(Path::new))
    }

    #[test]
    fn value_source_is_exactly_one_of_value_file_or_stdin() {
        assert_eq!(
            select(Some("{\"a\":1}"), None).expect("literal"),
            ValueSource::Literal(b"{\"a\":1}".to_vec())
        );
        assert_eq!(select(Some("-"), None).expect("stdin"), ValueSource::Stdin);
        assert_eq!(select(None, Some("-")).expect("stdin"), ValueSource::Stdin);
        assert_eq!(
            select(None, Some("v.json")).expect("file"),
            ValueSource::File(PathBuf::from("v.json"))
        );
        assert_eq!(
            select(Some("x"), Some("f")).expect_err("both").exit,
            Exit::Usage
        );
        assert_eq!(select(None, None).expect_err("neither").exit, Exit::Usage);
        // An empty VALUE is a value: the empty string.
        assert_eq!(
            select(Some(""), None).expect("empty"),
            ValueSource::Literal(Vec::new())
        );
    }

    #[test]
    fn values_are_read_byte_for_byte() {
        let raw = b"line\n\r\n\x00\xff no newline".to_vec();
        let got = ValueSource::Stdin
            .read(&mut Cursor::new(raw.clone()))
            .expect("stdin");
        assert_eq!(got, raw);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("value.bin");
        std::fs::write(&path, &raw).expect("write");
        let got = ValueSource::File(path)
            .read(&mut io::empty())
            .expect("file");
        assert_eq!(got, raw);

        let missing = ValueSource::File(dir.path().join("nope")).read(&mut io::empty());
        assert_eq!(missing.expect_err("missing file").exit, Exit::Usage);
    }

    #[test]
    fn oversized_values_are_refused_before_sending() {
        let mut huge = io::repeat(b'x').take(MAX_VALUE_BYTES as u64 + 10);
        let error = ValueSource::Stdin.read(&mut huge).expect_err("too large");
        assert_eq!(error.exit, Exit::Usage);
    }

    #[test]
    fn record_paths_are_encoded() {
        assert_eq!(
            record_path("situation", "hefei/grain 2024?#%").expect("path"),
            "/v1/collections/situation/records/hefei/grain%202024%3F%23%25"
        );
        assert_eq!(record_path("c", "").expect_err("empty").exit, Exit::Usage);
        assert_eq!(record_path("", "k").expect_err("empty").exit, Exit::Usage);
    }

    #[test]
    fn scan_lines_show_printable_values_or_sizes() {
        let record =
            |v: serde_json::Value| -> ScanRecord { serde_json::from_value(v).expect("record") };
        let hlc = json!({"ms": 1, "logical": 0});
        let record = record(
            json!({"key": "hefei/grain", "version": "hefei:3", "siblings": 1, "hlc": hlc,
                            "value_base64": output::encode_base64(b"{\"t\":1}")}),
        );
        assert_eq!(
            scan_line(&record).expect("line"),
            "hefei/grain\thefei:3\t{\"t\":1}\n"
        );
        let record =
            |v: serde_json::Value| -> ScanRecord { serde_json::from_value(v).expect("record") };
        let binary = record(
            json!({"key": "k", "version": "a:1", "siblings": 1, "hlc": hlc,
                            "value_base64": output::encode_base64(&[0, 1, 2])}),
        );
        assert_eq!(scan_line(&binary).expect("line"), "k\ta:1\t<3 bytes>\n");
        let hostile = record(
            json!({"key": "x\u{1b}]2;pwned\u{7}\nfake\tline", "version": "a:1",
                             "siblings": 1, "hlc": hlc, "value_base64": output::encode_base64(b"v")}),
        );
        assert_eq!(
            scan_line(&hostile).expect("line"),
            "\"x\\u{1b}]2;pwned\\u{7}\\nfake\\tline\"\ta:1\tv\n"
        );
    }

    #[test]
    fn siblings_render_as_text_or_base64() {
        let answer = json!({"key": "k", "value_budget_bytes": 8_388_608, "siblings": [
            {"version": "hefei:2", "hlc": {"ms": 17, "logical": 0}, "deleted": false,
             "value_base64": output::encode_base64(b"grain"), "author": "li@hefei"},
            {"version": "beijing:5", "hlc": {"ms": 16, "logical": 0}, "deleted": false,
             "value_base64": output::encode_base64(&[0xff])},
            {"version": "hefei:1", "hlc": {"ms": 9, "logical": 0}, "deleted": true, "value_base64": null},
            {"version": "wuhu:4", "hlc": {"ms": 8, "logical": 0}, "deleted": false, "value_base64": null,
             "value_bytes": 5000000, "value_omitted": true},
            {"version": "wuhu:3", "hlc": {"ms": 7, "logical": 0}, "deleted": false,
             "value_base64": output::encode_base64(b"\x1b[2Jgone")},
        ]});
        let answer: SiblingsBody = serde_json::from_value(answer).expect("siblings");
        let text = render_siblings(&answer).expect("render");
        assert!(
            text.starts_with(
                "sibling 1 of 5 (winner)\n  version: hefei:2\n  hlc:     17.0\n  author:  li@hefei\n"
            ),
            "{text}"
        );
        assert!(text.contains("  author:  (not recorded"), "{text}");
        assert!(text.contains("  value:   grain\n"), "{text}");
        assert!(text.contains("  value (base64): /w==\n"), "{text}");
        assert!(
            text.contains("  deleted: true\n  value:   (none: tombstone)\n"),
            "{text}"
        );
        assert!(
            text.contains("  value:   (left out: 5000000 bytes; print it with --version wuhu:4)\n"),
            "{text}"
        );
        assert!(text.contains("  value:   \"\\u{1b}[2Jgone\"\n"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
