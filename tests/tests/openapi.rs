//! `GET /v1/openapi.json` from a running daemon, validated with a real OpenAPI validator
//! (`python3 -m openapi_spec_validator`, from the `openapi-spec-validator` package). Without
//! python3 or the package the test prints why and returns; the daemon's own unit tests check
//! the required OpenAPI 3.0 fields and that every route the router serves is described.

use std::process::Command;

use officesync_tests::{Cluster, OutputExt};
use serde_json::Value;

/// True when `python3 -m openapi_spec_validator` can run here.
fn validator_available() -> bool {
    Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_served_openapi_document_passes_openapi_spec_validator() {
    let cluster = Cluster::new();
    let node = cluster.start_node("hefei");
    let reply = node.api().call("GET", "/v1/openapi.json", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc: Value = reply.json();
    assert!(doc["paths"]["/v1/collections/{c}/conflicts"]["get"].is_object());
    if !validator_available() {
        eprintln!(
            "SKIP: python3 with openapi-spec-validator is not installed \
             (pip install openapi-spec-validator); only the daemon's own checks ran"
        );
        return;
    }
    let path = cluster.dir().join("openapi.json");
    std::fs::write(&path, reply.text()).expect("write the document");
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {}",
        out.describe()
    );
    // A broken document is refused, so the check above can fail.
    let mut broken = doc.clone();
    broken["paths"]["/health"]["get"]["responses"] = Value::String("none".into());
    std::fs::write(&path, broken.to_string()).expect("write the broken document");
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("run python3");
    assert!(
        !out.status.success(),
        "a broken document passed: {}",
        out.describe()
    );
}
