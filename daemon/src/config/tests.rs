//! Tests of the `config` module.

#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

use super::*;

use crate::pki::{init_ca, issue, IssueOptions};

const ORIGIN: &str = "/etc/officesync/node.toml";

const DESIGN_EXAMPLE: &str = r#"
[node]
name = "hefei"                      # must equal the name in node.pem
data_dir = "/var/lib/officesync"
[sync]
listen = "0.0.0.0:7400"             # QUIC over UDP
peers = [{ name = "general-office", addr = "gov.example.cn:7400" }]  # who this node dials
[tls]
ca = "/etc/officesync/ca.pem"
cert = "/etc/officesync/node.pem"
key = "/etc/officesync/node.key"
[api]
listen = "127.0.0.1:7480"
[storage]
durability = "sync"                 # or "periodic"
[cluster]
admins = ["general-office"]         # may write _policy and relay for others
"#;

const MINIMAL: &str = "[node]\nname = \"hefei\"\ndata_dir = \"/var/lib/officesync\"\n\
    [tls]\nca = \"/t/ca.pem\"\ncert = \"/t/node.pem\"\nkey = \"/t/node.key\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(ORIGIN))
}

/// The error's one line, checked to be one line naming the file.
fn line(err: &ConfigError) -> String {
    let msg = err.to_string();
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "multi-line: {msg:?}"
    );
    assert!(msg.starts_with("config "), "{msg}");
    assert!(msg.contains("(fix: "), "{msg}");
    // A broken string continuation leaves a run of indentation in the line.
    assert!(!msg.contains("   "), "a run of spaces: {msg:?}");
    msg
}

fn parse_err(text: &str) -> (String, Option<String>) {
    let err = parse(text).unwrap_err();
    (line(&err), err.key().map(str::to_owned))
}

/// A bundle for `name` (admin when `admin`) in `dir/name`, from the CA in `dir/ca`.
fn bundle(dir: &Path, name: &str) -> PathBuf {
    let ca = dir.join("ca");
    if !ca.join(pki::CA_CERT_FILE).exists() {
        init_ca(&ca, false).unwrap();
    }
    let out = dir.join(name);
    issue(name, &ca, &out, &IssueOptions::default()).unwrap();
    out
}

#[test]
fn design_example_parses() {
    let config = parse(DESIGN_EXAMPLE).unwrap();
    assert_eq!(config.node.name, "hefei");
    assert_eq!(config.node.data_dir, Path::new("/var/lib/officesync"));
    assert_eq!(config.sync.listen, DEFAULT_SYNC_LISTEN);
    assert_eq!(
        config.sync.peers,
        vec![PeerConfig {
            name: "general-office".into(),
            addr: "gov.example.cn:7400".into()
        }]
    );
    assert_eq!(config.tls.key, Path::new("/etc/officesync/node.key"));
    assert_eq!(config.api.listen, DEFAULT_API_LISTEN);
    assert_eq!(config.storage.durability, Durability::Sync);
    assert_eq!(config.cluster.admins, vec!["general-office".to_owned()]);
    assert_eq!(config.origin, Path::new(ORIGIN));
}

#[test]
fn defaults_apply() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.sync, SyncConfig::default());
    assert_eq!(config.sync.listen.to_string(), "0.0.0.0:7400");
    assert!(config.sync.peers.is_empty());
    assert_eq!(config.sync.max_clock_skew_ms, 300_000);
    assert_eq!(config.sync.heartbeat_interval_ms, 5_000);
    assert_eq!(config.api.listen.to_string(), "127.0.0.1:7480");
    assert_eq!(config.storage.durability, Durability::Sync);
    assert_eq!(config.storage.flush_interval_ms, 100);
    assert_eq!(config.storage.max_value_bytes, 4 * 1024 * 1024);
    assert_eq!(config.storage.history, 10);
    assert_eq!(
        config.storage.tombstone_ttl_ms, None,
        "tombstones are kept by default"
    );
    assert_eq!(config.storage.purge_interval_ms, 60_000);
    assert_eq!(config.api.max_feeds, 1000);
    assert!(config.cluster.admins.is_empty());
    // A present section with some keys still defaults the others.
    let config = parse(&format!("{MINIMAL}[storage]\ndurability = \"periodic\"\n")).unwrap();
    assert_eq!(config.storage.durability, Durability::Periodic);
    assert_eq!(config.storage.flush_interval_ms, 100);
}

