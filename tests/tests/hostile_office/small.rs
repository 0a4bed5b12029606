//! The small ones, against a real daemon and the real CLI: `officesync scan` shows keys that
//! carry terminal escapes escaped (`--json` keeps them exact).

use officesync_tests::Cluster;
use serde_json::Value;

#[test]
fn scan_shows_keys_with_terminal_escapes_escaped_and_json_keeps_them() {
    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    // Set the window title, clear the screen and fake a second line.
    let hostile = "x\u{1b}]0;owned\u{7}\u{1b}[2J\nhefei/fake\tline";
    node.put("situation", hostile, b"v");
    node.put("situation", "plain", b"{\"t\":1}");

    let out = node.cli(&["scan", "situation"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one line per record: {text:?}");
    assert!(
        lines[1].starts_with("\"x\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\nhefei/fake\\tline\"\t"),
        "{text:?}"
    );
    assert!(lines[0].starts_with("plain\t"), "{text:?}");

    let out = node.cli(&["--json", "scan", "situation"]);
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys: Vec<&str> = json["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert_eq!(keys, ["plain", hostile], "--json keeps keys exact");
}
