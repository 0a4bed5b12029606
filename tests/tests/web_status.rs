//! The read-only web status page at `/`, loaded in headless Chromium (Debian `chromium`)
//! with Basic credentials (and refused without them)
//! against a running three-node cluster: the hub's page lists both offices as connected
//! peers, their staleness rows and the collections, and keeps refreshing itself; after one
//! office stops, the page (reloaded) shows it as disconnected. Skips when Chromium is missing.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{attr, chromium, is_connected, visible_text, wait_for, Star, BEIJING, HEFEI, HUB};
use officesync_tests::{run_bounded, TestNode};

/// Sessions come up within a few dial attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous bound for the page and the cluster on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);
/// How long one headless Chromium run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The page at `/` of `node` as Chromium's DOM after loading it, signed in with Basic
/// credentials `admin:TOKEN` (the node's admin token) as a staff browser would be.
fn dump_dom(browser: &str, node: &TestNode) -> String {
    let token = node
        .api()
        .token()
        .expect("the node's admin token")
        .to_owned();
    dump_dom_as(browser, node, Some(("admin", &token)))
}

/// The page at `/` of `node` as Chromium's DOM, with `credentials` (user, token) in the URL.
fn dump_dom_as(browser: &str, node: &TestNode, credentials: Option<(&str, &str)>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(match credentials {
        Some((user, token)) => format!("http://{user}:{token}@{}/", node.api_addr()),
        None => format!("http://{}/", node.api_addr()),
    })
    .env("HOME", profile.path());
    let out = run_bounded(cmd, None, BROWSER_TIMEOUT);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    // Refused, Chromium may show its sign-in prompt's blank page: only a page served must be
    // whole.
    assert!(
        out.status.success() && (credentials.is_none() || dom.contains("</html>")),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Rows of the table with id `table`: each row's start tag and its text content.
fn rows<'a>(dom: &'a str, table: &str) -> Vec<(&'a str, String)> {
    let Some(start) = dom.find(&format!("<table id=\"{table}\"")) else {
        return Vec::new();
    };
    let body = &dom[start..];
    let body = &body[..body.find("</table>").unwrap_or(body.len())];
    body.split("<tr")
        .skip(1)
        .filter_map(|row| {
            let end = row.find('>')?;
            let tag = &row[..end];
            Some((tag, visible_text(&row[end + 1..])))
        })
        .collect()
}

/// Peer name to the connected cell's first word (`yes` or `no`) of every `tr.peer` row,
/// checked against the cell's `data-connected`.
fn peer_rows(dom: &str) -> BTreeMap<String, String> {
    rows(dom, "peers")
        .into_iter()
        .filter(|(tag, _)| attr(tag, "class").is_some_and(|c| c.split(' ').any(|c| c == "peer")))
        .filter_map(|(tag, text)| {
            let name = attr(tag, "data-peer")?.to_owned();
            let rest = text.strip_prefix(&name)?.trim_start();
            let shown = rest.split(' ').next().unwrap_or("").to_owned();
            let row = &dom[dom.find(tag)?..];
            let cell = &row[row.find("<td class=\"connected\"")?..];
            assert_eq!(
                attr(cell, "data-connected"),
                Some(shown.as_str()),
                "{name}: {text:?}"
            );
            Some((name, shown))
        })
        .collect()
}

#[test]
fn the_status_page_lists_the_peers_in_a_real_browser() {
    let Some(browser) = chromium() else {
        eprintln!("skipping: chromium is not installed (Debian package `chromium`)");
        return;
    };
    let star = Star::start(CONNECT_TIMEOUT);
    for node in star.all() {
        node.api()
            .put("situation", &format!("{}/page", node.name()), b"{}");
    }
    common::assert_converged(&star.all(), TIMEOUT);

    let dom = dump_dom(browser, &star.hub);
    assert!(
        dom.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "{dom}"
    );
    assert!(
        dom.contains("<span id=\"node\">general-office</span>"),
        "{dom}"
    );
    assert!(!dom.contains("<script"), "no JavaScript: {dom}");
    assert!(
        dom.contains("Signed in as admin (admin)."),
        "the page does not say who is signed in: {dom}"
    );
    // Without credentials the browser gets the 401, not the page.
    let refused = dump_dom_as(browser, &star.hub, None);
    assert!(
        !refused.contains("<span id=\"node\">") && !refused.contains("Signed in"),
        "the page was served without credentials: {refused}"
    );
    let peers = peer_rows(&dom);
    assert_eq!(
        peers,
        BTreeMap::from([
            (BEIJING.to_owned(), "yes".to_owned()),
            (HEFEI.to_owned(), "yes".to_owned()),
        ]),
        "{dom}"
    );
    let staleness: Vec<String> = rows(&dom, "staleness")
        .into_iter()
        .filter_map(|(tag, _)| {
            Some(format!(
                "{}/{}",
                attr(tag, "data-peer")?,
                attr(tag, "data-collection")?
            ))
        })
        .collect();
    // Each office's certificate in `_nodes` syncs like any collection, so it has a row too.
    assert_eq!(
        staleness,
        [
            format!("{BEIJING}/_nodes"),
            format!("{BEIJING}/situation"),
            format!("{HEFEI}/_nodes"),
            format!("{HEFEI}/situation"),
        ],
        "{dom}"
    );
    let collections: Vec<(String, String)> = rows(&dom, "collections")
        .into_iter()
        .filter_map(|(tag, text)| Some((attr(tag, "data-collection")?.to_owned(), text)))
        .collect();
    assert_eq!(collections.len(), 2, "{dom}");
    assert!(collections[0].1.starts_with("_nodes 3 "), "{collections:?}");
    assert!(
        collections[1].1.starts_with("situation 3 "),
        "{collections:?}"
    );

    // An office's page lists the hub it dials.
    let dom = dump_dom(browser, &star.hefei);
    assert_eq!(
        peer_rows(&dom),
        BTreeMap::from([(HUB.to_owned(), "yes".to_owned())])
    );

    // Stop beijing: the hub's page shows it disconnected once the session ends.
    let Star {
        hub,
        beijing,
        hefei,
        ..
    } = &star;
    beijing.stop();
    wait_for("the hub to notice beijing left", TIMEOUT, || {
        (!is_connected(hub, BEIJING))
            .then_some(())
            .ok_or_else(|| "still connected".to_owned())
    });
    let dom = dump_dom(browser, hub);
    let peers = peer_rows(&dom);
    assert_eq!(peers.get(BEIJING).map(String::as_str), Some("no"), "{dom}");
    assert_eq!(peers.get(HEFEI).map(String::as_str), Some("yes"), "{dom}");
    assert!(is_connected(hefei, HUB));
}
