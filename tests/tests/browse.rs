//! The read-only browse pages at `/browse`, loaded in headless Chromium (Debian `chromium`)
//! with Basic credentials as staff would: the collection list, a collection searched by
//! prefix and `where` (answered from an index), and a record with its siblings; a screenshot
//! goes to `/tmp/browse.png`. Without credentials the browser gets a 401; a reader limited to
//! one collection sees only that one and gets a 403, without any record, for another. Skips
//! when Chromium is missing.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::process::Command;
use std::time::Duration;

use common::{attr, chromium, visible_text};
use officesync_tests::http::encode;
use officesync_tests::{run_bounded, Cluster, OutputExt, TestNode};

/// How long one headless Chromium run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs Chromium headless on `path` of `node` signed in as `credentials`, with `action`
/// (`--dump-dom` or `--screenshot=FILE`); returns its standard output.
fn chromium_run(
    browser: &str,
    node: &TestNode,
    credentials: Option<(&str, &str)>,
    path: &str,
    action: &str,
) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1280,900",
        action,
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(match credentials {
        Some((user, token)) => format!("http://{user}:{token}@{}{path}", node.api_addr()),
        None => format!("http://{}{path}", node.api_addr()),
    })
    .env("HOME", profile.path());
    let out = run_bounded(cmd, None, BROWSER_TIMEOUT);
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The start tags of the rows of class `class`, each with its text content.
fn rows<'a>(dom: &'a str, class: &str) -> Vec<(&'a str, String)> {
    dom.split("<tr")
        .skip(1)
        .filter_map(|row| {
            let end = row.find('>')?;
            let tag = &row[..end];
            if !tag.contains(&format!("class=\"{class}\"")) {
                return None;
            }
            let body = &row[end + 1..row.find("</tr>").unwrap_or(row.len())];
            Some((tag, visible_text(body)))
        })
        .collect()
}

