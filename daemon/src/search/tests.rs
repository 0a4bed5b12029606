//! The search service over a real replica: the indexer follows writes, deletes and
//! overwrites, resumes from its commit after a restart, and rebuilds when its settings change.

use std::sync::Arc;
use std::time::Duration;

use super::Search;
use crate::config::Config;
use crate::replica::{Replica, ReplicaOptions};
use crate::store::MemoryStore;

/// How long a change may take to become searchable in these tests (bounded waits).
const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &std::path::Path, pointers: &[&str]) -> Config {
    let mut config = Config::builder("hefei", dir, dir.join("tls"))
        .search_collections(["documents"])
        .build();
    if !pointers.is_empty() {
        config.search.fields.insert(
            "documents".into(),
            pointers.iter().map(|p| (*p).to_owned()).collect(),
        );
    }
    config
}

/// Waits until `q` finds exactly `want` (sorted keys).
async fn wait_keys(search: &Search, q: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match search.query("documents", q, 100).await {
            Ok(r) => {
                let mut keys: Vec<String> = r.hits.into_iter().map(|h| h.key).collect();
                keys.sort();
                if keys == want {
                    return;
                }
                last = format!("{keys:?}");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{q:?} did not find {want:?} within {WAIT:?}: last {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_writes_deletes_and_overwrites_and_resumes_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let replica =
        Replica::open(Arc::new(MemoryStore::new()), ReplicaOptions::new("hefei")).expect("replica");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let search = Search::start(&config(tmp.path(), &[]), replica.clone(), stopped);
    let w = |k: &'static str, v: &'static str| {
        let replica = replica.clone();
        async move {
            replica
                .write("documents", k, Some(v.as_bytes().to_vec()))
                .await
                .expect("write")
        }
    };
    w("a", r#"{"title":"防汛通知","body":"flood season"}"#).await;
    w("b", "grain report 粮食").await;
    w("other", "not indexed").await;
    wait_keys(&search, "防汛", &["a"]).await;
    wait_keys(&search, "粮食 OR flood", &["a", "b"]).await;
    replica.write("documents", "b", None).await.expect("delete");
    wait_keys(&search, "grain", &[]).await;
    w("a", "drought relief 抗旱").await;
    wait_keys(&search, "抗旱", &["a"]).await;
    wait_keys(&search, "防汛", &[]).await;
    assert!(search.query("situation", "x", 10).await.is_err());

    // A restart resumes from the commit: no rebuild, same answers.
    stop.send(true).expect("stop");
    search.join(WAIT).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let search = Search::start(&config(tmp.path(), &[]), replica.clone(), stopped);
    wait_keys(&search, "抗旱", &["a"]).await;
    assert_eq!(search.status()["documents"].rebuilds, 0);
    assert_eq!(search.status()["documents"].docs, 2);

    // Other settings: rebuilt, only the titles indexed.
    stop.send(true).expect("stop");
    search.join(WAIT).await;
    w("c", r#"{"title":"水库","body":"reservoir"}"#).await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let search = Search::start(&config(tmp.path(), &["/title"]), replica.clone(), stopped);
    wait_keys(&search, "水库", &["c"]).await;
    wait_keys(&search, "reservoir", &[]).await;
    assert_eq!(search.status()["documents"].rebuilds, 1);
}
