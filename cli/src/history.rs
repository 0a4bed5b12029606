//! `history COLL KEY`: the versions of a key this node holds, newest first, superseded ones
//! included (as many as the node's `[storage] history` keeps).

use clap::Args;
use officesync_api::{HistoryBody, HistoryVersion};
use ureq::http::Method;

use crate::exit::CliError;
use crate::output::{self, print_json, print_text};
use crate::records::{missing, record_path};
use crate::Global;

/// Versions listed without `--limit`.
const DEFAULT_LIMIT: u64 = 20;
/// Most versions one answer lists (the daemon's bound: 100 kept plus 32 siblings).
const MAX_LIMIT: u64 = 132;

/// `history COLL KEY [--limit N]`.
#[derive(Debug, Args)]
#[command(
    after_help = "History is what this node holds: a version superseded at another office \
                        before it reached this node is not listed. The node keeps [storage] \
                        history superseded versions per key (default 10)."
)]
pub struct HistoryArgs {
    /// Collection name.
    pub collection: String,
    /// Record key.
    pub key: String,
    /// List at most this many versions, newest first (current ones included) [default: 20].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT))]
    pub limit: Option<u64>,
}

/// `history`: one line per version, newest first; `--json` prints the daemon's answer.
pub fn run(args: HistoryArgs, global: &Global) -> Result<(), CliError> {
    let path = record_path(&args.collection, &args.key)?;
    let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
    let client = global.client()?;
    let answer: HistoryBody = client
        .send(Method::GET, &format!("{path}?history={limit}"), None)?
        .check(Some(&missing(&args.collection, &args.key)))?
        .json()?;
    if global.json {
        return print_json(&answer);
    }
    eprintln!(
        "{} (this node keeps {} superseded versions per key)",
        answer.note, answer.kept_per_key
    );
    print_text(render(&answer.versions).trim_end())
}

/// The text form: per version `VERSION<TAB>HLC<TAB>AUTHOR<TAB>STATE<TAB>VALUE`, where STATE is
/// `current` or `superseded` and VALUE the value when it prints on one line, else its size,
/// or `deleted`.
fn render(versions: &[HistoryVersion]) -> String {
    let mut out = String::new();
    for v in versions {
        let author = v.author.as_deref().map_or("-".into(), output::escape_text);
        let state = if v.superseded {
            "superseded"
        } else {
            "current"
        };
        let value = match (&v.value_base64, v.deleted) {
            (_, true) => "deleted".to_owned(),
            (Some(b64), false) => match output::decode_base64(b64) {
                Ok(bytes) => output::value_inline(&bytes),
                Err(_) => "<undecodable value>".to_owned(),
            },
            (None, false) => format!("<{} bytes>", v.value_bytes.unwrap_or(0)),
        };
        out.push_str(&format!(
            "{}\t{}\t{author}\t{state}\t{value}\n",
            output::escape_text(&v.version),
            v.hlc
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_api::Hlc;

    #[test]
    fn one_line_per_version_with_state_and_value() {
        let v = |version: &str, superseded: bool, value: Option<&str>| HistoryVersion {
            version: version.into(),
            author: Some("li@hefei".into()),
            hlc: Hlc { ms: 7, logical: 0 },
            deleted: value.is_none(),
            superseded,
            value_base64: value.map(|t| output::encode_base64(t.as_bytes())),
            value_bytes: value.map(|t| t.len() as u64),
            value_omitted: false,
        };
        let text = render(&[v("h@1:3", false, Some("90t")), v("h@1:2", true, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "h@1:3\t7.0\tli@hefei\tcurrent\t90t",
                "h@1:2\t7.0\tli@hefei\tsuperseded\tdeleted"
            ]
        );
    }
}
