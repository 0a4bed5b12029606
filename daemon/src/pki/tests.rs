//! Tests of the `pki` module.

#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

use super::*;

use std::os::unix::fs::PermissionsExt;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn ca(dir: &Path) -> CaSummary {
    init_ca(dir, false).unwrap()
}

#[test]
fn init_and_issue_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let out = tmp.path().join("hefei");
    let summary = ca(&ca_dir);
    let ca_pem = fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap();
    assert_eq!(summary.fingerprint, ca_fingerprint(&ca_pem).unwrap());
    assert_eq!(summary.serial_hex.len(), 32);
    assert!(summary.not_after - summary.not_before > 3_650 * DAY_SECS);

    let issued = issue("hefei", &ca_dir, &out, &IssueOptions::default()).unwrap();
    assert_eq!(issued.name, "hefei");
    assert!(!issued.admin);
    assert_eq!(issued.ca_fingerprint, summary.fingerprint);
    let days = issued.not_after - issued.not_before - BACKDATE_SECS;
    assert_eq!(days, i64::from(DEFAULT_CERT_DAYS) * DAY_SECS);

    let node_pem = fs::read_to_string(out.join(NODE_CERT_FILE)).unwrap();
    let key_pem = fs::read_to_string(out.join(NODE_KEY_FILE)).unwrap();
    let bundle_ca = fs::read_to_string(out.join(CA_CERT_FILE)).unwrap();
    assert_eq!(bundle_ca, ca_pem);
    verify_chain(&node_pem, &ca_pem, unix_now()).unwrap();
    assert!(key_matches_cert(&key_pem, &node_pem).unwrap());
    let ca_key = fs::read_to_string(ca_dir.join(CA_KEY_FILE)).unwrap();
    assert!(!key_matches_cert(&ca_key, &node_pem).unwrap());
    assert!(key_matches_cert(&ca_key, &ca_pem).unwrap());

    let id = read_identity(&node_pem).unwrap();
    assert_eq!(id.name, "hefei");
    assert!(!id.admin);
    assert_eq!(id.serial_hex, issued.serial_hex);
    assert_eq!(id.serial_hex.len(), 32);
    assert!(id
        .serial_hex
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(load_identity(&out.join(NODE_CERT_FILE)).unwrap(), id);
    assert_eq!(load_cert_ders(&out.join(NODE_CERT_FILE)).unwrap().len(), 1);
    assert!(!load_key_der(&out.join(NODE_KEY_FILE)).unwrap().is_empty());

    // Validity window is enforced.
    assert!(matches!(
        verify_chain(&node_pem, &ca_pem, id.not_after + 10),
        Err(PkiError::NotValidNow { .. })
    ));
    assert!(matches!(
        verify_chain(&node_pem, &ca_pem, id.not_before - 10),
        Err(PkiError::NotValidNow { .. })
    ));
}

#[test]
fn admin_flag_and_distinct_serials() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    ca(&ca_dir);
    let admin = IssueOptions {
        admin: true,
        ..IssueOptions::default()
    };
    let a = issue("general-office", &ca_dir, &tmp.path().join("a"), &admin).unwrap();
    let b = issue(
        "beijing",
        &ca_dir,
        &tmp.path().join("b"),
        &IssueOptions::default(),
    )
    .unwrap();
    assert!(a.admin);
    assert!(!b.admin);
    assert_ne!(a.serial_hex, b.serial_hex);
    let a_pem = fs::read_to_string(&a.cert_path).unwrap();
    let id = read_identity(&a_pem).unwrap();
    assert_eq!(id.name, "general-office");
    assert!(id.admin);
}

