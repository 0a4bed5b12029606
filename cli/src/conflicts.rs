//! Conflict commands: `conflicts` lists the keys with siblings, `resolve` writes one value
//! that supersedes every sibling.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use clap::Args;
use officesync_api::{ConflictBody, ConflictsPage, SiblingsBody, WriteBody};
use serde_json::json;
use ureq::http::Method;

use crate::exit::{CliError, Exit};
use crate::output::{self, print_json, print_text};
use crate::records::{missing, print_ack, record_path, ValueSource};
use crate::urlenc::encode_component;
use crate::Global;

/// Keys asked for in one conflicts page.
const PAGE_LIMIT: u64 = 1000;

/// `conflicts COLL [--prefix P] [--limit N]`.
#[derive(Debug, Args)]
pub struct ConflictsArgs {
    /// Collection name.
    pub collection: String,
    /// Only keys starting with this prefix.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// List at most this many keys.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

/// `resolve COLL KEY (--keep VERSION | --value V | --file F)`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("choice").required(true).args(["keep", "value", "file"])))]
pub struct ResolveArgs {
    /// Collection name.
    pub collection: String,
    /// Record key.
    pub key: String,
    /// Keep this sibling (`origin:counter`, as `conflicts` lists it): its value (or its
    /// deletion) is written again as a new version.
    #[arg(long, value_name = "VERSION")]
    pub keep: Option<String>,
    /// Write this value instead (`-` reads stdin).
    #[arg(long, value_name = "V")]
    pub value: Option<OsString>,
    /// Write the value in this file instead (`-` for stdin).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `/v1/collections/{c}/conflicts`, after checking the name is non-empty.
fn conflicts_path(collection: &str) -> Result<String, CliError> {
    if collection.is_empty() {
        return Err(CliError::usage("the collection name must not be empty"));
    }
    Ok(format!(
        "/v1/collections/{}/conflicts",
        encode_component(collection)
    ))
}

/// `conflicts`: follows `next` pages until `--limit` keys or the end.
pub fn conflicts(args: ConflictsArgs, global: &Global) -> Result<(), CliError> {
    let base = conflicts_path(&args.collection)?;
    let client = global.client()?;
    let mut after: Option<String> = None;
    let mut found: Vec<ConflictBody> = Vec::new();
    loop {
        let remaining = args.limit.map(|l| l.saturating_sub(found.len() as u64));
        let mut query = vec![format!(
            "limit={}",
            remaining.unwrap_or(PAGE_LIMIT).min(PAGE_LIMIT)
        )];
        if let Some(prefix) = &args.prefix {
            query.push(format!("prefix={}", encode_component(prefix)));
        }
        if let Some(after) = &after {
            query.push(format!("after={}", encode_component(after)));
        }
        let path = format!("{base}?{}", query.join("&"));
        let ConflictsPage { conflicts, next } =
            client.send(Method::GET, &path, None)?.check(None)?.json()?;
        found.extend(conflicts);
        if args.limit.is_some_and(|l| found.len() as u64 >= l) {
            break;
        }
        match next {
            None => break,
            Some(next) if after.as_deref() == Some(next.as_str()) => {
                return Err(CliError::failure(format!(
                    "officesyncd at {} returned the same conflicts page twice (next = {next:?})",
                    client.addr()
                )))
            }
            Some(next) => after = Some(next),
        }
    }
    if global.json {
        return print_json(&json!({ "conflicts": found }));
    }
    if found.is_empty() {
        eprintln!("no key of {:?} has siblings", args.collection);
        return Ok(());
    }
    print_text(&render(&found))
}

/// The text form: per key a line `KEY<TAB>N siblings`, then one indented line per sibling
/// (the winner first): version, HLC, author, and its size or `deleted`.
fn render(found: &[ConflictBody]) -> String {
    let mut out = String::new();
    for c in found {
        out.push_str(&format!(
            "{}\t{} siblings\n",
            output::escape_text(&c.key),
            c.siblings.len()
        ));
        for (i, s) in c.siblings.iter().enumerate() {
            let what = match (s.deleted, s.value_bytes) {
                (true, _) => "deleted".to_owned(),
                (false, Some(n)) => format!("{n} bytes"),
                (false, None) => "-".to_owned(),
            };
            let author = s.author.as_deref().map_or("-".into(), output::escape_text);
            let winner = if i == 0 { "\twinner" } else { "" };
            out.push_str(&format!(
                "  {}\t{}\t{author}\t{what}{winner}\n",
                output::escape_text(&s.version),
                s.hlc
            ));
        }
    }
    out
}

/// `resolve`: one write (or, keeping a tombstone, one delete) at this node, which supersedes
/// every sibling the node holds at that moment, so the key has one version again once it
/// replicates.
pub fn resolve(args: ResolveArgs, global: &Global) -> Result<(), CliError> {
    let path = record_path(&args.collection, &args.key)?;
    let client = global.client()?;
    let current: SiblingsBody = client
        .send(Method::GET, &format!("{path}?all=true"), None)?
        .check(Some(&missing(&args.collection, &args.key)))?
        .json()?;
    if current.siblings.len() < 2 {
        return Err(CliError::new(
            Exit::Failure,
            format!(
                "key {:?} in collection {:?} has one version only: nothing to resolve",
                args.key, args.collection
            ),
        ));
    }
    let (method, body) = match &args.keep {
        Some(keep) => {
            let Some(chosen) = current.siblings.iter().find(|s| s.version == *keep) else {
                let listed: Vec<&str> = current
                    .siblings
                    .iter()
                    .map(|s| s.version.as_str())
                    .collect();
                return Err(CliError::new(
                    Exit::Failure,
                    format!(
                        "{keep:?} is not a current sibling of {:?}; the siblings are {}",
                        args.key,
                        listed.join(", ")
                    ),
                ));
            };
            if chosen.deleted {
                (Method::DELETE, None)
            } else {
                let value = client
                    .send(
                        Method::GET,
                        &format!("{path}?version={}", encode_component(keep)),
                        None,
                    )?
                    .check(Some(&format!(
                        "sibling {keep} of {:?} was superseded meanwhile; list the conflicts again",
                        args.key
                    )))?
                    .bytes()?;
                (Method::PUT, Some(value))
            }
        }
        None => {
            let source = ValueSource::select(args.value.as_deref(), args.file.as_deref())?;
            (Method::PUT, Some(source.read(&mut io::stdin().lock())?))
        }
    };
    let ack: WriteBody = client
        .send(method, &path, body)?
        .check(Some(&missing(&args.collection, &args.key)))?
        .json()?;
    if !global.json {
        eprintln!(
            "resolved {:?}: the new version supersedes its {} siblings",
            args.key,
            current.siblings.len()
        );
    }
    print_ack(&ack, global.json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_api::{Hlc, SiblingBody};

    fn sibling(version: &str, deleted: bool, author: Option<&str>) -> SiblingBody {
        SiblingBody {
            version: version.into(),
            hlc: Hlc { ms: 5, logical: 1 },
            deleted,
            value_base64: None,
            value_bytes: (!deleted).then_some(3),
            value_omitted: !deleted,
            author: author.map(str::to_owned),
        }
    }

    #[test]
    fn conflicts_render_one_block_per_key_winner_first() {
        let text = render(&[ConflictBody {
            key: "hefei/grain".into(),
            siblings: vec![
                sibling("hefei@1:4", false, Some("li@hefei")),
                sibling("wuhu@2:9", true, None),
            ],
        }]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "hefei/grain\t2 siblings");
        assert!(lines[1].starts_with("  hefei@1:4\t"), "{text}");
        assert!(lines[1].ends_with("li@hefei\t3 bytes\twinner"), "{text}");
        assert!(lines[2].ends_with("-\tdeleted"), "{text}");
    }

    #[test]
    fn an_empty_collection_name_is_a_usage_error() {
        assert_eq!(conflicts_path("").expect_err("empty").exit, Exit::Usage);
        assert_eq!(
            conflicts_path("a b").expect("encoded"),
            "/v1/collections/a%20b/conflicts"
        );
    }
}