#[test]
fn unknown_key_in_each_section() {
    for section in TOP_SECTIONS {
        let header = format!("[{section}]\n");
        let text = DESIGN_EXAMPLE.replace(&header, &format!("{header}bogus_key = 1\n"));
        let (msg, key) = parse_err(&text);
        assert!(msg.contains("bogus_key"), "{msg}");
        assert!(msg.contains(&format!("[{section}]")), "{msg}");
        assert!(msg.contains("line "), "{msg}");
        assert_eq!(key.as_deref(), Some(&*format!("{section}.bogus_key")));
    }
    let (msg, key) = parse_err(&format!("{MINIMAL}[bogus]\nx = 1\n"));
    assert!(msg.contains("unknown section [bogus]"), "{msg}");
    assert_eq!(key.as_deref(), Some("bogus"));

    let text = format!("{MINIMAL}[sync]\npeers = [{{ name = \"a\", adr = \"b:1\" }}]\n");
    let (msg, key) = parse_err(&text);
    assert!(msg.contains("`adr`") && msg.contains("sync.peers"), "{msg}");
    assert_eq!(key.as_deref(), Some("sync.peers.adr"));

    let typo = "[node]\nnmae = \"hefei\"\ndata_dir = \"/d\"\n";
    let (msg, key) = parse_err(typo);
    assert_eq!(
        msg,
        "config /etc/officesync/node.toml line 2: unknown field `nmae` in [node], \
         expected `name` or `data_dir` (fix: correct or remove that key)"
    );
    assert_eq!(key.as_deref(), Some("node.nmae"));
}

#[test]
fn missing_keys() {
    let (msg, key) =
        parse_err("[node]\ndata_dir = \"/d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n");
    assert!(
        msg.contains("line 1: missing field `name` in [node]"),
        "{msg}"
    );
    assert_eq!(key.as_deref(), Some("node.name"));

    let (msg, key) = parse_err("[node]\nname = \"hefei\"\ndata_dir = \"/d\"\n");
    assert!(msg.contains("missing section [tls]"), "{msg}");
    assert_eq!(key.as_deref(), Some("tls"));

    let (msg, key) = parse_err(&format!(
        "{MINIMAL}[sync]\npeers = [\n  {{ name = \"a\" }},\n]\n"
    ));
    assert!(msg.contains("missing field `addr`"), "{msg}");
    assert_eq!(key.as_deref(), Some("sync.peers.addr"));
}

#[test]
fn bad_values() {
    let (msg, key) = parse_err(&format!("{MINIMAL}[storage]\ndurability = \"fast\"\n"));
    assert!(
        msg.contains("storage.durability") && msg.contains("`fast`"),
        "{msg}"
    );
    assert!(
        msg.contains("`sync`") && msg.contains("`periodic`"),
        "{msg}"
    );
    assert_eq!(key.as_deref(), Some("storage.durability"));

    let (msg, key) = parse_err(&format!("{MINIMAL}[api]\nlisten = \"localhost\"\n"));
    assert!(msg.contains("api.listen"), "{msg}");
    assert_eq!(key.as_deref(), Some("api.listen"));

    let (msg, key) = parse_err("[node]\nname = 5\n");
    assert!(msg.contains("node.name") && msg.contains("line 2"), "{msg}");
    assert_eq!(key.as_deref(), Some("node.name"));

    let (msg, _) = parse_err("[node\nname = 5\n");
    assert!(msg.contains("line 1"), "{msg}");
    let (msg, _) = parse_err(&format!("{MINIMAL}[node]\nname = \"x\"\n"));
    assert!(msg.contains("duplicate") && msg.contains("line 8"), "{msg}");
}

#[test]
fn invalid_node_name() {
    let err = parse(&MINIMAL.replace("\"hefei\"", "\"Hefei\"")).unwrap_err();
    let msg = line(&err);
    assert!(
        msg.starts_with("config /etc/officesync/node.toml: node.name = \"Hefei\" is invalid: "),
        "{msg}"
    );
    assert_eq!(err.key(), Some("node.name"));
}

