//! A damaged store is refused, never served: write data, stop the daemon cleanly, damage the
//! sled files in `data_dir/sled/`, start again. The daemon must exit non-zero with an error
//! that mentions corruption; if it comes up anyway, it must serve every record it held
//! (damage in unused space is harmless). Coming up empty or partial is a failure.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use officesync_tests::{copy_dir, Cluster, TestConfig};
use serde_json::Value;

const COLLECTIONS: [&str; 2] = ["situation", "letters"];
const RECORDS_PER_COLLECTION: usize = 100;

/// A stopped node's data and what it held.
struct Written {
    cluster: Cluster,
    /// The pristine data dir (a copy; damage goes to further copies).
    pristine: PathBuf,
    /// Per collection: records and digest from `/v1/status` before the stop.
    status: BTreeMap<String, (Value, Value)>,
    /// Every record: (collection, key) -> value.
    values: BTreeMap<(String, String), Vec<u8>>,
}

/// Writes records in two collections, stops the daemon with SIGTERM and keeps a copy of
/// its data dir.
fn write_and_stop() -> Written {
    let cluster = Cluster::new();
    let config = cluster.config("hefei");
    let node = cluster.start(&config);
    let mut values = BTreeMap::new();
    for coll in COLLECTIONS {
        for i in 0..RECORDS_PER_COLLECTION {
            let key = format!("hefei/{i:04}");
            let value = format!("{{\"n\": {i}, \"text\": \"{}\"}}", "report ".repeat(i % 40));
            node.put(coll, &key, value.as_bytes());
            values.insert((coll.to_owned(), key), value.into_bytes());
        }
    }
    let status = node.status();
    let status = COLLECTIONS
        .iter()
        .map(|c| {
            let s = &status["collections"][c];
            ((*c).to_owned(), (s["records"].clone(), s["digest"].clone()))
        })
        .collect();
    let exit = node.stop();
    assert!(exit.success(), "SIGTERM: {exit}\n{}", node.log());
    drop(node);
    let pristine = cluster.dir().join("pristine-data");
    copy_dir(&config.data_dir, &pristine);
    Written {
        cluster,
        pristine,
        status,
        values,
    }
}

impl Written {
    /// A config on a fresh copy of the pristine data dir.
    fn fresh_copy(&self) -> TestConfig {
        let config = self.cluster.config("hefei");
        copy_dir(&self.pristine, &config.data_dir);
        config
    }

    /// Starts on `config` (whose store was damaged by `damage`): a refusal must mention
    /// corruption; a node that comes up must hold everything.
    fn expect_refused_or_complete(&self, config: &TestConfig, damage: &str) {
        match self.cluster.try_start(config) {
            Err(failure) => {
                let status = failure
                    .status
                    .unwrap_or_else(|| panic!("{damage}: the daemon hung: {failure}"));
                assert!(!status.success(), "{damage}: {failure}");
                assert!(
                    failure.log.to_lowercase().contains("corrupt"),
                    "{damage}: refused, but without saying the store is corrupt: {failure}"
                );
                eprintln!("{damage}: refused as expected: {}", failure.log.trim());
            }
            Ok(node) => {
                let status = node.status();
                let mut problems = Vec::new();
                for (coll, (records, digest)) in &self.status {
                    let now = &status["collections"][coll];
                    if &now["records"] != records || &now["digest"] != digest {
                        problems.push(format!(
                            "collection {coll}: {} records (was {records}), digest {} (was {digest})",
                            now["records"], now["digest"]
                        ));
                    }
                }
                let missing = self
                    .values
                    .iter()
                    .filter(|((c, k), v)| node.get(c, k).is_none_or(|r| &r.value != *v))
                    .count();
                if missing > 0 {
                    problems.push(format!(
                        "{missing} of {} records missing or changed",
                        self.values.len()
                    ));
                }
                assert!(
                    problems.is_empty(),
                    "{damage}: officesyncd came up on a damaged store and serves a partial \
                     store instead of refusing it:\n{}\n--- log ---\n{}",
                    problems.join("\n"),
                    node.log()
                );
                eprintln!("{damage}: came up with every record (damage was in unused space)");
            }
        }
    }
}

/// Offset just past the last non-zero byte of `path` (sled preallocates its segment with
/// zeros, so this is where the written log ends).
fn written_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// Overwrites 4 KiB of `path` at `offset` with a non-zero pattern.
fn scribble(path: &Path, offset: u64) {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1024))
        .expect("write garbage");
    file.sync_all().expect("sync");
}

#[test]
fn garbage_in_the_middle_of_the_sled_log_is_refused() {
    let written = write_and_stop();
    let config = written.fresh_copy();
    let db = config.data_dir.join("sled").join("db");
    let used = written_len(&db);
    assert!(used > 16 * 1024, "sled/db holds only {used} bytes of log");
    scribble(&db, used / 2);
    written.expect_refused_or_complete(
        &config,
        &format!(
            "4 KiB of garbage at byte {} of {used} written in sled/db",
            used / 2
        ),
    );
}

#[test]
fn garbage_in_the_middle_of_the_sled_db_file_is_refused_or_harmless() {
    let written = write_and_stop();
    let config = written.fresh_copy();
    let db = config.data_dir.join("sled").join("db");
    let len = std::fs::metadata(&db).expect("stat sled/db").len();
    scribble(&db, len / 2);
    written.expect_refused_or_complete(
        &config,
        &format!(
            "4 KiB of garbage at byte {} of the {len}-byte sled/db",
            len / 2
        ),
    );
}

#[test]
fn truncated_sled_conf_is_refused() {
    let written = write_and_stop();
    let config = written.fresh_copy();
    let conf = config.data_dir.join("sled").join("conf");
    let len = std::fs::metadata(&conf).expect("stat sled/conf").len();
    OpenOptions::new()
        .write(true)
        .open(&conf)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate sled/conf");
    written.expect_refused_or_complete(
        &config,
        &format!("sled/conf truncated from {len} to {} bytes", len / 2),
    );
}
