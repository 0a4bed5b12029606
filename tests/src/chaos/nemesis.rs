//! The nemesis: a seeded schedule of faults, each logged as one JSON line. Link cuts (both
//! ways or one way) that heal after a few steps; delay, jitter, loss and reordering on a
//! link; `kill -9` and restart of any node (with a power loss on the power-loss filesystem);
//! SIGSTOP past the idle timeout then SIGCONT; a restart with the clock hours off (and back);
//! a wipe of a node's data dir, after which it must rejoin as a new incarnation.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::fault_proxy::{Direction, LinkFaults};
use crate::powerfs::PowerLoss;
use crate::process::{run_bounded, wait_until, CLI_TIMEOUT};
use crate::TestRng;

use super::world::{Link, World, WorldNode, COLLECTION, HUB, IDLE_TIMEOUT};

/// Clock offset of a skewed node: three hours behind.
pub const CLOCK_OFFSET_MS: i64 = -3 * 3600 * 1000;

/// Environment variable of the daemon's test-only clock hook.
pub const CLOCK_ENV: &str = "OFFICESYNC_CLOCK_OFFSET_MS";

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Cut a random link, both ways or one way, for a few steps.
    Partition,
    /// Delay, jitter, loss, duplication and reordering on a random link for a few steps.
    LinkFault,
    /// `kill -9` a node (random when `None`; index into the world's nodes) and restart it.
    Kill(Option<usize>),
    /// SIGSTOP a random node past the idle timeout, then SIGCONT.
    Pause,
    /// Restart an office with its clock hours off, fixed a few steps later.
    Clock,
    /// Wipe an office's data dir; it rejoins as a new incarnation.
    Wipe,
    /// Heal every link.
    HealAll,
}

/// The first steps of a run with `cover_all`: one of each fault, the hub's and the
/// power-loss node's kills included (node 0 is the hub, node 3 `office-b`).
pub const COVER: [Action; 7] = [
    Action::Partition,
    Action::Kill(Some(0)),
    Action::Clock,
    Action::Kill(Some(3)),
    Action::Pause,
    Action::LinkFault,
    Action::Wipe,
];

/// Counters of what the nemesis did.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Link cuts (both ways and one way).
    pub partitions: u64,
    /// Of `partitions`: one way only.
    pub one_way: u64,
    /// Delay/jitter/loss/reorder settings applied to a link.
    pub link_faults: u64,
    /// `kill -9` followed by a restart.
    pub kills: u64,
    /// Of `kills`: on the power-loss filesystem, with its unsynced data dropped.
    pub power_losses: u64,
    /// Bytes of unsynced writes the power losses dropped.
    pub power_loss_bytes: u64,
    /// SIGSTOP longer than the idle timeout, then SIGCONT.
    pub pauses: u64,
    /// Restarts with the clock hours off.
    pub clock_skews: u64,
    /// Data dirs wiped (node rejoined as a new incarnation).
    pub wipes: u64,
    /// Wipes skipped because the node's own writes could not be shown replicated first.
    pub wipes_skipped: u64,
}

/// A cut waiting to heal.
#[derive(Debug)]
struct Cut {
    link: usize,
    heal_at: u64,
}

/// The nemesis state.
#[derive(Debug)]
pub struct Nemesis {
    rng: TestRng,
    log: BufWriter<File>,
    start: Instant,
    step: u64,
    cuts: Vec<Cut>,
    faulty: Vec<Cut>,
    skewed: Option<(usize, u64)>,
    /// What it did.
    pub counts: Counts,
}

impl Nemesis {
    /// A nemesis drawing from `seed`, logging to `log`.
    pub fn new(seed: u64, log: &std::path::Path, start: Instant) -> anyhow::Result<Nemesis> {
        Ok(Nemesis {
            rng: TestRng::new(seed),
            log: BufWriter::new(File::create(log)?),
            start,
            step: 0,
            cuts: Vec::new(),
            faulty: Vec::new(),
            skewed: None,
            counts: Counts::default(),
        })
    }