#[test]
fn value_checks() {
    let base = || Config::builder("hefei", "/d", "/t").origin(ORIGIN);
    let cases: Vec<(Config, &str)> = vec![
        (base().peer("Bad", "a:1").build(), "sync.peers[0].name"),
        (
            base().peer("a", "x:1").peer("a", "y:1").build(),
            "sync.peers[1].name",
        ),
        (base().peer("hefei", "x:1").build(), "sync.peers[0].name"),
        (
            base().peer("a", "gov.example.cn").build(),
            "sync.peers[0].addr",
        ),
        (
            base().peer("a", "gov.example.cn:http").build(),
            "sync.peers[0].addr",
        ),
        (base().peer("a", ":7400").build(), "sync.peers[0].addr"),
        (base().peer("a", "::1:7400").build(), "sync.peers[0].addr"),
        (
            base().admins(["general_office"]).build(),
            "cluster.admins[0]",
        ),
        (
            base()
                .durability(Durability::Periodic)
                .flush_interval_ms(0)
                .build(),
            "storage.flush_interval_ms",
        ),
        (
            base()
                .durability(Durability::Periodic)
                .flush_interval_ms(60_001)
                .build(),
            "storage.flush_interval_ms",
        ),
        (base().max_value_bytes(0).build(), "storage.max_value_bytes"),
        (base().history(MAX_HISTORY + 1).build(), "storage.history"),
        (
            base().tombstone_ttl_ms(999).build(),
            "storage.tombstone_ttl_ms",
        ),
        (
            base().purge_interval_ms(99).build(),
            "storage.purge_interval_ms",
        ),
        (base().max_feeds(0).build(), "api.max_feeds"),
        (base().feed_cutoff_ms(99).build(), "api.feed_cutoff_ms"),
        (
            base().max_value_bytes(MAX_VALUE_BYTES_LIMIT + 1).build(),
            "storage.max_value_bytes",
        ),
        (
            base().max_clock_skew_ms(999).build(),
            "sync.max_clock_skew_ms",
        ),
        (Config::builder("hefei", "", "/t").build(), "node.data_dir"),
    ];
    for (config, key) in cases {
        let err = config.validate_syntax().unwrap_err();
        let msg = line(&err);
        assert_eq!(err.key(), Some(key), "{msg}");
        assert!(msg.contains(key), "{msg}");
    }
    let ok = base()
        .peer("general-office", "gov.example.cn:7400")
        .peer("b", "[2001:db8::1]:7400")
        .peer("c", "10.0.0.1:7400")
        .admins(["general-office"])
        .durability(Durability::Periodic)
        .max_value_bytes(MAX_VALUE_BYTES_LIMIT)
        .history(0)
        .max_feeds(*MAX_FEEDS_RANGE.end())
        .build();
    ok.validate_syntax().unwrap();
}

#[test]
fn valid_bundle_passes_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = bundle(tmp.path(), "hefei");
    let config = Config::builder("hefei", tmp.path().join("data"), &tls)
        .api_listen("127.0.0.1:0".parse().unwrap())
        .sync_listen("127.0.0.1:0".parse().unwrap())
        .peer("general-office", "127.0.0.1:7400")
        .admins(["general-office"])
        .durability(Durability::Periodic)
        .max_value_bytes(1024)
        .history(3)
        .report_interval_ms(2_500)
        .build();
    config.validate().unwrap();

    let path = tmp.path().join("node.toml");
    std::fs::write(&path, config.to_toml_string()).unwrap();
    let loaded = Config::load(&path).unwrap();
    assert_eq!(loaded.origin, path);
    assert_eq!(
        Config {
            origin: PathBuf::new(),
            ..loaded
        },
        config
    );
}

#[test]
fn relative_paths_follow_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    bundle(tmp.path(), "hefei");
    let text = "[node]\nname = \"hefei\"\ndata_dir = \"data\"\n\
        [tls]\nca = \"hefei/ca.pem\"\ncert = \"hefei/node.pem\"\nkey = \"hefei/node.key\"\n";
    let path = tmp.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.node.data_dir, tmp.path().join("data"));
    assert_eq!(config.tls.cert, tmp.path().join("hefei/node.pem"));
}

