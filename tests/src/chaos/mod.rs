//! The fault-injection (chaos) suite, modelled on Jepsen's set workload: real daemons on
//! loopback behind the UDP fault proxy (see [`world`]), concurrent clients writing unique and
//! contested keys through the HTTP API (see [`history`]), a seeded nemesis (see [`nemesis`])
//! and, after the final heal and quiescence, a checker (see [`checker`]). [`run`] returns one
//! JSON summary.
//!
//! Every loop is bounded in steps and time; all traffic stays on loopback. The run's files
//! (configs, daemon logs, `history.jsonl`, `nemesis.jsonl`) are in the cluster temp dir, kept
//! with `OFFICESYNC_TEST_KEEP=1`.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod world;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::TestRng;

use history::{Client, ClientSpec, History, Outcome};
use nemesis::{Action, Nemesis};
use world::{World, COLLECTION, RELAY};

/// Environment variable selecting the long run.
pub const LONG_ENV: &str = "OFFICESYNC_CHAOS_LONG";

/// How a run goes.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Seed of the nemesis, the proxies and the clients.
    pub seed: u64,
    /// Least time the faults run.
    pub duration: Duration,
    /// Hard cap on the fault phase, whatever the targets.
    pub hard_cap: Duration,
    /// Mean pause between nemesis steps.
    pub step: Duration,
    /// Most nemesis steps.
    pub max_steps: u64,
    /// Keep going (up to `hard_cap`) until this many partitions...
    pub target_partitions: u64,
    /// ...and this many kills.
    pub target_kills: u64,
    /// A quiet checkpoint (clients paused, faults healed, convergence timed) every this many
    /// steps; 0 for none before the end.
    pub checkpoint_every: u64,
    /// Faults done first, in order, before the random schedule (see [`nemesis::COVER`]).
    pub cover: Vec<Action>,
    /// Clients per node.
    pub clients_per_node: usize,
    /// Pause between a client's operations.
    pub client_pause: Duration,
    /// Put `office-b`'s data on the power-loss filesystem.
    pub power_loss: bool,
    /// `office-b`'s `storage.durability`: `"sync"`, or `"periodic"` (flushed every 15 s)
    /// only for the negative control that shows the checker catching lost writes.
    pub office_b_durability: &'static str,
    /// How long convergence may take after a heal.
    pub converge_timeout: Duration,
}

impl ChaosOptions {
    /// The short run CI does every time (about a minute of faults).
    pub fn short(seed: u64) -> Self {
        ChaosOptions {
            seed,
            duration: Duration::from_secs(45),
            hard_cap: Duration::from_secs(60),
            step: Duration::from_millis(600),
            max_steps: 200,
            target_partitions: 0,
            target_kills: 0,
            checkpoint_every: 0,
            cover: nemesis::COVER.to_vec(),
            clients_per_node: 1,
            client_pause: Duration::from_millis(30),
            power_loss: true,
            office_b_durability: "sync",
            converge_timeout: Duration::from_secs(90),
        }
    }

    /// The long run: at least 1000 partitions and 100 kills.
    pub fn long(seed: u64) -> Self {
        ChaosOptions {
            seed,
            duration: Duration::from_secs(60),
            hard_cap: Duration::from_secs(60 * 60),
            step: Duration::from_millis(350),
            max_steps: 20_000,
            target_partitions: 1000,
            target_kills: 100,
            checkpoint_every: 150,
            cover: nemesis::COVER.to_vec(),
            clients_per_node: 1,
            client_pause: Duration::from_millis(40),
            power_loss: true,
            office_b_durability: "sync",
            converge_timeout: Duration::from_secs(120),
        }
    }
}

/// Runs the suite once; `Ok` with the summary whatever the checker found (see
/// `summary["ok"]`), `Err` when the run itself broke down (a node that does not restart, no
/// convergence after a heal).
pub fn run(opts: &ChaosOptions) -> anyhow::Result<Value> {
    let start = Instant::now();
    let world = World::start(opts.seed, opts.power_loss, opts.office_b_durability)?;
    let dir = world.log_dir();
    eprintln!("chaos seed {}: files in {}", opts.seed, dir.display());
    if let Some(why) = &world.powerfs_skipped {
        eprintln!("chaos: power-loss filesystem not used: {why}");
    }
    let history = Arc::new(History::new(&dir.join("history.jsonl"), start)?);
    let mut nemesis = Nemesis::new(opts.seed ^ 0x6e65_6d65, &dir.join("nemesis.jsonl"), start)?;
    let mut convergence = Vec::new();
    convergence.push(converge(&world, opts.converge_timeout, true)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = TestRng::new(opts.seed ^ 0x636c_6965);
    let mut clients = Vec::new();
    for n in &world.nodes {
        for c in 0..opts.clients_per_node {
            let spec = ClientSpec {
                name: format!("{}-{c}", n.config.name),
                node: n.config.name.clone(),
                api: n.api(),
                gate: n.gate.clone(),
                seed: rng.next_u64(),
                pause: opts.client_pause,
                max_ops: 1_000_000,
            };
            clients.push(Client::start(spec, history.clone(), stop.clone()));
        }
    }
    let faults_started = Instant::now();
    let outcome = fault_phase(opts, &world, &mut nemesis, &mut rng, &mut convergence);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join();
    }
    let fault_time = faults_started.elapsed();
    outcome?;
    nemesis.calm(&world)?;
    convergence.push(converge(&world, opts.converge_timeout, false)?);
    history.flush();
    let ops = history.snapshot();
    let report = checker::check(&world, &ops)?;
    let mut by_outcome = std::collections::BTreeMap::new();
    for o in [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Unknown,
        Outcome::Invoked,
    ] {
        by_outcome.insert(
            o.name(),
            ops.iter().filter(|op| op.outcome == o).count() as u64,
        );
    }
    let samples: Vec<u64> = convergence
        .iter()
        .skip(1)
        .map(|d| d.as_millis() as u64)
        .collect();
    let counts = &nemesis.counts;
    let summary = json!({
        "ok": report.ok(),
        "seed": opts.seed,
        "duration_s": start.elapsed().as_secs(),
        "fault_phase_s": fault_time.as_secs(),
        "nodes": world.nodes.len(),
        "partitions": counts.partitions,
        "one_way_cuts": counts.one_way,
        "link_faults": counts.link_faults,
        "kills": counts.kills,
        "power_losses": counts.power_losses,
        "power_loss_bytes_dropped": counts.power_loss_bytes,
        "power_loss_fs": world.powerfs.is_some(),
        "pauses": counts.pauses,
        "clock_skews": counts.clock_skews,
        "wipes": counts.wipes,
        "wipes_skipped": counts.wipes_skipped,
        "operations": {
            "total": ops.len(),
            "by_outcome": by_outcome,
            "deletes_acknowledged": ops.iter().filter(|o| o.delete && o.outcome == Outcome::Ok).count(),
        },
        "acknowledged_but_lost": report.lost,
        "convergence_after_heal_ms": {
            "samples": samples.len(),
            "p50": percentile(&samples, 50),
            "max": samples.iter().max(),
        },
        "check": report.to_json(),
    });
    Ok(summary)
}

