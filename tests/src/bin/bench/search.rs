//! Full-text search (`[search]`): one replica with its search indexer over 100,000 records of
//! about 2 KB of mixed Chinese and English JSON (5,000 with `--quick`). Figures: indexing
//! throughput while following the writes and when rebuilding from the store, the delay from a
//! write's acknowledgement (applied and durable) to the word being searchable, query latency
//! (the service's query with snippets and store reads, without HTTP), and the index's size on
//! disk against the store's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use officesync_daemon::config::Config;
use officesync_daemon::replica::{CommitMode, Replica, ReplicaOptions};
use officesync_daemon::search::Search;
use officesync_daemon::store::SledStore;
use serde_json::json;

use crate::replication::{percentile, progress};
use crate::{emit, TableRow};

/// Target of the issue: apply to searchable, p99.
const TARGET_APPLY_TO_SEARCHABLE_P99_MS: f64 = 1000.0;
/// Target of the issue: query latency, p99.
const TARGET_QUERY_P99_MS: f64 = 20.0;
/// Concurrent writers of the bulk load.
const WRITERS: usize = 32;
/// The collection indexed.
const COLLECTION: &str = "documents";

/// Chinese words of the generated documents (government notices).
const ZH: [&str; 48] = [
    "防汛",
    "抗旱",
    "通知",
    "工作",
    "安全",
    "值班",
    "水库",
    "调度",
    "粮食",
    "收购",
    "进度",
    "报告",
    "会议",
    "部署",
    "落实",
    "责任",
    "各地",
    "加强",
    "应急",
    "预案",
    "物资",
    "储备",
    "气象",
    "预警",
    "降雨",
    "河道",
    "堤防",
    "巡查",
    "群众",
    "转移",
    "灾情",
    "统计",
    "财政",
    "资金",
    "项目",
    "建设",
    "审批",
    "办公厅",
    "文件",
    "印发",
    "组织",
    "实施",
    "监督",
    "检查",
    "交通",
    "运输",
    "保障",
    "疫情",
];
/// English words of the generated documents.
const EN: [&str; 48] = [
    "flood",
    "drought",
    "notice",
    "work",
    "safety",
    "duty",
    "reservoir",
    "dispatch",
    "grain",
    "purchase",
    "progress",
    "report",
    "meeting",
    "plan",
    "implement",
    "responsibility",
    "province",
    "strengthen",
    "emergency",
    "response",
    "supplies",
    "reserve",
    "weather",
    "warning",
    "rainfall",
    "river",
    "levee",
    "patrol",
    "residents",
    "evacuation",
    "damage",
    "statistics",
    "finance",
    "funds",
    "project",
    "construction",
    "approval",
    "office",
    "document",
    "issue",
    "organise",
    "execute",
    "supervise",
    "inspect",
    "traffic",
    "transport",
    "support",
    "epidemic",
];

/// A small deterministic generator (xorshift).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

/// Document `i`: JSON with a title and a body of about 2 KB, Chinese and English sentences.
fn document(i: usize) -> Vec<u8> {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
    let title = format!(
        "{}{}{} {} {}",
        g.pick(&ZH),
        g.pick(&ZH),
        g.pick(&ZH),
        g.pick(&EN),
        g.pick(&EN)
    );
    let mut body = String::with_capacity(2100);
    while body.len() < 1900 {
        if g.next().is_multiple_of(2) {
            for _ in 0..8 {
                body.push_str(g.pick(&ZH));
            }
            body.push('。');
        } else {
            for _ in 0..8 {
                body.push_str(g.pick(&EN));
                body.push(' ');
            }
            body.push_str(". ");
        }
    }
    serde_json::to_vec(&json!({ "title": title, "body": body, "no": i })).unwrap_or_default()
}

/// One replica with its search service in a temp dir.
struct Setup {
    dir: tempfile::TempDir,
    replica: Replica,
    search: Arc<Search>,
    stop: tokio::sync::watch::Sender<bool>,
    config: Config,
}