#[test]
fn staff_browse_collections_search_and_open_records_in_a_real_browser() {
    let Some(browser) = chromium() else {
        eprintln!("skipping: chromium is not installed (Debian package `chromium`)");
        return;
    };
    let cluster = Cluster::new();
    let mut config = cluster.config("hefei");
    config.extra_toml = "[indexes]\nsituation = [\"/river\", \"/level_m\"]\n".into();
    let node = cluster.start(&config);
    for (key, value) in [
        ("hefei/chao", &br#"{"river":"Chao","level_m":4}"#[..]),
        ("hefei/huai", br#"{"river":"Huai","level_m":9.2}"#),
        (
            "hefei/nanfei",
            br#"{"river":"Nanfei","level_m":7.5,"note":"<b>rising</b>"}"#,
        ),
        ("bengbu/huai", br#"{"river":"Huai","level_m":8.1}"#),
        ("hefei/photo", &[0xff, 0xd8, 0xff, 0xe0, 0x00]),
    ] {
        node.put("situation", key, value);
    }
    node.put("letters", "secret", b"for the director only");
    let admin = node.api().token().expect("admin token").to_owned();
    let add = node.cli(&[
        "user",
        "add",
        "li",
        "--role",
        "reader",
        "--collections",
        "situation",
    ]);
    add.expect_success("user add");
    let li = add.stdout_text().trim().to_owned();

    // The collection list: the reader sees only what it may read.
    let dom = chromium_run(browser, &node, Some(("li", &li)), "/browse", "--dump-dom");
    let listed: Vec<&str> = rows(&dom, "collection")
        .iter()
        .filter_map(|(tag, _)| attr(tag, "data-collection"))
        .collect();
    assert_eq!(listed, ["situation"], "{dom}");
    assert!(dom.contains("Signed in as li (reader)."), "{dom}");
    assert!(!dom.contains("<script"), "no JavaScript: {dom}");
    let dom = chromium_run(
        browser,
        &node,
        Some(("admin", &admin)),
        "/browse",
        "--dump-dom",
    );
    let listed: Vec<&str> = rows(&dom, "collection")
        .iter()
        .filter_map(|(tag, _)| attr(tag, "data-collection"))
        .collect();
    assert!(
        listed.contains(&"letters") && listed.contains(&"situation"),
        "{dom}"
    );

    // A search by prefix and where (the river is indexed), values escaped.
    let search = format!(
        "/browse/situation?prefix=hefei%2F&where={}",
        encode("/level_m>=7\n/river!=\"Chao\"", false)
    );
    let dom = chromium_run(browser, &node, Some(("li", &li)), &search, "--dump-dom");
    let found: Vec<(String, String)> = rows(&dom, "record")
        .into_iter()
        .filter_map(|(tag, text)| Some((attr(tag, "data-key")?.to_owned(), text)))
        .collect();
    let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    // From the index on /level_m, a range alone: in the order of the level.
    assert_eq!(keys, ["hefei/nanfei", "hefei/huai"], "{dom}");
    assert!(dom.contains("&lt;b&gt;rising&lt;/b&gt;"), "{found:?}");
    assert!(
        !dom.contains("<b>rising</b>"),
        "a value is shown as text: {dom}"
    );
    assert!(dom.contains("<textarea name=\"where\""), "{dom}");
    chromium_run(
        browser,
        &node,
        Some(("li", &li)),
        &search,
        "--screenshot=/tmp/browse.png",
    );
    // A malformed expression: the page says what is wrong.
    let bad = format!("/browse/situation?where={}", encode("/river=Huai", false));
    let dom = chromium_run(browser, &node, Some(("li", &li)), &bad, "--dump-dom");
    assert!(
        dom.contains("id=\"error\"") && dom.contains("not JSON"),
        "{dom}"
    );

    // A record with its siblings; a value that is not text shows its size.
    let dom = chromium_run(
        browser,
        &node,
        Some(("li", &li)),
        "/browse/situation/record?key=hefei%2Fnanfei",
        "--dump-dom",
    );
    let siblings = rows(&dom, "sibling");
    assert_eq!(siblings.len(), 1, "{dom}");
    assert!(siblings[0].1.contains("admin@hefei"), "{siblings:?}");
    assert!(dom.contains("id=\"history\""), "{dom}");
    // A key written twice: History lists the current version and the one it superseded.
    node.put("situation", "notes/flood", b"first draft");
    node.put("situation", "notes/flood", b"final text");
    let dom = chromium_run(
        browser,
        &node,
        Some(("li", &li)),
        "/browse/situation/record?key=notes%2Fflood",
        "--dump-dom",
    );
    let superseded = rows(&dom, "superseded");
    assert_eq!(superseded.len(), 1, "{dom}");
    assert!(superseded[0].1.contains("first draft"), "{superseded:?}");
    assert_eq!(rows(&dom, "sibling").len(), 1, "{dom}");
    let current = rows(&dom, "current");
    assert_eq!(current.len(), 1, "{dom}");
    assert!(current[0].1.contains("final text"), "{current:?}");
    let dom = chromium_run(
        browser,
        &node,
        Some(("li", &li)),
        "/browse/situation/record?key=hefei%2Fphoto",
        "--dump-dom",
    );
    assert!(dom.contains("5 bytes, not text"), "{dom}");

    // Without credentials: 401 and nothing shown; a forbidden collection: 403, no record.
    let refused = chromium_run(browser, &node, None, "/browse", "--dump-dom");
    assert!(!refused.contains("data-collection"), "{refused}");
    for path in ["/browse", "/browse/situation", "/browse/letters"] {
        let reply = node.api().with_token(None).call("GET", path, None);
        assert_eq!(reply.status, 401, "{path}");
    }
    let reader = node.api().with_token(Some(li.clone()));
    for path in ["/browse/letters", "/browse/letters/record?key=secret"] {
        let reply = reader.call("GET", path, None);
        assert_eq!(reply.status, 403, "{path}: {}", reply.text());
        assert!(!reply.text().contains("director"), "{}", reply.text());
    }
    let dom = chromium_run(
        browser,
        &node,
        Some(("li", &li)),
        "/browse/letters",
        "--dump-dom",
    );
    assert!(!dom.contains("director"), "{dom}");
}
