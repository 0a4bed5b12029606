//! This node's compression dictionaries: one per collection, trained from a sample of the
//! collection's own values once it holds enough of them (and is not in the middle of filling
//! up), retrained rarely (when it has grown
//! [`RETRAIN_GROWTH`] times and [`RETRAIN_AFTER`] has passed, [`RETRAIN_YOUNG_AFTER`] while it
//! is younger than a full sample), and published to every session, which offers them to its
//! peer (protocol 3).
//!
//! Training reads at most [`MAX_TRAINING_BYTES`] of values and runs on a thread of its own at
//! the lowest priority (a few hundred milliseconds for the largest sample in an optimised
//! build); a dictionary that does not shrink the sample is dropped; at most
//! [`MAX_DICTIONARY_COLLECTIONS`] collections get one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use officesync_protocol::sync::LocalDictionary;
use officesync_protocol::wire::MAX_DICTIONARY_COLLECTIONS;
use tokio::sync::watch;

use crate::replica::Replica;
use crate::transport::{train_dictionary, MAX_TRAINING_BYTES, MIN_TRAINING_SAMPLES};

/// How often collections are looked at (a read of each collection's record count) while
/// writes arrive or a collection is filling up.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How often collections are looked at on a node with no writes (whose last look found none
/// filling up): time alone can make a retraining due. An idle node otherwise does not wake
/// the trainer; at a thousand nodes on one machine every periodic wakeup counts.
const IDLE_LOOK: Duration = Duration::from_secs(60);

/// A collection is retrained once it holds this many times the records of its last training...
pub(crate) const RETRAIN_GROWTH: u64 = 4;

/// ... and at least this long after it...
pub(crate) const RETRAIN_AFTER: Duration = Duration::from_secs(3600);

/// ... or this long, while the last training sampled fewer than a full sample's values (a
/// young collection's first dictionaries improve quickly as it grows: at most a handful).
pub(crate) const RETRAIN_YOUNG_AFTER: Duration = Duration::from_secs(600);

/// A collection that grew by more than this fraction since the last look is still filling
/// up: it is trained once it settles or holds a full sample, so a bulk load gets one
/// dictionary of its values rather than one of its first few (and a retrain, and a second
/// offer to every peer, soon after).
const FILLING_GROWTH: f64 = 0.1;

/// Most values one training reads.
const SAMPLE_VALUES: usize = 1_024;

/// Records per scan page while sampling.
const SAMPLE_PAGE: usize = 256;

/// The published set: this node's dictionaries, one per collection.
pub(crate) type Published = Arc<Vec<LocalDictionary>>;

/// Collections with no dictionary: `_nodes` (certificates) and `_policy` (rare writes).
fn trainable(collection: &str) -> bool {
    collection != officesync_protocol::signing::NODES_COLLECTION && collection != "_policy"
}

/// What the trainer remembers of a collection.
struct Trained {
    /// Records at the last attempt (successful or not).
    records: u64,
    /// When it was.
    at: Instant,
    /// It produced a dictionary.
    ok: bool,
}

/// Trains and publishes dictionaries until `shutdown` (or the store closes).
pub(crate) async fn train_loop(
    replica: Replica,
    publish: watch::Sender<Published>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut state: HashMap<String, Trained> = HashMap::new();
    // Records of each collection at the last look.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut dicts: Vec<LocalDictionary> = Vec::new();
    let mut durable = replica.durable();
    // The last look found no collection filling up: the next waits for a write.
    let mut settled = false;
    loop {
        if settled {
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(IDLE_LOOK) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        durable.borrow_and_update();
        let Ok(collections) = replica.collections().await else {
            if !replica.is_open() {
                return;
            }
            continue;
        };
        settled = true;
        for c in collections {
            let records = c.meta.records;
            let before = seen.insert(c.name.clone(), records).unwrap_or(0);
            let filling = records < SAMPLE_VALUES as u64
                && records as f64 > before as f64 * (1.0 + FILLING_GROWTH);
            if filling {
                settled = false;
            }
            if !trainable(&c.name) || filling || !due(state.get(&c.name), records, dicts.len()) {
                continue;
            }
            let started = Instant::now();
            let samples = sample(&replica, &c.name).await;
            let trained = train_in_background(samples).await;
            let ms = started.elapsed().as_millis() as u64;
            let ok = trained.is_some();
            state.insert(
                c.name.clone(),
                Trained {
                    records,
                    at: Instant::now(),
                    ok,
                },
            );
            if let Some(bytes) = trained {
                let d = LocalDictionary::new(&c.name, bytes.into());
                tracing::info!(
                    collection = %c.name, id = %d.id, bytes = d.bytes.len(), records, ms,
                    "compression dictionary trained"
                );
                dicts.retain(|old| old.collection != c.name);
                dicts.push(d);
                publish.send_replace(Arc::new(dicts.clone()));
            } else {
                tracing::debug!(
                    collection = %c.name, records, ms,
                    "no compression dictionary worth keeping"
                );
            }
        }
    }
}

/// Nice value of the trainer's thread: the lowest priority, so that a training (tens to
/// hundreds of milliseconds of CPU) runs on the time that replication leaves idle and never
/// delays a live write's hop.
const TRAINER_NICE: i32 = 19;

/// Trains a dictionary from `samples` on a thread of its own at [`TRAINER_NICE`]; `None` if
/// it trains none (or the thread cannot start).
async fn train_in_background(samples: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    at_low_priority("officesync-train", move || train_dictionary(&samples))
        .await
        .flatten()
}

/// Runs `work` on a new thread named `name` whose nice value is [`TRAINER_NICE`] (Linux sets
/// it per thread); `None` if the thread cannot start or dies.
async fn at_low_priority<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let me = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(me), TRAINER_NICE) {
                tracing::debug!(error = %e, "cannot lower a background thread's priority");
            }
            let _ = tx.send(work());
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, thread = name, "cannot start a background thread");
        return None;
    }
    rx.await.ok()
}

