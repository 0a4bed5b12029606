//! Test harness for officesync: runs the real, built `officesyncd` and `officesync` binaries
//! on loopback in temp dirs, as a sysadmin would, for the end-to-end suites in `tests/tests/`.
//!
//! Build the binaries first: `cargo build --workspace --bins --tests && cargo test --workspace`
//! (they are found next to the test executable, see [`bins`]).
//!
//! ```no_run
//! use officesync_tests::{Cluster, OutputExt};
//!
//! let cluster = Cluster::new(); // temp dir + `officesync ca init`
//! let node = cluster.start_node("hefei"); // `ca issue`, config, officesyncd, wait for /health
//! node.cli(&["put", "situation", "hefei/grain", "ok"]).expect_success("put");
//! assert_eq!(node.get("situation", "hefei/grain").expect("written").value, b"ok");
//! node.kill9();
//! node.restart();
//! ```
//!
//! Every wait is bounded: CLI calls by [`process::CLI_TIMEOUT`], start-up by
//! [`node::START_TIMEOUT`], shutdown by [`node::STOP_TIMEOUT`], HTTP by
//! [`http::HTTP_TIMEOUT`]. Dropping a [`TestNode`] kills its daemon. Set
//! `OFFICESYNC_TEST_KEEP=1` to keep the temp dirs for inspection.

pub mod bins;
pub mod chaos;
pub mod cluster;
pub mod fault_proxy;
pub mod http;
pub mod node;
pub mod powerfs;
pub mod process;
pub mod rng;
pub mod rogue;
pub mod sse;
pub mod tree;

pub use cluster::{copy_dir, Cluster, TestConfig};
pub use http::{ApiClient, HttpReply, Record, ScanEntry, WriteAck};
pub use node::{DaemonSpec, StartFailure, TestNode};
pub use process::{officesync, run_bounded, wait_until, OutputExt};
pub use rng::{test_seed, TestRng};