#[test]
fn key_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let out = tmp.path().join("out");
    ca(&ca_dir);
    issue("hefei", &ca_dir, &out, &IssueOptions::default()).unwrap();
    assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&out.join(NODE_KEY_FILE)), 0o600);
    assert_eq!(mode(&out.join(NODE_CERT_FILE)), 0o644);
    // Still private after a forced overwrite of a file with a wider mode.
    fs::set_permissions(out.join(NODE_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
    let force = IssueOptions {
        force: true,
        ..IssueOptions::default()
    };
    issue("hefei", &ca_dir, &out, &force).unwrap();
    assert_eq!(mode(&out.join(NODE_KEY_FILE)), 0o600);
}

#[test]
fn overwrite_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let first = ca(&ca_dir);
    let err = init_ca(&ca_dir, false).unwrap_err();
    assert!(matches!(err, PkiError::CaExists { .. }));
    let msg = err.to_string();
    assert!(msg.contains("ca.pem") && msg.contains("--force"), "{msg}");
    assert!(msg.contains("cuts off every office"), "{msg}");
    let second = init_ca(&ca_dir, true).unwrap();
    assert_ne!(first.fingerprint, second.fingerprint);

    let out = tmp.path().join("out");
    issue("hefei", &ca_dir, &out, &IssueOptions::default()).unwrap();
    let before = fs::read_to_string(out.join(NODE_CERT_FILE)).unwrap();
    let err = issue("hefei", &ca_dir, &out, &IssueOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        before,
        fs::read_to_string(out.join(NODE_CERT_FILE)).unwrap()
    );
    // Any one of the three bundle files blocks a new bundle.
    let out2 = tmp.path().join("out2");
    fs::create_dir(&out2).unwrap();
    fs::write(out2.join(CA_CERT_FILE), "x").unwrap();
    let err = issue("hefei", &ca_dir, &out2, &IssueOptions::default()).unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert!(!out2.join(NODE_KEY_FILE).exists());

    let force = IssueOptions {
        force: true,
        ..IssueOptions::default()
    };
    issue("hefei", &ca_dir, &out, &force).unwrap();
    assert_ne!(
        before,
        fs::read_to_string(out.join(NODE_CERT_FILE)).unwrap()
    );
}

#[test]
fn foreign_ca_fails_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let ca1 = tmp.path().join("ca1");
    let ca2 = tmp.path().join("ca2");
    ca(&ca1);
    ca(&ca2);
    let out = tmp.path().join("out");
    issue("hefei", &ca1, &out, &IssueOptions::default()).unwrap();
    let node = fs::read_to_string(out.join(NODE_CERT_FILE)).unwrap();
    let other_ca = fs::read_to_string(ca2.join(CA_CERT_FILE)).unwrap();
    // Same subject DN ("officesync CA"), so the signature check must catch it.
    let err = verify_chain(&node, &other_ca, unix_now()).unwrap_err();
    assert!(matches!(err, PkiError::NotIssuedByCa { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
    // A node certificate is not a CA.
    assert!(matches!(
        verify_chain(&node, &node, unix_now()),
        Err(PkiError::NotCa { .. })
    ));
}

#[test]
fn fingerprint_is_stable_sha256_hex() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = ca(tmp.path());
    let pem = fs::read_to_string(tmp.path().join(CA_CERT_FILE)).unwrap();
    let a = ca_fingerprint(&pem).unwrap();
    let b = ca_fingerprint(&pem).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, summary.fingerprint);
    assert_eq!(a.len(), 64);
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    assert!(matches!(
        ca_fingerprint("not pem"),
        Err(PkiError::NoCertificate { .. })
    ));
}

#[test]
fn invalid_names_and_days_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    ca(&ca_dir);
    for bad in ["Hefei", "", "a_b", "-x"] {
        let err = issue(
            bad,
            &ca_dir,
            &tmp.path().join("o"),
            &IssueOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::InvalidName(_)), "{bad}: {err}");
    }
    assert!(!tmp.path().join("o").exists());
    let zero = IssueOptions {
        days: 0,
        ..IssueOptions::default()
    };
    assert!(matches!(
        issue("hefei", &ca_dir, &tmp.path().join("o"), &zero),
        Err(PkiError::InvalidDays(0))
    ));
}

#[test]
fn missing_ca_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let err = issue(
        "hefei",
        tmp.path(),
        &tmp.path().join("o"),
        &IssueOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::Read { .. }));
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

#[test]
fn explicit_validity_window_is_written_and_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    ca(&ca_dir);
    let now = unix_now();
    let ca_der = load_cert_ders(&ca_dir.join(CA_CERT_FILE))
        .unwrap()
        .remove(0);
    let windows = [
        ("expired", (now - 10 * 86_400, now - 86_400), false),
        ("future", (now + 86_400, now + 10 * 86_400), false),
        ("current", (now - 60, now + 86_400), true),
    ];
    for (name, window, valid_now) in windows {
        let out = tmp.path().join(name);
        let s = issue_with_validity(name, &ca_dir, &out, &IssueOptions::default(), window).unwrap();
        assert_eq!((s.not_before, s.not_after), window, "{name}");
        let leaf = load_cert_ders(&out.join(NODE_CERT_FILE)).unwrap().remove(0);
        let verdict = verify_chain_der(&leaf, &ca_der, now);
        assert_eq!(verdict.is_ok(), valid_now, "{name}: {verdict:?}");
    }
    let empty = issue_with_validity(
        "empty",
        &ca_dir,
        &tmp.path().join("empty"),
        &IssueOptions::default(),
        (now, now),
    );
    assert!(empty.is_err());
}
