//! The checker: after the final heal and quiescence, reads every node and holds the history
//! against it. Every acknowledged put of a unique key that no delete may have removed is
//! readable with its value on every node; an acknowledged delete stays deleted everywhere (no
//! resurrection, wipes included); a put that definitely failed is nowhere; every value on any
//! node is one a client wrote for that key; the contested keys hold the same siblings and the
//! same winner on every node.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::http::record_path;

use super::history::{Op, Outcome, HOT_KEYS};
use super::world::{World, COLLECTION};

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Acknowledged puts (not possibly deleted) missing or different on at least one node
    /// (each counted once).
    pub lost: u64,
    /// Keys whose acknowledged delete was undone on some node.
    pub resurrected: u64,
    /// Puts that definitely failed but whose value is present.
    pub failed_but_present: u64,
    /// Values present that no client wrote for that key.
    pub unexpected_values: u64,
    /// Contested keys whose siblings or winner differ between nodes.
    pub divergent_keys: u64,
    /// Contested keys with acknowledged writes but no live sibling.
    pub empty_contested: u64,
    /// Live records per node after the run.
    pub records: BTreeMap<String, usize>,
    /// The first problems, described.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.resurrected == 0
            && self.failed_but_present == 0
            && self.unexpected_values == 0
            && self.divergent_keys == 0
            && self.empty_contested == 0
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < 20 {
            self.problems.push(text);
        }
    }

    /// As JSON for the summary.
    pub fn to_json(&self) -> Value {
        json!({
            "acknowledged_but_lost": self.lost,
            "resurrected": self.resurrected,
            "failed_but_present": self.failed_but_present,
            "unexpected_values": self.unexpected_values,
            "divergent_contested_keys": self.divergent_keys,
            "empty_contested_keys": self.empty_contested,
            "records_per_node": self.records,
            "problems": self.problems,
        })
    }
}

/// Every live record of the collection on one node: key -> (winner version, value).
type Records = HashMap<String, (String, Vec<u8>)>;

/// Checks `ops` against what every node of `world` holds now.
pub fn check(world: &World, ops: &[Op]) -> anyhow::Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut nodes: Vec<(String, Records)> = Vec::new();
    for n in &world.nodes {
        let api = n.api();
        let records: Records = api
            .scan(COLLECTION, "")
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.key, (e.version, v))))
            .collect();
        report.records.insert(n.config.name.clone(), records.len());
        nodes.push((n.config.name.clone(), records));
    }
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    // Unique keys: one put each, maybe followed by a delete.
    for (key, key_ops) in by_key.iter().filter(|(k, _)| k.starts_with("u/")) {
        let Some(put) = key_ops.iter().find(|o| !o.delete) else {
            continue;
        };
        let value = put.value.as_deref().unwrap_or_default().as_bytes();
        let deletes: Vec<&&Op> = key_ops.iter().filter(|o| o.delete).collect();
        let deleted = deletes.iter().any(|d| d.outcome == Outcome::Ok);
        let maybe_deleted = deletes.iter().any(|d| d.outcome != Outcome::Failed);
        let mut lost_here = false;
        for (node, records) in &nodes {
            let held = records.get(*key);
            let present = held.is_some_and(|(_, v)| v == value);
            match put.outcome {
                Outcome::Ok if deleted && held.is_some() => {
                    report.resurrected += 1;
                    report.problem(format!("{key}: deleted (acknowledged) but live on {node}"));
                }
                Outcome::Ok if !maybe_deleted && !present => {
                    lost_here = true;
                    report.problem(format!(
                        "{key}: put {} acknowledged as {:?} is {} on {node}",
                        put.id,
                        put.version,
                        if held.is_some() {
                            "different"
                        } else {
                            "missing"
                        }
                    ));
                }
                Outcome::Failed if held.is_some() => {
                    report.failed_but_present += 1;
                    report.problem(format!(
                        "{key}: put {} failed but is live on {node}",
                        put.id
                    ));
                }
                _ => {}
            }
        }
        if lost_here {
            report.lost += 1;
        }
    }
    // Values: each one written by a client, for that key.
    let written: HashMap<&str, BTreeSet<&[u8]>> = by_key
        .iter()
        .map(|(k, ops)| {
            let values = ops
                .iter()
                .filter(|o| o.outcome != Outcome::Failed)
                .filter_map(|o| o.value.as_deref().map(str::as_bytes))
                .collect();
            (*k, values)
        })
        .collect();
    for (node, records) in &nodes {
        for (key, (_, value)) in records {
            if !written
                .get(key.as_str())
                .is_some_and(|w| w.contains(value.as_slice()))
            {
                report.unexpected_values += 1;
                report.problem(format!(
                    "{key} on {node} holds {:?}, which no client wrote",
                    String::from_utf8_lossy(value)
                ));
            }
        }
    }
    check_contested(world, &nodes, &by_key, &written, &mut report)?;
    Ok(report)
}

/// The contested keys: identical sibling sets and winners everywhere, values from clients.
fn check_contested(
    world: &World,
    nodes: &[(String, Records)],
    by_key: &HashMap<&str, Vec<&Op>>,
    written: &HashMap<&str, BTreeSet<&[u8]>>,
    report: &mut CheckReport,
) -> anyhow::Result<()> {
    for i in 0..HOT_KEYS {
        let key = format!("hot/{i}");
        let mut seen: Option<(String, Vec<Value>)> = None;
        for n in &world.nodes {
            let path = format!("{}?all=true", record_path(COLLECTION, &key));
            let reply = n
                .api()
                .request("GET", &path, None)
                .map_err(|e| anyhow::anyhow!("GET {path} on {}: {e}", n.config.name))?;
            let mut siblings = match reply.status {
                404 => Vec::new(),
                200 => reply.json()["siblings"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                s => anyhow::bail!("GET {path} on {}: HTTP {s}", n.config.name),
            };
            siblings.sort_by_key(|s| s["version"].as_str().unwrap_or_default().to_owned());
            for s in &siblings {
                let Some(b64) = s["value_base64"].as_str() else {
                    continue;
                };
                let value = BASE64.decode(b64).unwrap_or_default();
                if !written
                    .get(key.as_str())
                    .is_some_and(|w| w.contains(value.as_slice()))
                {
                    report.unexpected_values += 1;
                    report.problem(format!(
                        "{key} sibling on {} was never written",
                        n.config.name
                    ));
                }
            }
            match &seen {
                None => seen = Some((n.config.name.clone(), siblings)),
                Some((first, theirs)) if *theirs != siblings => {
                    report.divergent_keys += 1;
                    report.problem(format!(
                        "{key}: siblings on {} differ from {first}",
                        n.config.name
                    ));
                }
                Some(_) => {}
            }
        }
        let winners: BTreeSet<Option<&String>> = nodes
            .iter()
            .map(|(_, r)| r.get(&key).map(|(v, _)| v))
            .collect();
        if winners.len() > 1 {
            report.divergent_keys += 1;
            report.problem(format!("{key}: winners differ between nodes: {winners:?}"));
        }
        let acked = by_key
            .get(key.as_str())
            .is_some_and(|ops| ops.iter().any(|o| o.outcome == Outcome::Ok));
        if acked && nodes.iter().any(|(_, r)| !r.contains_key(&key)) {
            report.empty_contested += 1;
            report.problem(format!(
                "{key}: acknowledged writes but no live value on some node"
            ));
        }
    }
    Ok(())
}
