//! A deployment under test: one temp dir, one CA made with `officesync ca init`, node bundles
//! issued with `officesync ca issue`, TOML configs on free loopback ports, and started nodes.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tempfile::TempDir;

use crate::node::{DaemonSpec, StartFailure, TestNode};
use crate::process::{free_tcp_port, free_udp_port, loopback, officesync, OutputExt as _};

/// Environment variable that, when set, keeps the cluster's temp dir after the test.
pub const KEEP_ENV: &str = "OFFICESYNC_TEST_KEEP";

/// A temp dir with a deployment CA in it, from which nodes are configured and started.
///
/// Nodes returned by [`Cluster::start`] keep the temp dir alive, so they may outlive the
/// cluster value.
#[derive(Debug)]
pub struct Cluster {
    root: Arc<TempDir>,
    ca_dir: PathBuf,
    dirs: AtomicUsize,
}

/// The config of one node under test, written as the TOML of DESIGN.md ("Config").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestConfig {
    /// `node.name`.
    pub name: String,
    /// Working directory of this node: its config file and log live here.
    pub dir: PathBuf,
    /// `node.data_dir`.
    pub data_dir: PathBuf,
    /// `sync.listen` (UDP).
    pub sync_listen: SocketAddr,
    /// `sync.peers` as `(name, addr)`.
    pub peers: Vec<(String, String)>,
    /// Directory of the bundle: `tls.ca`, `tls.cert` and `tls.key` are `ca.pem`,
    /// `node.pem` and `node.key` in it.
    pub tls_dir: PathBuf,
    /// `api.listen` (TCP).
    pub api_listen: SocketAddr,
    /// `storage.durability`: `"sync"` or `"periodic"`.
    pub durability: String,
    /// `storage.flush_interval_ms`, when set.
    pub flush_interval_ms: Option<u64>,
    /// `cluster.admins`.
    pub admins: Vec<String>,
    /// `api.auth` (`None`: the default, `token`).
    pub api_auth: Option<String>,
    /// `storage.encryption_key_file` (`None`: values stored in clear).
    pub encryption_key_file: Option<PathBuf>,
    /// Raw TOML appended after the `[cluster]` section (keys land in `[cluster]` unless it
    /// opens a new section).
    pub extra_toml: String,
}

impl TestConfig {
    /// The config file: `dir/officesync.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("officesync.toml")
    }

    /// The daemon's log: `dir/officesyncd.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("officesyncd.log")
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str("[node]\n");
        out.push_str(&format!("name = {}\n", toml_str(&self.name)));
        out.push_str(&format!("data_dir = {}\n", toml_path(&self.data_dir)));
        out.push_str("\n[sync]\n");
        out.push_str(&format!("listen = \"{}\"\n", self.sync_listen));
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|(name, addr)| {
                format!("{{ name = {}, addr = {} }}", toml_str(name), toml_str(addr))
            })
            .collect();
        out.push_str(&format!("peers = [{}]\n", peers.join(", ")));
        out.push_str("\n[tls]\n");
        out.push_str(&format!(
            "ca = {}\n",
            toml_path(&self.tls_dir.join("ca.pem"))
        ));
        out.push_str(&format!(
            "cert = {}\n",
            toml_path(&self.tls_dir.join("node.pem"))
        ));
        out.push_str(&format!(
            "key = {}\n",
            toml_path(&self.tls_dir.join("node.key"))
        ));
        out.push_str("\n[api]\n");
        out.push_str(&format!("listen = \"{}\"\n", self.api_listen));
        if let Some(auth) = &self.api_auth {
            out.push_str(&format!("auth = {}\n", toml_str(auth)));
        }
        out.push_str("\n[storage]\n");
        out.push_str(&format!("durability = {}\n", toml_str(&self.durability)));
        if let Some(ms) = self.flush_interval_ms {
            out.push_str(&format!("flush_interval_ms = {ms}\n"));
        }
        if let Some(key) = &self.encryption_key_file {
            out.push_str(&format!("encryption_key_file = {}\n", toml_path(key)));
        }
        out.push_str("\n[cluster]\n");
        let admins: Vec<String> = self.admins.iter().map(|a| toml_str(a)).collect();
        out.push_str(&format!("admins = [{}]\n", admins.join(", ")));
        if !self.extra_toml.is_empty() {
            out.push('\n');
            out.push_str(&self.extra_toml);
            if !self.extra_toml.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Writes [`TestConfig::to_toml`] to [`TestConfig::config_path`] (creating `dir`) and
    /// returns the path.
    pub fn write(&self) -> PathBuf {
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.dir.display()));
        let path = self.config_path();
        std::fs::write(&path, self.to_toml())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// The same config on fresh free ports.
    pub fn with_fresh_ports(mut self) -> TestConfig {
        self.sync_listen = loopback(free_udp_port());
        self.api_listen = loopback(free_tcp_port());
        self
    }

    /// What [`TestNode`] needs to run this config.
    pub fn spec(&self) -> DaemonSpec {
        DaemonSpec {
            name: self.name.clone(),
            config_path: self.config_path(),
            api_addr: self.api_listen,
            log_path: self.log_path(),
        }
    }
}