/// The nemesis steps, with checkpoints, until the time and targets are met.
fn fault_phase(
    opts: &ChaosOptions,
    world: &World,
    nemesis: &mut Nemesis,
    rng: &mut TestRng,
    convergence: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    for step in 1..=opts.max_steps {
        let elapsed = start.elapsed();
        let targets_met = nemesis.counts.partitions >= opts.target_partitions
            && nemesis.counts.kills >= opts.target_kills;
        if (elapsed >= opts.duration && targets_met) || elapsed >= opts.hard_cap {
            break;
        }
        if let Some(&action) = opts.cover.get(step as usize - 1) {
            nemesis.forced(world, action)?;
        } else {
            nemesis.step(world)?;
        }
        let ms = opts.step.as_millis() as u64;
        thread::sleep(Duration::from_millis(rng.range(ms / 2, ms * 3 / 2 + 1)));
        if opts.checkpoint_every > 0 && step % opts.checkpoint_every == 0 {
            // Quiesce every client, heal everything, and time the convergence.
            let gates: Vec<_> = world.nodes.iter().map(|n| n.gate.clone()).collect();
            let _closed: Vec<_> = gates
                .iter()
                .map(|g| g.write().unwrap_or_else(|p| p.into_inner()))
                .collect();
            nemesis.calm(world)?;
            let took = converge(world, opts.converge_timeout, false)?;
            nemesis.note(
                "checkpoint",
                json!({"converged_ms": took.as_millis() as u64}),
            );
            eprintln!(
                "chaos: step {step}, {:?} in: {} partitions, {} kills; converged in {took:?}",
                start.elapsed(),
                nemesis.counts.partitions,
                nemesis.counts.kills
            );
            convergence.push(took);
        }
    }
    Ok(())
}

/// Waits until every node reports the same digest, record count and version vector for the
/// collection (or, with `initial`, until the sessions are up); returns how long it took.
fn converge(world: &World, timeout: Duration, initial: bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let states: Vec<Option<Value>> = world.nodes.iter().map(|n| n.status()).collect();
        if initial {
            let up = |node: usize, peer: &str| {
                states[node].as_ref().is_some_and(|s| {
                    s["peers"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["name"] == peer && p["connected"] == Value::Bool(true))
                    })
                })
            };
            if up(0, RELAY) && up(0, "office-a") && up(0, "office-b") && up(1, "office-c") {
                return Ok(start.elapsed());
            }
        } else {
            let views: Vec<Option<(Value, Value, Value)>> = states
                .iter()
                .map(|s| {
                    s.as_ref().map(|s| {
                        let c = &s["collections"][COLLECTION];
                        (
                            c["digest"].clone(),
                            c["records"].clone(),
                            s["vv"][COLLECTION].clone(),
                        )
                    })
                })
                .collect();
            if views.iter().all(Option::is_some) && views.windows(2).all(|w| w[0] == w[1]) {
                return Ok(start.elapsed());
            }
            last = world
                .nodes
                .iter()
                .zip(&views)
                .map(|(n, v)| format!("\n  {}: {v:?}", n.config.name))
                .collect();
        }
        thread::sleep(Duration::from_millis(100));
    }
    let peers: String = world
        .nodes
        .iter()
        .map(|n| {
            format!(
                "\n  {} peers: {}",
                n.config.name,
                n.status().map_or(Value::Null, |s| s["peers"].clone())
            )
        })
        .collect();
    anyhow::bail!(
        "no {} after {timeout:?} (files in {}):{last}{peers}",
        if initial { "sessions" } else { "convergence" },
        world.log_dir().display()
    )
}

/// The `p`-th percentile of `samples` (nearest rank), `None` when empty.
pub fn percentile(samples: &[u64], p: usize) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[5], 50), Some(5));
        assert_eq!(percentile(&[4, 1, 3, 2], 50), Some(2));
        assert_eq!(percentile(&[4, 1, 3, 2], 100), Some(4));
    }
}
