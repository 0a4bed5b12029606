//! Server-rendered SVG (no JavaScript): the province tree of `/cluster` and the per-peer lag
//! sparklines of the status page.
//!
//! The tree is an indented tree from the general office down: one labelled box per node a
//! row, each under its parent; a node's fresh leaf children (townships under a county) are
//! packed beside it as small squares when there are more than [`PACK_MIN`] of them, so a
//! province of a thousand nodes stays a few thousand pixels tall; every node that is not fresh
//! keeps its labelled box with its reason. Every node is a `g.node[data-node][data-state]` with
//! a `<title>` (its state, last report, lag and staleness) shown on hover, and its shape's
//! `fill` is the colour of its state ([`state_color`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use officesync_api::ClusterNode;

use super::web::escape;
use crate::time::{human_bytes, human_duration};

/// Leaf children packed as squares when a node has more fresh leaves than this.
pub const PACK_MIN: usize = 6;
/// Indentation per level, px.
const INDENT: u32 = 24;
/// Deepest level indented further (a deeper node is drawn at this level).
const MAX_INDENT_LEVEL: u32 = 24;
/// A labelled box.
const BOX_W: u32 = 150;
const BOX_H: u32 = 20;
const ROW_H: u32 = 26;
/// A packed square and its pitch.
const CELL: u32 = 11;
const CELL_STEP: u32 = 14;
/// Squares per row of a packed group.
const GRID_COLS: usize = 24;
/// Room for the reason text right of a box.
const REASON_W: u32 = 330;
/// Height of the legend above the tree.
const TOP: u32 = 34;

/// The fill colour of a node state.
pub fn state_color(state: &str) -> &'static str {
    match state {
        "fresh" => "#2e9d4c",
        "behind" => "#f0ad00",
        "refusing" => "#8e44ad",
        "silent" => "#d62728",
        _ => "#888888",
    }
}

/// The text colour on a box of `state`.
fn text_color(state: &str) -> &'static str {
    match state {
        "behind" => "#000000",
        _ => "#ffffff",
    }
}

/// The hover text of a node.
fn title(n: &ClusterNode) -> String {
    let mut t = format!("{}: {}", n.name, n.state);
    if !n.reason.is_empty() {
        let _ = write!(t, " ({})", n.reason);
    }
    match (&n.last_report, n.last_report_age_ms) {
        (Some(at), Some(age)) => {
            let _ = write!(
                t,
                "\nlast report {} ago, at {}",
                human_duration(age / 1000),
                at
            );
        }
        _ => t.push_str("\nno report received"),
    }
    if let Some(parent) = &n.parent {
        let _ = write!(
            t,
            "\nlink to {parent}: {}",
            if n.connected { "up" } else { "down" }
        );
    }
    let _ = write!(t, "\nlag {} versions", n.lag_versions);
    if let Some(ms) = n.staleness_ms {
        let _ = write!(t, "; staleness {}", human_duration(ms / 1000));
    }
    if !n.version.is_empty() {
        let _ = write!(
            t,
            "\n{}, up {}, store {}",
            n.version,
            human_duration(n.uptime_secs),
            human_bytes(n.store_bytes)
        );
    }
    if let Some(b) = &n.last_bad_input {
        let _ = write!(t, "\nlast bad input from {}: {}", b.peer, b.what);
    }
    escape(&t)
}

/// Where each node goes: its parent's index, and whether it is packed as a square.
struct Plan {
    parent: Vec<Option<usize>>,
    packed: Vec<bool>,
    /// Per node, its packed children in order.
    groups: Vec<Vec<usize>>,
}

/// Parents from the tree order, and which fresh leaves are packed.
fn plan(nodes: &[ClusterNode]) -> Plan {
    let mut parent = vec![None; nodes.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut path: Vec<usize> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        path.truncate(n.depth as usize);
        parent[i] = path.last().copied();
        if let Some(p) = parent[i] {
            children[p].push(i);
        }
        path.push(i);
    }
    let mut packed = vec![false; nodes.len()];
    let mut groups = vec![Vec::new(); nodes.len()];
    for (p, kids) in children.iter().enumerate() {
        let fresh_leaves: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|k| children[*k].is_empty() && nodes[*k].state == "fresh")
            .collect();
        if fresh_leaves.len() > PACK_MIN {
            for k in &fresh_leaves {
                packed[*k] = true;
            }
            groups[p] = fresh_leaves;
        }
    }
    Plan {
        parent,
        packed,
        groups,
    }
}

