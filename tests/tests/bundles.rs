//! Offline bundles end to end, as a sysadmin carries them: a general office and an office that
//! has never reached it (its peer address goes nowhere). `bundle want` at the office, `bundle
//! export --for --want` at the hub, `bundle import` at the office: the data is there with the
//! hub's digests; a second import changes nothing; altered copies are refused whole; an
//! incremental bundle carries only the new versions; a collection the office may not read
//! never goes in. Once the link exists the two converge with no duplicate and no gap.

#[allow(dead_code)] // every suite uses part of the shared helpers
mod common;

use std::path::Path;
use std::time::Duration;

use common::{hub_config, siblings, try_status, wait_connected, wait_for, HUB};
use officesync_tests::process::{free_udp_port, loopback};
use officesync_tests::{test_seed, Cluster, OutputExt, TestNode, TestRng};
use serde_json::Value;

const OFFICE: &str = "hefei";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Collections the office may read that the hub writes.
const SHARED: [&str; 3] = ["situation", "documents", "_policy"];

/// Runs `officesync ARGS` at `node`, expecting success; returns stdout.
fn cli_ok(node: &TestNode, args: &[&str]) -> String {
    let out = node.cli(args);
    out.expect_success(&format!("{}: officesync {}", node.name(), args.join(" ")));
    out.stdout_text()
}