    /// Logs one event.
    pub fn note(&mut self, event: &str, detail: Value) {
        let line = json!({
            "t_ms": self.start.elapsed().as_millis() as u64,
            "step": self.step, "event": event, "detail": detail,
        });
        let _ = writeln!(self.log, "{line}");
    }

    /// One step: heals what is due, then does one random thing.
    pub fn step(&mut self, world: &World) -> anyhow::Result<()> {
        self.step += 1;
        self.heal_due(world);
        let action = match self.rng.range(0, 1000) {
            0..=539 => Action::Partition,
            540..=689 => Action::LinkFault,
            690..=869 => Action::Kill(None),
            870..=884 => Action::Pause,
            885..=904 => Action::Clock,
            905..=924 => Action::Wipe,
            _ => Action::HealAll,
        };
        self.act(world, action)
    }

    /// One step doing `action`.
    pub fn forced(&mut self, world: &World, action: Action) -> anyhow::Result<()> {
        self.step += 1;
        self.heal_due(world);
        self.act(world, action)
    }

    fn act(&mut self, world: &World, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Partition => self.partition(world),
            Action::LinkFault => self.link_fault(world),
            Action::Kill(node) => self.kill(world, node)?,
            Action::Pause => self.pause(world)?,
            Action::Clock => self.clock(world)?,
            Action::Wipe => self.wipe(world)?,
            Action::HealAll => self.heal_all(world),
        }
        let _ = self.log.flush();
        Ok(())
    }

    fn heal_due(&mut self, world: &World) {
        let step = self.step;
        let (due, keep): (Vec<Cut>, Vec<Cut>) =
            self.cuts.drain(..).partition(|c| c.heal_at <= step);
        self.cuts = keep;
        for c in due {
            let link = &world.links[c.link];
            link.proxy.heal();
            self.note(
                "heal",
                json!({"link": format!("{}->{}", link.from, link.to)}),
            );
        }
        let (due, keep): (Vec<Cut>, Vec<Cut>) =
            self.faulty.drain(..).partition(|c| c.heal_at <= step);
        self.faulty = keep;
        for c in due {
            let link = &world.links[c.link];
            set_keeping_cuts(link, LinkFaults::CLEAN);
            self.note(
                "clear-faults",
                json!({"link": format!("{}->{}", link.from, link.to)}),
            );
        }
        if let Some((node, until)) = self.skewed {
            if until <= step {
                self.skewed = None;
                let n = &world.nodes[node];
                n.node.set_env(CLOCK_ENV, None);
                let _ = restart_after_kill(n);
                self.note("clock-fixed", json!({"node": n.config.name}));
            }
        }
    }

    fn partition(&mut self, world: &World) {
        let at = self.rng.range(0, world.links.len() as u64) as usize;
        let link = &world.links[at];
        let (direction, name) = match self.rng.range(0, 4) {
            0 => (Direction::ToUpstream, "one-way-up"),
            1 => (Direction::FromUpstream, "one-way-down"),
            _ => (Direction::Both, "both"),
        };
        link.proxy.cut(direction);
        let heal_at = self.step + self.rng.range(1, 10);
        self.cuts.push(Cut { link: at, heal_at });
        self.counts.partitions += 1;
        if direction != Direction::Both {
            self.counts.one_way += 1;
        }
        self.note(
            "cut",
            json!({"link": format!("{}->{}", link.from, link.to), "direction": name, "heal_step": heal_at}),
        );
    }

    fn link_fault(&mut self, world: &World) {
        let at = self.rng.range(0, world.links.len() as u64) as usize;
        let link = &world.links[at];
        let faults = LinkFaults {
            delay: Duration::from_millis(self.rng.range(0, 150)),
            jitter: Duration::from_millis(self.rng.range(0, 100)),
            loss: self.rng.range(0, 15) as f64 / 100.0,
            reorder: self.rng.range(0, 25) as f64 / 100.0,
            duplicate: self.rng.range(0, 5) as f64 / 100.0,
            cut: false,
        };
        set_keeping_cuts(link, faults);
        let heal_at = self.step + self.rng.range(2, 10);
        self.faulty.push(Cut { link: at, heal_at });
        self.counts.link_faults += 1;
        self.note(
            "link-faults",
            json!({"link": format!("{}->{}", link.from, link.to), "faults": format!("{faults:?}"), "clear_step": heal_at}),
        );
    }

    fn kill(&mut self, world: &World, node: Option<usize>) -> anyhow::Result<()> {
        let at = node.unwrap_or_else(|| self.rng.range(0, world.nodes.len() as u64) as usize);
        let n = &world.nodes[at];
        let down = Duration::from_millis(self.rng.range(100, 1500));
        let dropped = kill9(world, n);
        thread::sleep(down);
        restart_after_kill(n)?;
        self.counts.kills += 1;
        if let Some(lost) = &dropped {
            self.counts.power_losses += 1;
            self.counts.power_loss_bytes += lost.bytes;
        }
        self.note(
            "kill-9",
            json!({
                "node": n.config.name, "down_ms": down.as_millis() as u64,
                "power_loss": dropped.map(|l| json!({"bytes": l.bytes, "files": l.paths})),
            }),
        );
        Ok(())
    }

    fn pause(&mut self, world: &World) -> anyhow::Result<()> {
        let at = self.rng.range(0, world.nodes.len() as u64) as usize;
        let n = &world.nodes[at];
        let Some(pid) = n.node.pid() else {
            return Ok(());
        };
        let held = IDLE_TIMEOUT + Duration::from_millis(self.rng.range(500, 3000));
        signal("-STOP", pid)?;
        self.note(
            "sigstop",
            json!({"node": n.config.name, "for_ms": held.as_millis() as u64}),
        );
        thread::sleep(held);
        signal("-CONT", pid)?;
        self.counts.pauses += 1;
        self.note("sigcont", json!({"node": n.config.name}));
        Ok(())
    }

    fn clock(&mut self, world: &World) -> anyhow::Result<()> {
        if self.skewed.is_some() {
            return Ok(());
        }
        // An office (never a relay): its clock goes hours off until a later step fixes it.
        let at = 2 + self.rng.range(0, world.nodes.len() as u64 - 2) as usize;
        let n = &world.nodes[at];
        n.node
            .set_env(CLOCK_ENV, Some(&CLOCK_OFFSET_MS.to_string()));
        kill9(world, n);
        restart_after_kill(n)?;
        let until = self.step + self.rng.range(3, 15);
        self.skewed = Some((at, until));
        self.counts.clock_skews += 1;
        self.note(
            "clock-skew",
            json!({"node": n.config.name, "offset_ms": CLOCK_OFFSET_MS, "fix_step": until}),
        );
        Ok(())
    }

    fn wipe(&mut self, world: &World) -> anyhow::Result<()> {
        let mut at = 2 + self.rng.range(0, world.nodes.len() as u64 - 2) as usize;
        if self.skewed.is_some_and(|(s, _)| s == at) {
            // Not the node whose clock is off: the next office instead.
            at = 2 + (at - 1) % (world.nodes.len() - 2);
        }
        let n = &world.nodes[at];
        let name = n.config.name.clone();
        // Quiesce the node's clients, heal its path to the hub, and only wipe once the hub
        // holds every write the node made: a wiped disk keeps nothing that was not replicated.
        let _closed = n.gate.write().unwrap_or_else(|p| p.into_inner());
        for link in world.path_to_hub(&name) {
            link.proxy.clear();
            self.cuts.retain(|c| world.links[c.link].from != link.from);
            self.faulty
                .retain(|c| world.links[c.link].from != link.from);
        }
        for node in &world.nodes {
            if !node.node.is_running() {
                restart_after_kill(node)?;
            }
        }
        let hub = world.node(HUB).context("the hub")?;
        let replicated = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            own_writes_replicated(n, hub)
        });
        if !replicated {
            self.counts.wipes_skipped += 1;
            self.note("wipe-skipped", json!({"node": name}));
            return Ok(());
        }
        kill9(world, n);
        std::fs::remove_dir_all(&n.config.data_dir)
            .with_context(|| format!("wipe {}", n.config.data_dir.display()))?;
        restart_after_kill(n)?;
        self.counts.wipes += 1;
        self.note("wipe", json!({"node": name}));
        Ok(())
    }

    /// Heals every link and clears every fault.
    pub fn heal_all(&mut self, world: &World) {
        for link in &world.links {
            link.proxy.clear();
        }
        self.cuts.clear();
        self.faulty.clear();
        self.note("heal-all", json!({}));
    }

    /// Ends every fault for a quiet phase: links healed, the skewed clock fixed, every node
    /// running.
    pub fn calm(&mut self, world: &World) -> anyhow::Result<()> {
        self.heal_all(world);
        if let Some((node, _)) = self.skewed.take() {
            let n = &world.nodes[node];
            n.node.set_env(CLOCK_ENV, None);
            kill9(world, n);
            restart_after_kill(n)?;
            self.note("clock-fixed", json!({"node": n.config.name}));
        }
        for n in &world.nodes {
            if !n.node.is_running() {
                restart_after_kill(n)?;
            }
        }
        let _ = self.log.flush();
        Ok(())
    }
}