/// The province tree as one `<svg>` element, with a legend of `counts` (nodes per state in
/// the whole province).
pub fn tree(nodes: &[ClusterNode], counts: &BTreeMap<String, u64>) -> String {
    let plan = plan(nodes);
    let mut body = String::with_capacity(nodes.len() * 300 + 1024);
    let mut y_of: Vec<u32> = vec![0; nodes.len()];
    let mut x_of: Vec<u32> = vec![0; nodes.len()];
    let mut y = TOP;
    let mut width = BOX_W + REASON_W;
    for (i, n) in nodes.iter().enumerate() {
        if plan.packed[i] {
            continue;
        }
        let x = 4 + n.depth.min(MAX_INDENT_LEVEL) * INDENT;
        x_of[i] = x;
        y_of[i] = y;
        if let Some(p) = plan.parent[i] {
            // An elbow from the parent's box down and across to this one.
            let px = x_of[p] + 8;
            let _ = write!(
                body,
                "<path class=\"edge\" d=\"M{px} {} V{} H{x}\"/>",
                y_of[p] + BOX_H,
                y + BOX_H / 2
            );
        }
        let state = n.state.as_str();
        let name = escape(&n.name);
        let label: String = n.name.chars().take(20).collect();
        let _ = write!(
            body,
            "<g class=\"node {state}\" data-node=\"{name}\" data-state=\"{state}\">\
             <title>{}</title><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" \
             rx=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>",
            title(n),
            state_color(state),
            x + 6,
            y + 14,
            text_color(state),
            escape(&label),
        );
        let group = &plan.groups[i];
        if state != "fresh" {
            // Right of the box, or of its packed children when it has some.
            let shown = group.len().min(GRID_COLS) as u32;
            let rx = match shown {
                0 => x + BOX_W + 8,
                n => x + BOX_W + 10 + n * CELL_STEP + 6,
            };
            let _ = write!(
                body,
                "<text class=\"reason\" x=\"{rx}\" y=\"{}\">{}: {}</text>",
                y + 14,
                state,
                escape(&n.reason)
            );
            width = width.max(rx + REASON_W);
        }
        body.push_str("</g>");
        let mut height = ROW_H;
        if !group.is_empty() {
            let gx = x + BOX_W + 10;
            for (k, &c) in group.iter().enumerate() {
                let cx = gx + (k % GRID_COLS) as u32 * CELL_STEP;
                let cy = y + 4 + (k / GRID_COLS) as u32 * CELL_STEP;
                let cn = &nodes[c];
                let _ = write!(
                    body,
                    "<g class=\"node fresh\" data-node=\"{}\" data-state=\"fresh\"><title>{}</title>\
                     <rect x=\"{cx}\" y=\"{cy}\" width=\"{CELL}\" height=\"{CELL}\" fill=\"{}\"/></g>",
                    escape(&cn.name),
                    title(cn),
                    state_color("fresh"),
                );
            }
            let rows = group.len().div_ceil(GRID_COLS) as u32;
            height = height.max(rows * CELL_STEP + 8);
            width = width.max(gx + GRID_COLS as u32 * CELL_STEP);
        }
        y += height;
    }
    let mut legend = String::new();
    for (k, state) in officesync_api::NODE_STATES.iter().enumerate() {
        let lx = 4 + k as u32 * 120;
        let _ = write!(
            legend,
            "<g class=\"legend\" data-state=\"{state}\"><rect x=\"{lx}\" y=\"6\" width=\"{CELL}\" \
             height=\"{CELL}\" fill=\"{}\"/><text x=\"{}\" y=\"16\">{state} {}</text></g>",
            state_color(state),
            lx + CELL + 5,
            counts.get(*state).copied().unwrap_or(0)
        );
    }
    let height = y + 8;
    format!(
        "<svg id=\"province\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" \
         font-size=\"12\"><style>.edge{{fill:none;stroke:#999;stroke-width:1}}\
         .reason{{fill:#333}}</style>{legend}{body}</svg>"
    )
}

