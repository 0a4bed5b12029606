//! `search COLL QUERY`: full-text search of a collection the node indexes (`[search]`).

use clap::Args;
use officesync_api::{SearchHit, SearchResults};
use ureq::http::Method;

use crate::exit::CliError;
use crate::output::{self, print_json, print_text};
use crate::urlenc::encode_component;
use crate::Global;

/// `search COLL QUERY [--limit N]`.
#[derive(Debug, Args)]
#[command(
    after_help = "QUERY is words to find, Chinese or English (all of them must match); \
    \"a phrase\" in quotes, OR between alternatives, -word to exclude. Prints one line per \
    hit: key, score and the snippet with the matched words in [brackets]; --json prints \
    {\"hits\": [{\"key\", \"version\", \"score\", \"snippet\"}], \"total\"} with the snippet \
    as HTML (matches in <mark>)."
)]
pub struct SearchArgs {
    /// Collection name (one listed in the node's [search] collections).
    pub collection: String,
    /// What to search for.
    pub query: String,
    /// Print at most this many hits, best first (1-100).
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=100))]
    pub limit: u64,
}

/// `search`: one request; the hits on stdout, the count on stderr.
pub fn search(args: SearchArgs, global: &Global) -> Result<(), CliError> {
    if args.collection.is_empty() {
        return Err(CliError::usage("the collection name must not be empty"));
    }
    let path = format!(
        "/v1/collections/{}/search?q={}&limit={}",
        encode_component(&args.collection),
        encode_component(&args.query),
        args.limit
    );
    let client = global.client()?;
    let results: SearchResults = client.send(Method::GET, &path, None)?.check(None)?.json()?;
    if global.json {
        return print_json(&results);
    }
    eprintln!(
        "{} of {} matching records in {:?}",
        results.hits.len(),
        results.total,
        args.collection
    );
    print_text(&render(&results.hits))
}

/// One line per hit: `KEY<TAB>SCORE<TAB>SNIPPET`, the snippet on one line with its matches
/// in brackets.
fn render(hits: &[SearchHit]) -> String {
    hits.iter()
        .map(|h| {
            format!(
                "{}\t{:.2}\t{}\n",
                output::escape_text(&h.key),
                h.score,
                output::escape_message(&plain_snippet(&h.snippet))
            )
        })
        .collect()
}

/// The daemon's HTML snippet as plain text on one line: `<mark>` and `</mark>` become `[`
/// and `]`, entities are decoded, line breaks and tabs become spaces.
fn plain_snippet(html: &str) -> String {
    let text = html
        .replace("<mark>", "[")
        .replace("</mark>", "]")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split(['\n', '\r', '\t'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_print_on_one_line_with_brackets() {
        assert_eq!(
            plain_snippet("各地要做好<mark>防汛</mark>工作\nA &amp; B &lt;x&gt;"),
            "各地要做好[防汛]工作 A & B <x>"
        );
        let text = render(&[SearchHit {
            key: "docs/1".into(),
            version: "hefei@1:2".into(),
            score: 1.234,
            snippet: "<mark>flood</mark>\twarning".into(),
        }]);
        assert_eq!(text, "docs/1\t1.23\t[flood] warning\n");
    }
}