/// Sets `faults` on both directions of `link`, keeping each direction's cut as it is.
fn set_keeping_cuts(link: &Link, faults: LinkFaults) {
    let now = link.proxy.faults();
    for (direction, cut) in [
        (Direction::ToUpstream, now.to_upstream.cut),
        (Direction::FromUpstream, now.from_upstream.cut),
    ] {
        link.proxy
            .set_faults(direction, LinkFaults { cut, ..faults });
    }
}

/// True when `hub`'s vv for `node`'s own replica covers every write `node` made.
fn own_writes_replicated(node: &WorldNode, hub: &WorldNode) -> bool {
    let (Some(mine), Some(theirs)) = (node.status(), hub.status()) else {
        return false;
    };
    let Some(id) = mine["replica"].as_str() else {
        return false;
    };
    let own = mine["vv"][COLLECTION][id].as_u64().unwrap_or(0);
    let held = theirs["vv"][COLLECTION][id].as_u64().unwrap_or(0);
    held >= own
}

/// `kill -9` of a running node; on the power-loss filesystem, the power goes too. Returns the
/// bytes of unsynced data dropped, for a node on the power-loss filesystem.
pub fn kill9(world: &World, n: &WorldNode) -> Option<PowerLoss> {
    if n.node.is_running() {
        n.node.kill9();
    }
    match (&world.powerfs, n.on_powerfs) {
        (Some(fs), true) => Some(fs.power_loss()),
        _ => None,
    }
}

/// Starts a stopped node again; an error (with its log) if it does not come up.
pub fn restart_after_kill(n: &WorldNode) -> anyhow::Result<()> {
    if n.node.is_running() {
        n.node.kill9();
    }
    n.node
        .try_restart()
        .map_err(|e| anyhow::anyhow!("{} did not restart: {e}", n.config.name))
}

/// Sends a signal with the `kill` command.
fn signal(which: &str, pid: u32) -> anyhow::Result<()> {
    let mut cmd = Command::new("kill");
    cmd.args([which, &pid.to_string()]);
    let out = run_bounded(cmd, None, CLI_TIMEOUT);
    anyhow::ensure!(out.status.success(), "kill {which} {pid} failed");
    Ok(())
}