#[test]
fn cert_name_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = bundle(tmp.path(), "beijing");
    let config = Config::builder("hefei", "/d", &tls).origin(ORIGIN).build();
    let err = config.validate().unwrap_err();
    assert_eq!(
        line(&err),
        "config /etc/officesync/node.toml: tls.cert names \"beijing\" but node.name is \
         \"hefei\" (fix: issue a bundle for hefei with `officesync ca issue hefei` or \
         correct node.name)"
    );
    assert_eq!(err.key(), Some("tls.cert"));
}

#[test]
fn broken_bundles_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hefei = bundle(tmp.path(), "hefei");
    let beijing = bundle(tmp.path(), "beijing");
    let good = || {
        Config::builder("hefei", "/d", &hefei)
            .origin(ORIGIN)
            .build()
    };

    // Missing file: names the key and the path.
    let mut config = good();
    config.tls.ca = tmp.path().join("nowhere/ca.pem");
    let err = config.validate().unwrap_err();
    let msg = line(&err);
    assert_eq!(err.key(), Some("tls.ca"));
    assert!(msg.contains("nowhere/ca.pem"), "{msg}");

    // Key from another bundle.
    let mut config = good();
    config.tls.key = beijing.join(pki::NODE_KEY_FILE);
    let err = config.validate().unwrap_err();
    line(&err);
    assert_eq!(err.key(), Some("tls.key"));

    // Certificate from another CA.
    let other = tmp.path().join("other");
    init_ca(&other.join("ca"), false).unwrap();
    let mut config = good();
    config.tls.ca = other.join("ca").join(pki::CA_CERT_FILE);
    let err = config.validate().unwrap_err();
    let msg = line(&err);
    assert_eq!(err.key(), Some("tls.cert"));
    assert!(msg.contains("does not chain"), "{msg}");

    // Expired (checked at a time after not_after).
    let config = good();
    let id = pki::load_identity(&config.tls.cert).unwrap();
    let err = config.validate_files(id.not_after + 1).unwrap_err();
    let msg = line(&err);
    assert!(msg.contains("not valid now"), "{msg}");

    // Not a certificate at all.
    let mut config = good();
    config.tls.cert = hefei.join(pki::NODE_KEY_FILE);
    let err = config.validate().unwrap_err();
    line(&err);
    assert_eq!(err.key(), Some("tls.cert"));
}

#[test]
fn unreadable_config_file() {
    let err = Config::load(Path::new("/nonexistent/officesync.toml")).unwrap_err();
    let msg = line(&err);
    assert!(msg.contains("/nonexistent/officesync.toml"), "{msg}");
}

#[test]
fn toml_strings_escape() {
    assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    let config = Config::builder("hefei", "/odd \"dir\"\\x", "/t").build();
    let back = Config::from_toml_str(&config.to_toml_string(), Path::new("")).unwrap();
    assert_eq!(back, config);
}

#[test]
fn accounts_come_from_passwd_and_group() {
    let passwd = "root:x:0:0:root:/root:/bin/bash\nofficesync:x:999:998::/var/lib/officesync:/usr/sbin/nologin\n";
    let group = "root:x:0:\nofficesync:x:998:\nadm:x:4:syslog,officesync\nother:x:5:officesyncd\n";
    let account = access::Account::from_databases("officesync", passwd, group).unwrap();
    assert_eq!((account.uid, account.gid), (999, 998));
    assert_eq!(
        account.groups,
        vec![998, 4],
        "primary, then member-of; not a prefix match"
    );
    assert!(access::Account::from_databases("nobody", passwd, group).is_none());
}

/// An account that owns nothing in the test's directory and is in none of its groups.
fn stranger() -> access::Account {
    access::Account {
        name: "stranger".to_owned(),
        uid: 4_000_001,
        gid: 4_000_001,
        groups: vec![4_000_001],
    }
}

