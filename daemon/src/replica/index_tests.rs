//! Tests of the secondary indexes: entries kept with each write, queries from an index equal
//! to the scan's, builds and drops when the declaration changes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use officesync_protocol::query::Filter;
use officesync_protocol::Version;

use super::read::{self, ScanBudget};
use super::{keys, now_ms, Replica, ReplicaOptions};
use crate::store::{prefix_end, MemoryStore, Store};

fn options(pointers: &[&str]) -> ReplicaOptions {
    let mut opts = ReplicaOptions::new("hefei");
    if !pointers.is_empty() {
        let mut decl = BTreeMap::new();
        decl.insert(
            "docs".to_owned(),
            pointers.iter().map(|p| (*p).to_owned()).collect(),
        );
        opts.indexes = decl;
    }
    opts
}

fn open(store: &Arc<MemoryStore>, pointers: &[&str]) -> Replica {
    let store: Arc<dyn Store> = store.clone();
    Replica::open(store, options(pointers)).expect("open")
}

/// Keys of every page of `exprs` on `docs` through the replica (from an index when one
/// answers), `limit` per page, following `next`.
async fn query(r: &Replica, exprs: &[&str], prefix: &str, limit: usize) -> Vec<String> {
    let filter = Filter::parse(exprs).expect("valid");
    let mut after: Option<String> = None;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let page = r
            .scan_where("docs", prefix, after.as_deref(), limit, filter.clone())
            .await
            .expect("scan");
        assert!(page.records.len() <= limit);
        out.extend(page.records.into_iter().map(|w| w.key));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
    panic!("the query never ends");
}