/// A sparkline of `series` (minutes ago, largest lag), the last hour left to right; `-` when
/// empty.
pub fn sparkline(series: &[(u64, u64)]) -> String {
    const W: u64 = 120;
    const H: u64 = 22;
    if series.is_empty() {
        return "-".to_owned();
    }
    let max = series.iter().map(|(_, l)| *l).max().unwrap_or(0);
    let point = |(ago, lag): &(u64, u64)| {
        let x = W.saturating_sub(2 + ago.min(&59) * 2);
        // With no lag at all (max 0) the line lies on the bottom.
        let y = H - 2 - (lag * (H - 4)).checked_div(max).unwrap_or(0);
        (x, y)
    };
    let points: Vec<String> = series
        .iter()
        .map(|s| {
            let (x, y) = point(s);
            format!("{x},{y}")
        })
        .collect();
    let (lx, ly) = point(&series[series.len() - 1]);
    format!(
        "<svg class=\"spark\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">\
         <title>largest lag per minute over the last hour: up to {max} versions</title>\
         <polyline fill=\"none\" stroke=\"#b00\" stroke-width=\"1.5\" points=\"{}\"/>\
         <circle cx=\"{lx}\" cy=\"{ly}\" r=\"2\" fill=\"#b00\"/></svg>",
        points.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, depth: u32, state: &str) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            depth,
            state: state.into(),
            silent: state == "silent",
            reason: if state == "fresh" {
                String::new()
            } else {
                "last report 12s ago".into()
            },
            ..ClusterNode::default()
        }
    }

    /// A province: the hub, 16 cities, 7 counties each, 9 townships each county (1,137).
    fn province(silent: &str) -> Vec<ClusterNode> {
        let mut nodes = vec![node("general-office", 0, "fresh")];
        for c in 0..16 {
            nodes.push(node(&format!("city-{c}"), 1, "fresh"));
            for k in 0..7 {
                nodes.push(node(&format!("county-{c}-{k}"), 2, "fresh"));
                for t in 0..9 {
                    let name = format!("town-{c}-{k}-{t}");
                    let state = if name == silent { "silent" } else { "fresh" };
                    nodes.push(node(&name, 3, state));
                }
            }
        }
        nodes
    }

    #[test]
    fn a_thousand_nodes_stay_bounded_and_the_silent_one_is_labelled() {
        let nodes = province("town-3-2-5");
        assert!(nodes.len() > 1000);
        let counts = BTreeMap::from([("silent".to_owned(), 1)]);
        let svg = tree(&nodes, &counts);
        assert!(svg.len() < 600 * 1024, "{} bytes", svg.len());
        let height: u32 = svg
            .split("height=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse().ok())
            .expect("height");
        assert!(height < 4000, "{height} px tall");
        // Every node is drawn once, with its state.
        assert_eq!(svg.matches("<g class=\"node ").count(), nodes.len());
        assert!(svg.contains(
            "<g class=\"node silent\" data-node=\"town-3-2-5\" data-state=\"silent\">\
             <title>town-3-2-5: silent (last report 12s ago)"
        ));
        assert!(svg.contains("fill=\"#d62728\""));
        assert!(svg.contains("silent: last report 12s ago</text>"));
        assert!(svg.contains(">silent 1</text>"));
        assert!(!svg.contains("<script"));
    }

    #[test]
    fn few_leaves_get_boxes_and_names_are_escaped() {
        let nodes = vec![
            node("hub", 0, "fresh"),
            node("<b>", 1, "behind"),
            node("t1", 2, "fresh"),
        ];
        let svg = tree(&nodes, &BTreeMap::new());
        assert!(svg.contains("data-node=\"&lt;b&gt;\""), "{svg}");
        assert!(!svg.contains("<b>"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            3 + 4,
            "three boxes, four legend keys"
        );
        assert_eq!(svg.matches("class=\"edge\"").count(), 2);
    }

    #[test]
    fn the_reason_of_a_node_with_packed_children_is_right_of_them() {
        let mut nodes = vec![node("county", 0, "behind")];
        nodes.extend((0..9).map(|t| node(&format!("t{t}"), 1, "fresh")));
        let svg = tree(&nodes, &BTreeMap::new());
        // Box at 4..154, squares from 164, nine of them 14 px apart, then 6 px.
        let squares_end = 4 + BOX_W + 10 + 9 * CELL_STEP;
        assert!(
            svg.contains(&format!("<text class=\"reason\" x=\"{}\"", squares_end + 6)),
            "{svg}"
        );
        assert_eq!(
            svg.matches("width=\"11\" height=\"11\" fill=\"#2e9d4c\"/></g>")
                .count(),
            9
        );
    }

    #[test]
    fn sparklines_scale_to_the_largest_lag() {
        assert_eq!(sparkline(&[]), "-");
        let s = sparkline(&[(59, 0), (30, 10), (0, 5)]);
        assert!(s.contains("points=\"0,20 58,2 118,11\""), "{s}");
        assert!(s.contains("up to 10 versions"));
    }
}