impl Cluster {
    /// A fresh temp dir with a CA made by `officesync ca init --dir <tmp>/ca`.
    pub fn new() -> Cluster {
        let mut root = tempfile::Builder::new()
            .prefix("officesync-test-")
            .tempdir()
            .expect("create a temp dir for the cluster");
        if std::env::var_os(KEEP_ENV).is_some() {
            root.disable_cleanup(true);
            eprintln!("{KEEP_ENV} is set: keeping {}", root.path().display());
        }
        let ca_dir = root.path().join("ca");
        officesync(&[
            "ca".as_ref(),
            "init".as_ref(),
            "--dir".as_ref(),
            ca_dir.as_os_str(),
        ])
        .expect_success("officesync ca init");
        Cluster {
            root: Arc::new(root),
            ca_dir,
            dirs: AtomicUsize::new(0),
        }
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The CA directory (`ca.pem`, `ca.key`).
    pub fn ca_dir(&self) -> &Path {
        &self.ca_dir
    }

    /// Issues (once) a bundle for `name` with `officesync ca issue NAME --ca-dir --out`
    /// into `<tmp>/bundles/<name>` and returns that directory.
    pub fn issue(&self, name: &str, admin: bool) -> PathBuf {
        let out = self.dir().join("bundles").join(name);
        if out.join("node.pem").exists() {
            return out;
        }
        let mut args = vec![
            "ca".as_ref(),
            "issue".as_ref(),
            name.as_ref(),
            "--ca-dir".as_ref(),
            self.ca_dir.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        if admin {
            args.push("--admin".as_ref());
        }
        officesync(&args).expect_success(&format!("officesync ca issue {name}"));
        out
    }

    /// A config for node `name` (issuing its bundle if needed) in a fresh working directory
    /// (`<tmp>/<name>`, then `<tmp>/<name>.2`, ...) with its data in `dir/data`, free
    /// loopback ports, `durability = "sync"`, no peers and no admins.
    pub fn config(&self, name: &str) -> TestConfig {
        let tls_dir = self.issue(name, false);
        let dir = loop {
            let n = self.dirs.fetch_add(1, Ordering::Relaxed);
            let dir = if n == 0 {
                self.dir().join(name)
            } else {
                self.dir().join(format!("{name}.{n}"))
            };
            if !dir.exists() {
                break dir;
            }
        };
        TestConfig {
            name: name.to_owned(),
            data_dir: dir.join("data"),
            dir,
            sync_listen: loopback(free_udp_port()),
            peers: Vec::new(),
            tls_dir,
            api_listen: loopback(free_tcp_port()),
            durability: "sync".to_owned(),
            flush_interval_ms: None,
            admins: Vec::new(),
            api_auth: None,
            encryption_key_file: None,
            extra_toml: String::new(),
        }
    }

    /// Writes `config` and starts its daemon; panics with the log unless it becomes healthy.
    pub fn start(&self, config: &TestConfig) -> TestNode {
        self.try_start(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Writes `config` and starts its daemon, returning the failure instead of panicking.
    pub fn try_start(&self, config: &TestConfig) -> Result<TestNode, StartFailure> {
        config.write();
        let keep: Arc<dyn Send + Sync + fmt::Debug> = self.root.clone();
        TestNode::try_start(config.spec()).map(|node| node.keep_alive(keep))
    }

    /// [`Cluster::config`] then [`Cluster::start`].
    pub fn start_node(&self, name: &str) -> TestNode {
        self.start(&self.config(name))
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

/// `text` as a TOML basic string.
pub fn toml_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a TOML string (panics on a non-UTF-8 path, which TOML cannot hold).
pub fn toml_path(path: &Path) -> String {
    toml_str(
        path.to_str()
            .unwrap_or_else(|| panic!("{} is not UTF-8", path.display())),
    )
}

/// Copies directory `from` recursively to `to` (which must not exist), for taking a copy of
/// a stopped node's data dir.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", entry.path().display()));
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| {
                panic!(
                    "cannot copy {} to {}: {e}",
                    entry.path().display(),
                    target.display()
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn config_renders_every_section() {
        let config = TestConfig {
            name: "hefei".into(),
            dir: "/w/hefei".into(),
            data_dir: "/w/hefei/data".into(),
            sync_listen: loopback(7400),
            peers: vec![("general-office".into(), "127.0.0.1:7401".into())],
            tls_dir: "/w/bundles/hefei".into(),
            api_listen: loopback(7480),
            durability: "sync".into(),
            flush_interval_ms: None,
            admins: vec!["general-office".into()],
            api_auth: None,
            encryption_key_file: None,
            extra_toml: String::new(),
        };
        let toml = config.to_toml();
        for line in [
            "[node]",
            "name = \"hefei\"",
            "data_dir = \"/w/hefei/data\"",
            "listen = \"127.0.0.1:7400\"",
            "peers = [{ name = \"general-office\", addr = \"127.0.0.1:7401\" }]",
            "cert = \"/w/bundles/hefei/node.pem\"",
            "listen = \"127.0.0.1:7480\"",
            "durability = \"sync\"",
            "admins = [\"general-office\"]",
        ] {
            assert!(
                toml.lines().any(|l| l == line),
                "{line:?} missing from:\n{toml}"
            );
        }
    }
}