impl Setup {
    fn start(dir: tempfile::TempDir) -> Result<Setup> {
        let store = SledStore::open(dir.path())?;
        let mut opts = ReplicaOptions::new("bench");
        opts.commit = CommitMode::Sync;
        let replica = Replica::open(Arc::new(store), opts)?;
        let config = Config::builder("bench", dir.path(), dir.path().join("tls"))
            .search_collections([COLLECTION])
            .build();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let search = Search::start(&config, replica.clone(), stopped);
        Ok(Setup {
            dir,
            replica,
            search,
            stop,
            config,
        })
    }

    /// Restarts only the search service (the replica stays open).
    async fn restart_search(&mut self) {
        let _ = self.stop.send(true);
        self.search.join(Duration::from_secs(30)).await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        self.stop = stop;
        self.search = Search::start(&self.config, self.replica.clone(), stopped);
    }

    /// Waits until the index holds `docs` documents and is caught up; returns when.
    async fn wait_indexed(&self, docs: u64, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.search.status();
            let s = status.get(COLLECTION).context("collection indexed")?;
            if s.state == "ready" && s.docs == docs && s.lag_changes == 0 {
                return Ok(Instant::now());
            }
            ensure!(
                Instant::now() < deadline,
                "index not caught up after {timeout:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The `search` figures.
pub(crate) async fn run(quick: bool, rows: &mut Vec<TableRow>) -> Result<()> {
    let (docs, probes, queries) = if quick {
        (5_000, 50, 300)
    } else {
        (100_000, 300, 2_000)
    };
    progress(format_args!(
        "search: {docs} documents of ~2 KB, {WRITERS} writers, sync durability"
    ));
    let mut setup = Setup::start(tempfile::tempdir()?)?;
    setup.wait_indexed(0, Duration::from_secs(60)).await?;

    // Bulk load with the indexer following.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let replica = setup.replica.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..docs).step_by(WRITERS) {
                replica
                    .write(COLLECTION, &format!("doc/{i:06}"), Some(document(i)))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let written = start.elapsed();
    let indexed = setup
        .wait_indexed(docs as u64, Duration::from_secs(3600))
        .await?
        .duration_since(start);
    let follow_rate = docs as f64 / indexed.as_secs_f64();
    let write_rate = docs as f64 / written.as_secs_f64();
    emit(
        rows,
        json!({
            "figure": "search_index_follow", "docs": docs, "doc_bytes": document(0).len(),
            "writes_per_sec": write_rate.round(), "indexed_per_sec": follow_rate.round(),
            "write_secs": written.as_secs_f64(), "indexed_secs": indexed.as_secs_f64(),
            "note": "from the first write until every document is searchable; writes and indexing share the 2 cores",
        }),
        TableRow {
            figure: "search_index_follow".into(),
            case: format!("{docs} docs of ~2 KB, {WRITERS} writers"),
            result: format!("{follow_rate:.0} docs/s indexed"),
            baseline: format!("{write_rate:.0} writes/s (the store alone, same run)"),
            ratio: Some(follow_rate / write_rate),
            target: "-".into(),
            met: None,
        },
    );

    // Size on disk.
    let store_bytes = setup.replica.store().size_on_disk();
    let index_bytes = setup.search.status()[COLLECTION].disk_bytes;
    let ratio = index_bytes as f64 / store_bytes as f64;
    emit(
        rows,
        json!({
            "figure": "search_index_size", "docs": docs, "index_bytes": index_bytes,
            "store_bytes": store_bytes, "ratio": ratio,
        }),
        TableRow {
            figure: "search_index_size".into(),
            case: format!("{docs} docs of ~2 KB"),
            result: format!("{:.1} MiB index", index_bytes as f64 / 1048576.0),
            baseline: format!("{:.1} MiB store", store_bytes as f64 / 1048576.0),
            ratio: Some(ratio),
            target: "-".into(),
            met: None,
        },
    );

    // Apply to searchable: one write at a time of a word found nowhere else.
    let mut delays = Vec::with_capacity(probes);
    for p in 0..probes {
        let word = format!("probe{p}x");
        let value = serde_json::to_vec(&json!({ "title": format!("防汛 {word}") }))?;
        setup
            .replica
            .write(COLLECTION, &format!("probe/{p:04}"), Some(value))
            .await?;
        let acked = Instant::now();
        loop {
            match setup.search.query(COLLECTION, &word, 1).await {
                Ok(r) if r.total == 1 => break,
                Ok(_) => {}
                Err(e) => anyhow::bail!("probe query failed: {e}"),
            }
            ensure!(
                acked.elapsed() < Duration::from_secs(30),
                "probe {p} not searchable after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(acked.elapsed().as_secs_f64() * 1000.0);
        // Writes arrive spread out, not back to back.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delays.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&delays, 0.5), percentile(&delays, 0.99));
    emit(
        rows,
        json!({
            "figure": "search_apply_to_searchable", "probes": probes, "p50_ms": p50, "p99_ms": p99,
            "max_ms": delays.last().copied().unwrap_or(f64::NAN),
            "target_p99_ms": TARGET_APPLY_TO_SEARCHABLE_P99_MS,
            "target_met": p99 <= TARGET_APPLY_TO_SEARCHABLE_P99_MS,
        }),
        TableRow {
            figure: "search_apply_to_searchable".into(),
            case: format!("{probes} single writes over {docs} docs"),
            result: format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            baseline: "-".into(),
            ratio: None,
            target: format!("p99 ≤ {TARGET_APPLY_TO_SEARCHABLE_P99_MS} ms"),
            met: Some(p99 <= TARGET_APPLY_TO_SEARCHABLE_P99_MS),
        },
    );

    // Queries: one word, two words, a phrase, OR; limit 10 with snippets.
    let mut g = Gen(42);
    let mut latencies = Vec::with_capacity(queries);
    let mut total_hits = 0u64;
    for q in 0..queries {
        let text = match q % 5 {
            0 => g.pick(&ZH).to_owned(),
            1 => g.pick(&EN).to_owned(),
            2 => format!("{} {}", g.pick(&ZH), g.pick(&EN)),
            3 => format!("\"{} {}\"", g.pick(&EN), g.pick(&EN)),
            _ => format!("{} OR {}", g.pick(&ZH), g.pick(&ZH)),
        };
        let start = Instant::now();
        let r = setup
            .search
            .query(COLLECTION, &text, 10)
            .await
            .map_err(|e| anyhow::anyhow!("query {text:?}: {e}"))?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        total_hits += r.total;
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    emit(
        rows,
        json!({
            "figure": "search_query", "queries": queries, "docs": docs, "limit": 10,
            "p50_ms": p50, "p99_ms": p99, "mean_total_hits": total_hits as f64 / queries as f64,
            "target_p99_ms": TARGET_QUERY_P99_MS, "target_met": p99 <= TARGET_QUERY_P99_MS,
            "note": "Search::query in process: parse, rank, read 10 records, cut 10 snippets; no HTTP",
        }),
        TableRow {
            figure: "search_query".into(),
            case: format!("{queries} queries over {docs} docs, limit 10"),
            result: format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
            baseline: "-".into(),
            ratio: None,
            target: format!("p99 ≤ {TARGET_QUERY_P99_MS} ms"),
            met: Some(p99 <= TARGET_QUERY_P99_MS),
        },
    );

    // Rebuild from the store.
    let _ = setup.stop.send(true);
    setup.search.join(Duration::from_secs(30)).await;
    std::fs::remove_dir_all(setup.dir.path().join("search"))?;
    let start = Instant::now();
    setup.restart_search().await;
    let all = (docs + probes) as u64;
    let rebuilt = setup
        .wait_indexed(all, Duration::from_secs(3600))
        .await?
        .duration_since(start);
    let rate = all as f64 / rebuilt.as_secs_f64();
    emit(
        rows,
        json!({
            "figure": "search_index_rebuild", "docs": all, "secs": rebuilt.as_secs_f64(),
            "docs_per_sec": rate.round(),
        }),
        TableRow {
            figure: "search_index_rebuild".into(),
            case: format!("{all} docs from the store"),
            result: format!("{rate:.0} docs/s"),
            baseline: "-".into(),
            ratio: None,
            target: "-".into(),
            met: None,
        },
    );
    let _ = setup.stop.send(true);
    setup.search.join(Duration::from_secs(30)).await;
    setup.replica.close().await?;
    Ok(())
}