/// Keys of every page of `exprs` on `docs` read by the scan alone (no index).
fn scanned(store: &dyn Store, exprs: &[&str], prefix: &str) -> Vec<String> {
    let filter = Filter::parse(exprs).expect("valid");
    let mut after: Option<String> = None;
    let mut out = Vec::new();
    loop {
        let page = read::scan(
            store,
            "docs",
            prefix,
            after.as_deref(),
            ScanBudget::new(7),
            &filter,
        )
        .expect("scan");
        out.extend(page.records.into_iter().map(|w| w.key));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// Index entries of `pointer` in `docs`, as (encoded value, key).
fn entries(store: &dyn Store, pointer: &str) -> Vec<(Vec<u8>, String)> {
    let prefix = keys::index_prefix("docs", pointer);
    let end = prefix_end(&prefix);
    store
        .range(&prefix, end.as_deref(), usize::MAX)
        .expect("range")
        .into_iter()
        .map(|(k, _)| {
            let pos = &k[prefix.len()..];
            let len = officesync_protocol::index_order::encoded_len(pos).expect("encoded");
            (
                pos[..len].to_vec(),
                String::from_utf8(pos[len..].to_vec()).expect("utf-8"),
            )
        })
        .collect()
}

fn keys_of(entries: &[(Vec<u8>, String)]) -> Vec<&str> {
    let mut k: Vec<&str> = entries.iter().map(|(_, k)| k.as_str()).collect();
    k.sort();
    k
}

async fn put(r: &Replica, key: &str, value: &str) {
    r.write("docs", key, Some(value.as_bytes().to_vec()))
        .await
        .expect("write");
}

/// A version of `origin` for `key`, concurrent with every other (text values).
fn concurrent(origin: &str, ms: u64, key: &str, value: Option<&str>) -> Version {
    super::read::tests::concurrent(origin, ms, key, value.map(|v| v.as_bytes().to_vec()))
}

#[tokio::test]
async fn entries_follow_the_winner_of_every_write() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store, &["/n", "/s"]);
    put(&r, "a", r#"{"n":1,"s":"x"}"#).await;
    put(&r, "b", r#"{"n":2.5}"#).await;
    put(&r, "c", "not json").await;
    put(&r, "d", r#"{"n":[1],"s":{"o":1}}"#).await;
    put(&r, "e", r#"{"n":null,"s":true}"#).await;
    assert_eq!(keys_of(&entries(store.as_ref(), "/n")), ["a", "b", "e"]);
    assert_eq!(keys_of(&entries(store.as_ref(), "/s")), ["a", "e"]);
    // A rewrite moves the entry; a delete removes it.
    put(&r, "a", r#"{"n":3}"#).await;
    r.write("docs", "b", None).await.expect("delete");
    assert_eq!(keys_of(&entries(store.as_ref(), "/n")), ["a", "e"]);
    assert_eq!(keys_of(&entries(store.as_ref(), "/s")), ["e"]);
    assert_eq!(entries(store.as_ref(), "/n").len(), 2, "one entry per key");
    // A large value (in chunks) is indexed too, and so is its replacement.
    let big = format!(r#"{{"n":9,"pad":"{}"}}"#, "x".repeat(20_000));
    put(&r, "big", &big).await;
    assert_eq!(query(&r, &["/n=9"], "", 10).await, ["big"]);
    put(&r, "big", r#"{"n":10}"#).await;
    assert_eq!(query(&r, &["/n=9"], "", 10).await, Vec::<String>::new());
    assert_eq!(query(&r, &["/n=10"], "", 10).await, ["big"]);
    // Other collections have no entries.
    r.write("other", "a", Some(br#"{"n":1}"#.to_vec()))
        .await
        .expect("write");
    let all = store.range(&[keys::INDEX], Some(&[keys::INDEX + 1]), usize::MAX);
    assert!(all
        .expect("range")
        .iter()
        .all(|(k, _)| k.starts_with(&keys::index_prefix("docs", "")[..5])));
    r.close().await.expect("close");
}

#[tokio::test]
async fn only_the_winner_of_siblings_is_indexed() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store, &["/n"]);
    let ms = now_ms() - 60_000;
    let report = r
        .apply_remote(
            vec![
                concurrent("office-a", ms, "k", Some(r#"{"n":1}"#)),
                concurrent("office-b", ms + 1, "k", Some(r#"{"n":2}"#)),
            ],
            Vec::new(),
        )
        .await
        .expect("apply");
    assert_eq!(report.applied, 2);
    assert_eq!(query(&r, &["/n=2"], "", 10).await, ["k"]);
    assert!(query(&r, &["/n=1"], "", 10).await.is_empty());
    // A later, concurrent tombstone wins: nothing is left indexed.
    r.apply_remote(vec![concurrent("office-c", ms + 2, "k", None)], Vec::new())
        .await
        .expect("apply");
    assert!(entries(store.as_ref(), "/n").is_empty());
    assert!(query(&r, &["/n>=0"], "", 10).await.is_empty());
    r.close().await.expect("close");
}

#[tokio::test]
async fn every_operator_and_type_answers_as_the_scan_does() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store, &["/v", "/w"]);
    let values = [
        "null",
        "true",
        "false",
        "-3",
        "0",
        "1",
        "1.0",
        "2.5",
        "7.5",
        "1e300",
        "9007199254740993",
        "9007199254740992",
        "\"\"",
        "\"Huai\"",
        "\"Nanfei\"",
        "\"Nan\"",
        "[1]",
        "{\"a\":1}",
    ];
    for (i, v) in values.iter().enumerate() {
        put(&r, &format!("k{i:02}"), &format!(r#"{{"v":{v},"w":{i}}}"#)).await;
    }
    put(&r, "text", "v=1").await;
    let exprs = [
        "/v=1",
        "/v=1.0",
        "/v<2.5",
        "/v<=2.5",
        "/v>0",
        "/v>=0",
        "/v=null",
        "/v=true",
        "/v=\"Nan\"",
        "/v>\"Nan\"",
        "/v<=\"Nanfei\"",
        "/v!=1",
        "/v~\"an\"",
        "/v=[1]",
        "/v>9007199254740992",
        "/v>=9007199254740993",
        "/v<true",
    ];
    let before = r.stats().indexed_scans.load(Ordering::Relaxed);
    for e in exprs {
        for limit in [1, 3, 100] {
            let mut got = query(&r, &[e], "", limit).await;
            let want = scanned(store.as_ref(), &[e], "");
            got.sort();
            assert_eq!(got, want, "{e}, limit {limit}");
        }
    }
    assert!(r.stats().indexed_scans.load(Ordering::Relaxed) > before);
    // Two expressions, one per index; and a prefix.
    let both = ["/v>=0", "/w<9"];
    let mut got = query(&r, &both, "k0", 2).await;
    got.sort();
    assert_eq!(got, scanned(store.as_ref(), &both, "k0"));
    r.close().await.expect("close");
}

#[tokio::test]
async fn a_changed_declaration_builds_and_drops_at_open() {
    let store = Arc::new(MemoryStore::new());
    let r = open(&store, &[]);
    for i in 0..1200u32 {
        put(
            &r,
            &format!("k{i:04}"),
            &format!(r#"{{"n":{},"s":"s{}"}}"#, i % 10, i % 7),
        )
        .await;
    }
    r.close().await.expect("close");
    assert!(entries(store.as_ref(), "/n").is_empty());

    let r = open(&store, &["/n"]);
    assert_eq!(entries(store.as_ref(), "/n").len(), 1200, "built at open");
    let want = scanned(store.as_ref(), &["/n=3"], "");
    assert_eq!(query(&r, &["/n=3"], "", 50).await, want);
    assert_eq!(want.len(), 120);
    r.close().await.expect("close");

    let r = open(&store, &["/s"]);
    assert!(entries(store.as_ref(), "/n").is_empty(), "dropped at open");
    assert_eq!(entries(store.as_ref(), "/s").len(), 1200);
    let mut got = query(&r, &["/s>=\"s5\""], "", 50).await;
    got.sort();
    assert_eq!(got, scanned(store.as_ref(), &["/s>=\"s5\""], ""));
    // A cursor of an index the query no longer uses is refused.
    let filter = Filter::parse(&["/s>\"s0\""]).expect("valid");
    let page = r
        .scan_where("docs", "", None, 5, filter)
        .await
        .expect("scan");
    let cursor = page.next.expect("more");
    assert!(cursor.starts_with(super::CURSOR_MARK));
    let other = Filter::parse(&["/s~\"s\""]).expect("valid");
    let refused = r.scan_where("docs", "", Some(&cursor), 5, other).await;
    assert!(matches!(refused, Err(super::ReplicaError::BadCursor(_))));
    r.close().await.expect("close");
}

/// A seeded xorshift, for reproducible random data.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    /// A scalar that may collide in the index with others (rounded integers, long strings).
    fn scalar(&mut self) -> String {
        match self.below(7) {
            0 => self.pick(&["null", "true", "false"]).to_owned(),
            1 => (self.below(10) as i64 - 5).to_string(),
            2 => format!("{:.1}", self.below(100) as f64 / 10.0 - 5.0),
            3 => self
                .pick(&["9007199254740992", "9007199254740993", "-0.0", "1e300"])
                .to_owned(),
            4 => format!(
                "\"{}\"",
                self.pick(&["", "a", "ab", "b", "ba", "c", "a\\u0000"])
            ),
            5 => format!("\"{}\"", "x".repeat(127 + self.below(3) as usize)),
            _ => self.pick(&["[1]", "{\"a\":1}"]).to_owned(),
        }
    }

    /// A record value: mostly JSON with field `/f`, sometimes without, not JSON, or deleted.
    fn value(&mut self) -> Option<String> {
        match self.below(10) {
            0 => None,
            1 => Some("plain text".to_owned()),
            2 => Some(r#"{"g":1}"#.to_owned()),
            _ => Some(format!(r#"{{"f":{}}}"#, self.scalar())),
        }
    }

    fn expr(&mut self) -> String {
        let op = self.pick(&["=", "<", "<=", ">", ">=", "!="]);
        let mut bound = self.scalar();
        while bound.starts_with('[') || bound.starts_with('{') {
            bound = self.scalar();
        }
        format!("/f{op}{bound}")
    }
}

/// On random data (writes, rewrites, deletes, concurrent siblings from other offices), every
/// expression and pair of expressions gives the same keys from the index as from the scan.
#[tokio::test]
async fn index_and_scan_agree_on_random_data() {
    for seed in 1..=30u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let store = Arc::new(MemoryStore::new());
        let r = open(&store, &["/f"]);
        let ms = now_ms() - 60_000;
        for i in 0..(20 + rng.below(100)) {
            let key = format!("k{:02}", rng.below(40));
            let value = rng.value();
            if rng.below(3) == 0 {
                let origin = format!("o{i}");
                let v = concurrent(&origin, ms + i, &key, value.as_deref());
                r.apply_remote(vec![v], Vec::new()).await.expect("apply");
            } else {
                let v = value.map(String::into_bytes);
                r.write("docs", &key, v).await.expect("write");
            }
        }
        let limit = 1 + rng.below(4) as usize;
        let exprs: Vec<String> = (0..6).map(|_| rng.expr()).collect();
        for e in &exprs {
            let mut got = query(&r, &[e.as_str()], "", limit).await;
            got.sort();
            assert_eq!(
                got,
                scanned(store.as_ref(), &[e.as_str()], ""),
                "seed {seed}: {e}"
            );
        }
        let pair = [exprs[0].as_str(), exprs[1].as_str()];
        let mut got = query(&r, &pair, "k1", limit).await;
        got.sort();
        assert_eq!(
            got,
            scanned(store.as_ref(), &pair, "k1"),
            "seed {seed}: {pair:?}"
        );
        assert!(
            r.stats().indexed_scans.load(Ordering::Relaxed) > 0,
            "seed {seed}"
        );
        r.close().await.expect("close");
    }
}