/// Whether a collection of `records` records is due a training: never tried and big enough
/// (while fewer than [`MAX_DICTIONARY_COLLECTIONS`] have one), tried in vain and doubled
/// since, or trained and grown [`RETRAIN_GROWTH`] times at least [`RETRAIN_AFTER`] ago.
fn due(last: Option<&Trained>, records: u64, trained: usize) -> bool {
    let enough = records >= MIN_TRAINING_SAMPLES as u64;
    match last {
        None => enough && trained < MAX_DICTIONARY_COLLECTIONS,
        Some(t) if !t.ok => enough && records >= t.records.saturating_mul(2),
        Some(t) => {
            let after = if t.records < SAMPLE_VALUES as u64 {
                RETRAIN_YOUNG_AFTER
            } else {
                RETRAIN_AFTER
            };
            records >= t.records.saturating_mul(RETRAIN_GROWTH) && t.at.elapsed() >= after
        }
    }
}

/// Up to [`SAMPLE_VALUES`] values (about [`MAX_TRAINING_BYTES`] at most) of `collection`.
async fn sample(replica: &Replica, collection: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut after: Option<String> = None;
    while out.len() < SAMPLE_VALUES && bytes < MAX_TRAINING_BYTES {
        let Ok(page) = replica
            .scan(collection, "", after.as_deref(), SAMPLE_PAGE)
            .await
        else {
            break;
        };
        for r in page.records {
            if let Some(v) = r.sibling.value {
                bytes += v.len();
                out.push(v);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let nice_of_this_thread =
            || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let before = nice_of_this_thread().expect("own nice value");
        let seen = at_low_priority("officesync-test", nice_of_this_thread)
            .await
            .expect("the thread ran")
            .expect("its nice value");
        assert_eq!(seen, TRAINER_NICE);
        assert_eq!(nice_of_this_thread().expect("own nice value"), before);
    }

    #[test]
    fn training_is_due_rarely() {
        let min = MIN_TRAINING_SAMPLES as u64;
        assert!(!due(None, min - 1, 0));
        assert!(due(None, min, 0));
        assert!(!due(None, min, MAX_DICTIONARY_COLLECTIONS));
        let failed = Trained {
            records: 100,
            at: Instant::now(),
            ok: false,
        };
        assert!(!due(Some(&failed), 150, 0));
        assert!(due(Some(&failed), 200, 0));
        let fresh = Trained {
            records: 100,
            at: Instant::now(),
            ok: true,
        };
        assert!(!due(Some(&fresh), 10_000, 0), "not within ten minutes");
        let Some(at) = Instant::now().checked_sub(RETRAIN_YOUNG_AFTER) else {
            return; // the clock started less than ten minutes ago
        };
        let young = Trained {
            records: 100,
            at,
            ok: true,
        };
        assert!(!due(Some(&young), 399, 0));
        assert!(due(Some(&young), 400, 0));
        let grown = Trained {
            records: SAMPLE_VALUES as u64,
            at,
            ok: true,
        };
        assert!(
            !due(Some(&grown), 100 * SAMPLE_VALUES as u64, 0),
            "not within the hour"
        );
        let Some(at) = Instant::now().checked_sub(RETRAIN_AFTER) else {
            return; // the clock started less than an hour ago
        };
        let old = Trained { at, ..grown };
        assert!(!due(Some(&old), 4 * SAMPLE_VALUES as u64 - 1, 0));
        assert!(due(Some(&old), 4 * SAMPLE_VALUES as u64, 0));
    }

    #[test]
    fn system_collections_of_rare_writes_get_none() {
        assert!(!trainable("_nodes"));
        assert!(!trainable("_policy"));
        assert!(trainable("_status"));
        assert!(trainable("situation"));
    }
}