#[test]
fn access_follows_owner_group_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    let tmp = tempfile::tempdir().unwrap();
    mode(tmp.path(), 0o755).unwrap();
    let me = access::Account::current().unwrap();
    let stranger = stranger();
    let key = tmp.path().join("node.key");
    std::fs::write(&key, "k").unwrap();

    // As `ca issue` writes it: the owner reads it, nobody else.
    mode(&key, 0o600).unwrap();
    let denied = stranger.check(&key, access::Need::Read).unwrap_err();
    assert_eq!(denied.blocker, key);
    assert_eq!(denied.mode, 0o600);
    let said = denied.describe(&stranger, access::Need::Read);
    assert!(
        said.contains("user stranger (uid 4000001) cannot read"),
        "{said}"
    );
    assert!(said.ends_with("mode 0600"), "{said}");
    assert!(denied.fix.contains("chmod 0640"), "{}", denied.fix);
    if me.uid != 0 {
        assert_eq!(
            me.check(&key, access::Need::Read).ok(),
            Some(access::Access::Allowed)
        );
    }

    // Readable by the file's group: the owner's group stands for the daemon's group here.
    mode(&key, 0o640).unwrap();
    let meta = std::fs::metadata(&key).unwrap();
    let member = access::Account {
        groups: vec![4_000_001, std::os::unix::fs::MetadataExt::gid(&meta)],
        ..stranger.clone()
    };
    assert_eq!(
        member.check(&key, access::Need::Read).ok(),
        Some(access::Access::Allowed)
    );
    assert!(stranger.check(&key, access::Need::Read).is_err());

    // A directory above that the account cannot enter is what stops it.
    mode(&key, 0o644).unwrap();
    mode(tmp.path(), 0o750).unwrap();
    let denied = stranger.check(&key, access::Need::Read).unwrap_err();
    assert_eq!(denied.blocker, tmp.path());
    assert!(denied.fix.contains("chmod 0750"), "{}", denied.fix);
    mode(tmp.path(), 0o755).unwrap();
    assert_eq!(
        stranger.check(&key, access::Need::Read).ok(),
        Some(access::Access::Allowed)
    );

    // The data dir: missing is no error; present, it must be the account's to write.
    let data = tmp.path().join("data");
    assert_eq!(
        stranger.check(&data, access::Need::Manage).ok(),
        Some(access::Access::Missing)
    );
    std::fs::create_dir(&data).unwrap();
    mode(&data, 0o755).unwrap();
    let denied = stranger.check(&data, access::Need::Manage).unwrap_err();
    let fixed = format!("chmod 0700 {}", data.display());
    assert!(denied.fix.starts_with("chown stranger:"), "{}", denied.fix);
    assert!(denied.fix.ends_with(&fixed), "{}", denied.fix);
    mode(&data, 0o777).unwrap();
    assert_eq!(
        stranger.check(&data, access::Need::Manage).ok(),
        Some(access::Access::Allowed)
    );
}

#[test]
fn check_access_names_the_key_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tls = bundle(tmp.path(), "hefei");
    let config = Config::builder("hefei", tmp.path().join("data"), &tls)
        .origin(tmp.path().join("node.toml"))
        .build();
    std::fs::write(&config.origin, config.to_toml_string()).unwrap();
    std::fs::set_permissions(&config.origin, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The key as `ca issue` writes it (0600) stops a user other than its owner.
    let err = config.check_access(&stranger()).unwrap_err();
    assert_eq!(err.key(), Some("tls.key"));
    let msg = line(&err);
    assert!(
        msg.contains("cannot read") && msg.contains("mode 0600"),
        "{msg}"
    );
    assert!(msg.contains("(fix: chown root:"), "{msg}");

    let key = tls.join(pki::NODE_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        config.check_access(&stranger()).unwrap(),
        access::Access::Missing
    );
}

/// A new storage key file `name` in `dir`.
fn storage_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    StorageKey::generate()
        .unwrap()
        .write_new(&path, false)
        .unwrap();
    path
}

#[test]
fn storage_keys_parse_resolve_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = bundle(tmp.path(), "hefei");
    let current = storage_key(tmp.path(), "storage.key");
    let old = storage_key(tmp.path(), "storage.key.old");
    let text = format!(
        "{}[storage]\nencryption_key_file = \"storage.key\"\n\
         previous_encryption_key_files = [\"storage.key.old\"]\n",
        Config::builder("hefei", "data", &tls)
            .build()
            .to_toml_string()
            .split("[storage]")
            .next()
            .unwrap()
    );
    let path = tmp.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.storage.encryption_key_file, Some(current.clone()));
    assert_eq!(config.storage.previous_encryption_key_files, [old]);
    assert_eq!(config.validate_key_files().unwrap().len(), 2);
    // Written back and read again, unchanged.
    std::fs::write(&path, config.to_toml_string()).unwrap();
    let again = Config::load(&path).unwrap();
    assert_eq!(again, config);
    // Unset by default, and then nothing is written for it.
    let plain = parse(MINIMAL).unwrap();
    assert_eq!(plain.storage.encryption_key_file, None);
    assert!(!plain.to_toml_string().contains("encryption_key_file"));
}

