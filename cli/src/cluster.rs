//! `cluster`: the province as the asked node (usually the general office) sees it, from every
//! node's status report: the tree as indented text with the nodes that are not fresh marked,
//! or `--json` (the answer of `GET /v1/cluster`).

use clap::Args;
use officesync_api::{ClusterBody, ClusterNode, NODE_STATES};
use ureq::http::Method;

use crate::exit::CliError;
use crate::output::{self, escape_text, print_json, print_text};
use crate::Global;
use officesync_daemon::time::parse_rfc3339_ms;

/// Show the province as a tree from this node's status reports: who is fresh, behind, refusing
/// or silent (admin only; most useful at the general office).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Only the nodes that are not fresh, each with its ancestors (marked as context) so you
    /// see where it is.
    #[arg(long)]
    behind: bool,
}

/// Runs `cluster`.
pub fn run(args: ClusterArgs, global: &Global) -> Result<(), CliError> {
    let path = if args.behind {
        "/v1/cluster?behind=true"
    } else {
        "/v1/cluster"
    };
    let body: ClusterBody = global
        .client()?
        .send(Method::GET, path, None)?
        .check(None)?
        .json()?;
    if global.json {
        return print_json(&body);
    }
    print_text(&render(&body, args.behind))
}

/// The tree as text: a header with the counts, then one line a node, indented by depth.
fn render(body: &ClusterBody, behind: bool) -> String {
    let counts: Vec<String> = NODE_STATES
        .iter()
        .map(|s| format!("{} {s}", body.counts.get(*s).copied().unwrap_or(0)))
        .collect();
    let mut out = format!(
        "province as {} sees it at {}: {}\n",
        escape_text(&body.node),
        body.generated_at,
        counts.join(", ")
    );
    if behind {
        if body.nodes.is_empty() {
            out.push_str("every node is fresh\n");
            return out;
        }
        out.push_str("only the nodes that are not fresh, with their ancestors for context\n");
    }
    for n in &body.nodes {
        out.push_str(&"  ".repeat(n.depth as usize));
        out.push_str(&line(n, behind));
        out.push('\n');
    }
    out
}

/// One node: name, state (upper case when not fresh) and why, lag, staleness, release.
fn line(n: &ClusterNode, behind: bool) -> String {
    let mut l = escape_text(&n.name);
    if n.state == "fresh" {
        l.push_str("  fresh");
        if behind {
            l.push_str(" (context)");
        }
    } else {
        l.push_str("  ");
        l.push_str(&n.state.to_uppercase());
        if !n.reason.is_empty() {
            l.push_str(": ");
            l.push_str(&escape_text(&n.reason));
        }
        if let Some(at) = n.last_report.as_deref().and_then(parse_rfc3339_ms) {
            l.push_str(&format!(
                " (last report at {})",
                output::format_unix((at / 1000) as i64)
            ));
        }
    }
    if n.lag_versions > 0 {
        l.push_str(&format!(", lag {} versions", n.lag_versions));
    }
    // A silent node's staleness is that of its last report: what it is now, nobody knows.
    if let (Some(ms), false) = (n.staleness_ms, n.silent) {
        l.push_str(&format!(", data {} old", output::human_duration(ms / 1000)));
    }
    if !n.version.is_empty() {
        l.push_str(&format!(", {}", escape_text(&n.version)));
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, depth: u32, state: &str) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            depth,
            state: state.into(),
            ..ClusterNode::default()
        }
    }

    #[test]
    fn the_tree_is_indented_and_what_is_not_fresh_is_marked() {
        let mut t2 = node("t2", 2, "silent");
        t2.reason = "last report 14s ago".into();
        t2.last_report = Some("2026-01-01T00:00:00.000Z".into());
        let body = ClusterBody {
            node: "hub".into(),
            generated_at: "2026-01-01T00:00:14.000Z".into(),
            counts: [("fresh", 8), ("silent", 1)]
                .into_iter()
                .map(|(s, n)| (s.to_owned(), n))
                .collect(),
            nodes: vec![node("hub", 0, "fresh"), node("county", 1, "fresh"), t2],
        };
        let text = render(&body, true);
        assert_eq!(
            text,
            "province as hub sees it at 2026-01-01T00:00:14.000Z: 8 fresh, 0 behind, \
             0 refusing, 1 silent\n\
             only the nodes that are not fresh, with their ancestors for context\n\
             hub  fresh (context)\n  county  fresh (context)\n    t2  SILENT: last report 14s \
             ago (last report at 2026-01-01 00:00:00 UTC)\n"
        );
    }
}