/// `--json` output of a successful command.
fn cli_json(node: &TestNode, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = cli_ok(node, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
}

/// Per collection: digest and vector, from the node's status.
fn state(node: &TestNode) -> Value {
    let status = node.status();
    let mut out = serde_json::Map::new();
    if let Some(collections) = status["collections"].as_object() {
        for (name, c) in collections {
            out.insert(
                name.clone(),
                serde_json::json!({"digest": c["digest"], "records": c["records"], "vv": status["vv"][name]}),
            );
        }
    }
    Value::Object(out)
}

fn digest(node: &TestNode, collection: &str) -> Value {
    node.status()["collections"][collection]["digest"].clone()
}

/// Versions per collection that a `bundle export --json` answer says the bundle holds.
fn bundled(export: &Value, collection: &str) -> u64 {
    export["bundle"]["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .find(|c| c["name"] == collection)
        .map_or(0, |c| c["versions"].as_u64().expect("versions"))
}

/// `bundle want` at the office, `bundle export --for office --want` at the hub, into `dir`.
fn carry(hub: &TestNode, office: &TestNode, dir: &Path, name: &str) -> (Value, String) {
    let want = dir.join(format!("{name}.want.json"));
    let bundle = dir.join(format!("{name}.bundle"));
    let want = want.to_str().expect("utf-8");
    let bundle = bundle.to_str().expect("utf-8");
    cli_ok(office, &["bundle", "want", "--output", want]);
    let export = cli_json(
        hub,
        &[
            "bundle", "export", "--for", OFFICE, "--want", want, "--output", bundle,
        ],
    );
    (export, bundle.to_owned())
}

/// The kinds in `node`'s audit log.
fn audit_kinds(node: &TestNode) -> Vec<String> {
    cli_json(node, &["audit"])["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_cut_off_office_is_kept_in_step_by_bundles_then_converges_over_its_link() {
    let seed = test_seed("bundles");
    let mut rng = TestRng::new(seed);
    let cluster = Cluster::new();
    let hub_cfg = hub_config(&cluster);
    let hub = cluster.start(&hub_cfg);
    // The office's link goes nowhere: nothing listens on its peer address.
    let mut office_cfg = cluster.config(OFFICE);
    office_cfg.admins = vec![HUB.to_owned()];
    office_cfg.peers = vec![(HUB.to_owned(), loopback(free_udp_port()).to_string())];
    let office = cluster.start(&office_cfg);
    let dir = cluster.dir().join("carried");
    std::fs::create_dir_all(&dir).expect("mkdir");

    // The hub keeps a collection to itself, and writes while the office is cut off.
    cli_ok(
        &hub,
        &["policy", "set", "secret", "--read", HUB, "--write", HUB],
    );
    for i in 0..20 {
        hub.put(
            "situation",
            &format!("river/{i:02}"),
            format!("{{\"level_m\": {i}}}").as_bytes(),
        );
    }
    hub.put("situation", "river/03", b"{\"level_m\": 33}");
    hub.api().delete("situation", "river/04");
    hub.put("documents", "circular-1", "通知：防汛".as_bytes());
    hub.put("secret", "plan", b"eyes only");
    // The office writes too (its own collection): its want names an origin the hub lacks.
    office.put("reports", "hefei/grain", b"100t");

    // First bundle.
    let (export, first) = carry(&hub, &office, &dir, "first");
    assert_eq!(export["bundle"]["for"], OFFICE, "{export}");
    assert_eq!(bundled(&export, "situation"), 20, "{export}");
    assert_eq!(bundled(&export, "documents"), 1, "{export}");
    assert_eq!(
        bundled(&export, "secret"),
        0,
        "the office may not read it: {export}"
    );
    let report = cli_json(&office, &["bundle", "import", &first]);
    assert_eq!(report["applied"], report["versions"], "{report}");
    for c in SHARED {
        assert_eq!(digest(&office, c), digest(&hub, c), "{c} after the import");
    }
    assert_eq!(
        office.get("situation", "river/03").expect("imported").value,
        b"{\"level_m\": 33}"
    );
    assert!(
        office.get("situation", "river/04").is_none(),
        "deleted at the hub"
    );
    // The bundle brought the policy too: the office refuses to serve what it may not read.
    let reply = office
        .api()
        .call("GET", "/v1/collections/secret/records/plan", None);
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(state(&office).get("secret").is_none(), "{}", state(&office));
    let text = cli_ok(&office, &["get", "documents", "circular-1"]);
    assert_eq!(text, "通知：防汛");

    // Twice: nothing changes.
    let before = state(&office);
    let again = cli_json(&office, &["bundle", "import", &first]);
    assert_eq!(again["applied"], 0, "{again}");
    assert_eq!(state(&office), before, "a second import changed something");

    // More writes at the hub; the next bundle carries only them.
    let fresh = 7;
    for i in 0..fresh {
        hub.put("situation", &format!("flood/{i}"), b"{\"alert\": 2}");
    }
    let (export, second) = carry(&hub, &office, &dir, "second");
    assert_eq!(export["bundle"]["incremental"], true, "{export}");
    assert_eq!(bundled(&export, "situation"), fresh, "{export}");
    assert_eq!(export["bundle"]["versions"], fresh, "{export}");

    // Altered copies (one byte each, anywhere) are refused whole: nothing of them is applied.
    let bytes = std::fs::read(&second).expect("bundle");
    let before = state(&office);
    eprintln!("seed {seed}: altering {} bytes", bytes.len());
    for n in 0..6 {
        let at = rng.range(0, bytes.len() as u64) as usize;
        let mut altered = bytes.clone();
        altered[at] ^= 1 << rng.range(0, 8);
        let path = dir.join(format!("altered-{n}.bundle"));
        std::fs::write(&path, &altered).expect("write");
        let out = office.cli(&["bundle", "import", path.to_str().expect("utf-8")]);
        assert!(
            matches!(out.code(), Some(2 | 6)),
            "byte {at} altered: {}",
            out.describe()
        );
        assert!(out.stderr_text().contains("bundle"), "{}", out.describe());
    }
    assert_eq!(
        state(&office),
        before,
        "an altered bundle applied something"
    );
    assert!(office.get("situation", "flood/0").is_none());
    let report = cli_json(&office, &["bundle", "import", &second]);
    assert_eq!(report["applied"], fresh, "{report}");
    for c in SHARED {
        assert_eq!(
            digest(&office, c),
            digest(&hub, c),
            "{c} after the second import"
        );
    }
    let kinds = audit_kinds(&office);
    assert!(kinds.iter().any(|k| k == "bundle_import"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "bundle_refused"), "{kinds:?}");
    assert!(audit_kinds(&hub).iter().any(|k| k == "bundle_export"));

    // A bundle made for another node is refused (exit 6, forbidden).
    let other = dir.join("other.bundle");
    cli_ok(
        &hub,
        &[
            "bundle",
            "export",
            "--for",
            "beijing-office",
            "--output",
            other.to_str().expect("utf-8"),
        ],
    );
    office
        .cli(&["bundle", "import", other.to_str().expect("utf-8")])
        .expect_code(6, "a bundle for beijing-office");

    // The link comes back: both converge, with no duplicate sibling and nothing lost.
    hub.put("situation", "after/hub", b"1");
    office.put("situation", "after/office", b"2");
    office_cfg.peers = vec![(HUB.to_owned(), hub_cfg.sync_listen.to_string())];
    office_cfg.write();
    office.restart();
    wait_connected(&[(&office, HUB), (&hub, OFFICE)], CONNECT_TIMEOUT);
    wait_for(
        "the shared collections to converge",
        CONVERGE_TIMEOUT,
        || {
            let (h, o) = (try_status(&hub), try_status(&office));
            let (Some(h), Some(o)) = (h, o) else {
                return Err("no status".into());
            };
            for c in SHARED.iter().chain(&["_nodes", "reports"]) {
                let (hd, od) = (
                    &h["collections"][c]["digest"],
                    &o["collections"][c]["digest"],
                );
                if hd != od || h["vv"][c] != o["vv"][c] {
                    return Err(format!(
                        "{c}: hub {hd} {} vs office {od} {}",
                        h["vv"][c], o["vv"][c]
                    ));
                }
            }
            Ok(())
        },
    );
    for node in [&hub, &office] {
        for entry in node.api().scan("situation", "") {
            let all = siblings(node, "situation", &entry.key);
            assert_eq!(
                all.len(),
                1,
                "{}: {} has siblings {all:?}",
                node.name(),
                entry.key
            );
        }
        assert!(
            node.get("situation", "after/hub").is_some(),
            "{}",
            node.name()
        );
        assert!(
            node.get("situation", "after/office").is_some(),
            "{}",
            node.name()
        );
        assert!(
            node.get("reports", "hefei/grain").is_some(),
            "{}",
            node.name()
        );
    }
    assert!(
        office.status()["collections"].get("secret").is_none(),
        "the secret collection reached the office"
    );
}