#[test]
fn storage_key_settings_are_checked() {
    let with = |lines: &str| format!("{MINIMAL}[storage]\n{lines}\n");
    let cases = [
        (
            "encryption_key = \"/etc/officesync/storage.key\"",
            "storage.encryption_key",
            "unknown field",
        ),
        (
            "encryption_key_file = 7",
            "storage.encryption_key_file",
            "encryption_key_file = \"/etc/officesync/storage.key\"",
        ),
        (
            "encryption_key_file = \"\"",
            "storage.encryption_key_file",
            "is empty",
        ),
        (
            "encryption_key_file = \"/var/lib/officesync/storage.key\"",
            "storage.encryption_key_file",
            "keep the key outside the data dir",
        ),
        (
            "previous_encryption_key_files = [\"/etc/officesync/old.key\"]",
            "storage.previous_encryption_key_files",
            "storage.encryption_key_file is not",
        ),
        (
            "encryption_key_file = \"/etc/k\"\nprevious_encryption_key_files = [\"/etc/k\"]",
            "storage.previous_encryption_key_files[0]",
            "listed twice",
        ),
    ];
    for (lines, key, says) in cases {
        let (msg, got) = parse_err(&with(lines));
        assert_eq!(got.as_deref(), Some(key), "{lines}: {msg}");
        assert!(msg.contains(says), "{lines}: {msg}");
    }
}

#[test]
fn storage_key_files_are_read_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let tls = bundle(tmp.path(), "hefei");
    let build = |current: &Path, previous: &[&Path]| {
        let mut b = Config::builder("hefei", tmp.path().join("data"), &tls)
            .origin(tmp.path().join("node.toml"))
            .encryption_key_file(current);
        for p in previous {
            b = b.previous_encryption_key_file(*p);
        }
        b.build()
    };
    let good = storage_key(tmp.path(), "storage.key");
    build(&good, &[]).validate().unwrap();

    // Missing: names the key, the file, and how to make one.
    let missing = tmp.path().join("missing.key");
    let err = build(&missing, &[]).validate().unwrap_err();
    assert_eq!(err.key(), Some("storage.encryption_key_file"));
    let msg = line(&err);
    assert!(msg.contains("missing.key"), "{msg}");
    assert!(msg.contains("officesync storage-key --out FILE"), "{msg}");

    // Not a key.
    let junk = tmp.path().join("junk.key");
    std::fs::write(&junk, "not a key\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let msg = line(&build(&junk, &[]).validate().unwrap_err());
    assert!(msg.contains("junk.key is not a storage key"), "{msg}");

    // Open to every user.
    let open = storage_key(tmp.path(), "open.key");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = line(&build(&open, &[]).validate().unwrap_err());
    assert!(msg.contains("open.key is open to every user"), "{msg}");
    assert!(msg.contains("chmod 0600"), "{msg}");

    // The same key under two names.
    let copy = tmp.path().join("copy.key");
    std::fs::copy(&good, &copy).unwrap();
    let err = build(&good, &[&copy]).validate().unwrap_err();
    assert_eq!(err.key(), Some("storage.previous_encryption_key_files[0]"));
    assert!(line(&err).contains("holds the same key"), "{err}");

    // A missing previous key is named by its index.
    let err = build(&good, &[&missing]).validate().unwrap_err();
    assert_eq!(err.key(), Some("storage.previous_encryption_key_files[0]"));
}

#[test]
fn check_access_covers_the_storage_key() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tls = bundle(tmp.path(), "hefei");
    std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        tls.join(pki::NODE_KEY_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let key = storage_key(tmp.path(), "storage.key");
    let config = Config::builder("hefei", tmp.path().join("data"), &tls)
        .encryption_key_file(&key)
        .build();
    // As `storage-key` writes it (0600): another user cannot read it.
    let err = config.check_access(&stranger()).unwrap_err();
    assert_eq!(err.key(), Some("storage.encryption_key_file"));
    assert!(line(&err).contains("mode 0600"), "{err}");
}

#[test]
fn the_report_interval_is_bounded() {
    let text = |ms: u64| {
        format!(
            "[node]\nname = \"hefei\"\ndata_dir = \"/d\"\n[tls]\nca = \"/c\"\ncert = \"/n\"\n\
             key = \"/k\"\n[status]\nreport_interval_ms = {ms}\n"
        )
    };
    let ok = Config::from_toml_str(&text(1_000), Path::new("x.toml")).unwrap();
    assert_eq!(ok.status.report_interval_ms, 1_000);
    for bad in [0, 199, 3_600_001] {
        let err = Config::from_toml_str(&text(bad), Path::new("x.toml")).unwrap_err();
        assert_eq!(err.key(), Some("status.report_interval_ms"), "{err}");
    }
}

#[test]
fn unchanged_reports_wait_at_least_an_interval_and_at_most_an_hour() {
    let text = |lines: &str| {
        format!(
            "[node]\nname = \"hefei\"\ndata_dir = \"/d\"\n[tls]\nca = \"/c\"\ncert = \"/n\"\n\
             key = \"/k\"\n[status]\n{lines}\n"
        )
    };
    let default = Config::from_toml_str(&text(""), Path::new("x.toml")).unwrap();
    assert_eq!(default.status.unchanged_ms(), 60_000);
    let below = text("report_interval_ms = 120000\nunchanged_report_ms = 1000");
    let below = Config::from_toml_str(&below, Path::new("x.toml")).unwrap();
    assert_eq!(
        below.status.unchanged_ms(),
        120_000,
        "never below the interval"
    );
    let err = Config::from_toml_str(&text("unchanged_report_ms = 3600001"), Path::new("x.toml"))
        .unwrap_err();
    assert_eq!(err.key(), Some("status.unchanged_report_ms"), "{err}");
}

#[test]
fn bandwidth_limits_and_urgent_collections() {
    let text = format!(
        "{MINIMAL}[[sync.limit]]\npeers = [\"*\"]\nrate = \"2 Mbit/s\"\nwhen = \"Mon-Fri 08:00-18:00\"\n\
         [[sync.limit]]\npeers = [\"hefei\"]\nrate = \"512 KiB/s\"\n[sync]\nurgent = [\"_policy\", \"alerts\"]\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.sync.urgent, ["_policy", "alerts"]);
    assert_eq!(config.sync.limit.len(), 2);
    let schedule = config.sync.schedule();
    assert_eq!(
        schedule
            .rate_at("wuhu", 2, 9 * 60)
            .map(|r| r.bytes_per_sec()),
        Some(250_000)
    );
    assert_eq!(
        schedule
            .rate_at("hefei", 6, 9 * 60)
            .map(|r| r.bytes_per_sec()),
        Some(512 * 1024)
    );
    assert_eq!(schedule.rate_at("wuhu", 6, 9 * 60), None);
    // The config written back reads the same.
    let back = Config::from_toml_str(&config.to_toml_string(), Path::new(ORIGIN)).unwrap();
    assert_eq!(back.sync, config.sync);

    for (entry, key) in [
        ("peers = [\"*\"]\nrate = \"2 Mb/s\"", "sync.limit[0].rate"),
        (
            "peers = [\"*\"]\nrate = \"2 Mbit/s\"\nwhen = \"Mon-Fri 8-18\"",
            "sync.limit[0].when",
        ),
        ("peers = []\nrate = \"2 Mbit/s\"", "sync.limit[0].peers"),
    ] {
        let err = parse(&format!("{MINIMAL}[[sync.limit]]\n{entry}\n")).unwrap_err();
        let msg = line(&err);
        assert_eq!(err.key(), Some(key), "{msg}");
        assert!(msg.contains(key), "{msg}");
    }
    let err = parse(&format!(
        "{MINIMAL}[[sync.limit]]\npeers = [\"*\"]\nrate = \"1 Mbit/s\"\nspeed = 3\n"
    ))
    .unwrap_err();
    assert!(line(&err).contains("speed"), "unknown keys are refused");
    let err = parse(&format!("{MINIMAL}[sync]\nurgent = [\"No!\"]\n")).unwrap_err();
    assert_eq!(err.key(), Some("sync.urgent[0]"));
}
