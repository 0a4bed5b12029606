//! `[[sync.limit]]` and `sync.urgent`: per-peer bandwidth limits in force in local-time
//! windows, and the collections that bypass them. Parses rates (`"2 Mbit/s"`, `"512 KiB/s"`)
//! and windows (`"Mon-Fri 08:00-18:00"`), and says which limit is in force for a peer at a
//! given local time.

use std::fmt;

use officesync_protocol::names::validate_collection_name;
use serde::Deserialize;

/// Smallest accepted rate, in bytes per second (8 kbit/s).
pub const MIN_RATE_BYTES: u64 = 1_000;
/// Largest accepted rate, in bytes per second (100 Gbit/s).
pub const MAX_RATE_BYTES: u64 = 12_500_000_000;
/// Most `[[sync.limit]]` entries.
pub const MAX_LIMITS: usize = 64;
/// Most collections in `sync.urgent`.
pub const MAX_URGENT: usize = 64;

/// One `[[sync.limit]]` entry as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The peers it applies to: node names, or `"*"` for every peer.
    pub peers: Vec<String>,
    /// The rate, with its unit: `"2 Mbit/s"`, `"256 kbit/s"`, `"1.5 MB/s"`, `"512 KiB/s"`.
    pub rate: String,
    /// When it is in force, in the node's local time: days and a time range, like
    /// `"Mon-Fri 08:00-18:00"`, `"Sat,Sun"` or `"22:00-06:00"`. Omitted: always.
    #[serde(default)]
    pub when: Option<String>,
}

/// A rate in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(u64);

impl Rate {
    /// A rate of `bytes` per second.
    pub fn from_bytes_per_sec(bytes: u64) -> Self {
        Rate(bytes)
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Rate {
    /// In bits per second with the largest decimal unit that keeps a number of at least 1
    /// (`2 Mbit/s`, `1.5 Mbit/s`, `800 kbit/s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0 as f64 * 8.0;
        let (n, unit) = if bits >= 1e9 {
            (bits / 1e9, "Gbit/s")
        } else if bits >= 1e6 {
            (bits / 1e6, "Mbit/s")
        } else if bits >= 1e3 {
            (bits / 1e3, "kbit/s")
        } else {
            (bits, "bit/s")
        };
        let rounded = (n * 1000.0).round() / 1000.0;
        write!(f, "{rounded} {unit}")
    }
}

/// Parses a rate with its unit. Bits: `bit/s`, `kbit/s`, `Mbit/s`, `Gbit/s` (also `bps`,
/// `kbps`, `Mbps`, `Gbps`), decimal. Bytes: `B/s`, `kB/s`/`KB/s`, `MB/s`, `GB/s` (decimal) and
/// `KiB/s`, `MiB/s`, `GiB/s` (binary). A space between number and unit is optional.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let factor = if let Some(prefix) = unit.to_ascii_lowercase().strip_suffix("bit/s") {
        bit_factor(prefix)
    } else if let Some(prefix) = unit.strip_suffix("bps") {
        bit_factor(&prefix.to_ascii_lowercase())
    } else if let Some(prefix) = unit.strip_suffix("B/s") {
        byte_factor(prefix)
    } else {
        None
    }
    .ok_or_else(|| {
        format!("{text:?} has no known unit (bit/s, kbit/s, Mbit/s, Gbit/s, B/s, KiB/s, MiB/s, MB/s...)")
    })?;
    let bytes = n * factor;
    if !bytes.is_finite() || bytes < MIN_RATE_BYTES as f64 || bytes > MAX_RATE_BYTES as f64 {
        return Err(format!("{text:?} is out of range (8 kbit/s to 100 Gbit/s)"));
    }
    Ok(Rate(bytes.round() as u64))
}

/// Bytes per second of one unit of `prefix` bits per second (`""`, `k`, `m`, `g`).
fn bit_factor(prefix: &str) -> Option<f64> {
    let base = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        _ => return None,
    };
    Some(base / 8.0)
}

/// Bytes per second of one unit of `prefix` bytes per second (`""`, `k`/`K`, `M`, `G`,
/// `Ki`, `Mi`, `Gi`).
fn byte_factor(prefix: &str) -> Option<f64> {
    Some(match prefix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

/// When a limit is in force: on some days of the week, between two times of day (local
/// time). A range past midnight (`22:00-06:00`) runs into the next day: the days name the day
/// it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Days it starts on, Monday first.
    days: [bool; 7],
    /// Start, minutes after midnight.
    start: u16,
    /// End, minutes after midnight (1440: midnight at the end of the day); equal to `start`
    /// only for the whole day.
    end: u16,
}

/// Day names, Monday first.
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Minutes in a day.
const DAY_MINUTES: u16 = 24 * 60;

impl Window {
    /// Every day, all day.
    pub const ALWAYS: Window = Window {
        days: [true; 7],
        start: 0,
        end: DAY_MINUTES,
    };

    /// True at local time `weekday` (0 = Monday) and `minute` after midnight.
    pub fn contains(&self, weekday: usize, minute: u16) -> bool {
        let weekday = weekday % 7;
        let yesterday = (weekday + 6) % 7;
        if self.start < self.end {
            self.days[weekday] && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: the evening part belongs to today, the morning part to the day
            // the window started on.
            (self.days[weekday] && minute >= self.start)
                || (self.days[yesterday] && minute < self.end)
        }
    }
}

/// Parses `[DAYS] [HH:MM-HH:MM]`: days as a list of days and ranges (`Mon-Fri`, `Sat,Sun`,
/// `Mon,Wed-Fri`, `Fri-Mon`; three-letter or full English names, any case) and a time range
/// (`24:00` may end it). At least one of the two; a missing one means every day or all day.
pub fn parse_window(text: &str) -> Result<Window, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (days, times) = match parts.as_slice() {
        [one] if one.contains(':') => (None, Some(*one)),
        [one] => (Some(*one), None),
        [d, t] => (Some(*d), Some(*t)),
        _ => {
            return Err(format!(
                "{text:?} is not \"DAYS HH:MM-HH:MM\" (like \"Mon-Fri 08:00-18:00\")"
            ))
        }
    };
    let mut w = Window::ALWAYS;
    if let Some(d) = days {
        w.days = parse_days(d).ok_or_else(|| {
            format!("{text:?}: {d:?} is not a list of days (like \"Mon-Fri\" or \"Sat,Sun\")")
        })?;
    }
    if let Some(t) = times {
        let bad = || format!("{text:?}: {t:?} is not a time range HH:MM-HH:MM (like 08:00-18:00)");
        let (a, b) = t.split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            parse_minute(a).ok_or_else(bad)?,
            parse_minute(b).ok_or_else(bad)?,
        );
        if start == end || start >= DAY_MINUTES {
            return Err(format!(
                "{text:?}: the time range {t:?} is empty (use 00:00-24:00 for the whole day)"
            ));
        }
        w.start = start;
        w.end = if end == 0 { DAY_MINUTES } else { end };
    }
    Ok(w)
}

/// `HH:MM` as minutes after midnight (up to `24:00`).
fn parse_minute(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(DAY_MINUTES),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// A day name as 0 (Monday) to 6.
fn parse_day(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    DAYS.iter()
        .position(|d| *d == s)
        .or_else(|| FULL.iter().position(|d| *d == s))
}

/// `Mon-Fri`, `Sat,Sun`, `Fri-Mon` (wrapping) as a set of days.
fn parse_days(s: &str) -> Option<[bool; 7]> {
    let mut days = [false; 7];
    for item in s.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_day(a)?, parse_day(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[parse_day(item)?] = true,
        }
    }
    Some(days)
}

/// One parsed `[[sync.limit]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Node names it applies to; empty means every peer (`"*"`).
    peers: Vec<String>,
    /// The rate.
    pub rate: Rate,
    /// When it is in force.
    pub window: Window,
}

impl Limit {
    fn applies_to(&self, peer: &str) -> bool {
        self.peers.is_empty() || self.peers.iter().any(|p| p == peer)
    }
}

/// Every `[[sync.limit]]` entry, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    limits: Vec<Limit>,
}

impl Schedule {
    /// True when no limit is configured.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The rate in force for `peer` at local time `weekday` (0 = Monday) and `minute` after
    /// midnight: the first entry, in file order, that names the peer (or `"*"`) and whose
    /// window holds that time. `None`: no limit.
    pub fn rate_at(&self, peer: &str, weekday: usize, minute: u16) -> Option<Rate> {
        self.limits
            .iter()
            .find(|l| l.applies_to(peer) && l.window.contains(weekday, minute))
            .map(|l| l.rate)
    }
}

/// What is wrong with a limit or urgent entry: the dotted key, the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthProblem {
    /// Dotted key, like `sync.limit[0].rate`.
    pub key: String,
    /// What is wrong (one line).
    pub message: String,
    /// How to fix it (one line).
    pub fix: String,
}

/// Parses and checks `[[sync.limit]]` entries.
pub fn schedule(limits: &[LimitConfig]) -> Result<Schedule, BandwidthProblem> {
    let problem = |key: String, message: String, fix: &str| BandwidthProblem {
        key,
        message,
        fix: fix.to_owned(),
    };
    if limits.len() > MAX_LIMITS {
        return Err(problem(
            "sync.limit".into(),
            format!("sync.limit has {} entries", limits.len()),
            &format!("use at most {MAX_LIMITS}"),
        ));
    }
    let mut out = Vec::with_capacity(limits.len());
    for (i, l) in limits.iter().enumerate() {
        let key = |field: &str| format!("sync.limit[{i}].{field}");
        if l.peers.is_empty() {
            return Err(problem(
                key("peers"),
                format!("{} is empty", key("peers")),
                "name the peers, e.g. peers = [\"hefei\"], or peers = [\"*\"] for every peer",
            ));
        }
        let mut peers = Vec::new();
        for (j, p) in l.peers.iter().enumerate() {
            if p == "*" {
                peers.clear();
                break;
            }
            if officesync_protocol::names::validate_node_name(p).is_err() {
                return Err(problem(
                    format!("sync.limit[{i}].peers[{j}]"),
                    format!("sync.limit[{i}].peers[{j}] = {p:?} is not a node name"),
                    "write a node name as in its certificate (like \"hefei\"), or \"*\" for every peer",
                ));
            }
            peers.push(p.clone());
        }
        let rate = parse_rate(&l.rate).map_err(|e| {
            problem(
                key("rate"),
                format!("{} = {e}", key("rate")),
                "write a rate with its unit, like \"2 Mbit/s\", \"512 kbit/s\" or \"1 MiB/s\" (8 kbit/s to 100 Gbit/s)",
            )
        })?;
        let window = match &l.when {
            None => Window::ALWAYS,
            Some(w) => parse_window(w).map_err(|e| {
                problem(
                    key("when"),
                    format!("{} = {e}", key("when")),
                    "write days and local times like \"Mon-Fri 08:00-18:00\", \"Sat,Sun\" or \"22:00-06:00\", or leave when out for always",
                )
            })?,
        };
        out.push(Limit {
            peers,
            rate,
            window,
        });
    }
    Ok(Schedule { limits: out })
}

/// Checks `sync.urgent`: collection names, each once.
pub fn check_urgent(urgent: &[String]) -> Result<(), BandwidthProblem> {
    if urgent.len() > MAX_URGENT {
        return Err(BandwidthProblem {
            key: "sync.urgent".into(),
            message: format!("sync.urgent lists {} collections", urgent.len()),
            fix: format!("list at most {MAX_URGENT}"),
        });
    }
    for (i, c) in urgent.iter().enumerate() {
        let key = format!("sync.urgent[{i}]");
        if validate_collection_name(c).is_err() {
            return Err(BandwidthProblem {
                message: format!("{key} = {c:?} is not a collection name"),
                key,
                fix: "name collections like \"alerts\" or \"_policy\" (a-z, 0-9, '_', '.', '-')"
                    .into(),
            });
        }
        if urgent[..i].contains(c) {
            return Err(BandwidthProblem {
                message: format!("{key} = {c:?} is listed twice"),
                key,
                fix: "list each collection once".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

    use super::*;

    #[test]
    fn rates_in_bits_and_bytes() {
        let r = |s| parse_rate(s).unwrap().bytes_per_sec();
        assert_eq!(r("2 Mbit/s"), 250_000);
        assert_eq!(r("2Mbit/s"), 250_000);
        assert_eq!(r("2 mbit/s"), 250_000);
        assert_eq!(r("2 Mbps"), 250_000);
        assert_eq!(r("256 kbit/s"), 32_000);
        assert_eq!(r("1 Gbit/s"), 125_000_000);
        assert_eq!(r("64000 bit/s"), 8_000);
        assert_eq!(r("1.5 MB/s"), 1_500_000);
        assert_eq!(r("512 KiB/s"), 524_288);
        assert_eq!(r("512 KB/s"), 512_000);
        assert_eq!(r("2 MiB/s"), 2 * 1024 * 1024);
        assert_eq!(r("1 GiB/s"), 1 << 30);
        assert_eq!(r("5000 B/s"), 5_000);
        for bad in [
            "",
            "fast",
            "2",
            "2 Mb/s",
            "2 mB/s",
            "-2 Mbit/s",
            "2 Tbit/s",
            "1 bit/s",
            "1000 Gbit/s",
            "2 Mbit",
            "1.2.3 Mbit/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rates_print_in_bits() {
        let p = |s| parse_rate(s).unwrap().to_string();
        assert_eq!(p("2 Mbit/s"), "2 Mbit/s");
        assert_eq!(p("1.5 Mbit/s"), "1.5 Mbit/s");
        assert_eq!(p("256 kbit/s"), "256 kbit/s");
        assert_eq!(p("1 MB/s"), "8 Mbit/s");
        assert_eq!(p("10 Gbit/s"), "10 Gbit/s");
    }

    #[test]
    fn windows_of_days_and_hours() {
        let w = parse_window("Mon-Fri 08:00-18:00").unwrap();
        assert!(w.contains(0, 8 * 60));
        assert!(w.contains(4, 17 * 60 + 59));
        assert!(!w.contains(4, 18 * 60), "the end is excluded");
        assert!(!w.contains(0, 7 * 60 + 59));
        assert!(!w.contains(5, 12 * 60), "Saturday");
        assert!(!w.contains(6, 12 * 60), "Sunday");

        let weekend = parse_window("sat,Sunday").unwrap();
        assert!(weekend.contains(5, 0) && weekend.contains(6, 1439));
        assert!(!weekend.contains(0, 600));

        let wrap = parse_window("Fri-Mon").unwrap();
        assert!(wrap.contains(4, 0) && wrap.contains(0, 0));
        assert!(!wrap.contains(1, 0) && !wrap.contains(3, 1439));

        let list = parse_window("Mon,Wed-Thu 09:30-24:00").unwrap();
        assert!(list.contains(0, 9 * 60 + 30) && list.contains(2, 1439) && list.contains(3, 600));
        assert!(!list.contains(1, 600) && !list.contains(0, 9 * 60 + 29));

        let daily = parse_window("12:00-13:00").unwrap();
        assert!((0..7).all(|d| daily.contains(d, 12 * 60 + 30)));
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let night = parse_window("Mon-Fri 22:00-06:00").unwrap();
        assert!(night.contains(0, 22 * 60), "Monday evening");
        assert!(
            night.contains(1, 5 * 60 + 59),
            "Tuesday early morning: Monday's night"
        );
        assert!(!night.contains(1, 6 * 60));
        assert!(!night.contains(1, 12 * 60));
        assert!(
            night.contains(5, 3 * 60),
            "Saturday early morning: Friday's night"
        );
        assert!(
            !night.contains(5, 22 * 60),
            "Saturday evening is not listed"
        );
        assert!(
            !night.contains(0, 3 * 60),
            "Monday early morning: Sunday's night"
        );

        let every_night = parse_window("23:30-00:30").unwrap();
        assert!(every_night.contains(6, 23 * 60 + 45) && every_night.contains(0, 10));
        assert!(!every_night.contains(0, 31));
    }

    #[test]
    fn bad_windows_are_refused() {
        for bad in [
            "",
            "Mon-Fri 08:00",
            "Mon-Fri 8-18",
            "Mon-Fri 08:00-25:00",
            "Mon-Fri 08:00-08:00",
            "Funday",
            "Mon-Fri 08:00-18:00 extra",
            "Mon-Fri 08:60-18:00",
            "24:00-08:00",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_window("00:00-24:00").unwrap(), Window::ALWAYS);
        assert_eq!(parse_window("00:00-00:00").ok(), None);
    }

    fn entry(peers: &[&str], rate: &str, when: Option<&str>) -> LimitConfig {
        LimitConfig {
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            rate: rate.into(),
            when: when.map(str::to_owned),
        }
    }

    #[test]
    fn the_first_entry_in_force_wins() {
        let s = schedule(&[
            entry(&["hefei"], "512 kbit/s", Some("Mon-Fri 08:00-18:00")),
            entry(&["*"], "2 Mbit/s", Some("Mon-Fri 08:00-18:00")),
            entry(&["beijing-office"], "10 Mbit/s", None),
        ])
        .unwrap();
        let noon = 12 * 60;
        assert_eq!(s.rate_at("hefei", 0, noon), parse_rate("512 kbit/s").ok());
        assert_eq!(s.rate_at("wuhu", 0, noon), parse_rate("2 Mbit/s").ok());
        assert_eq!(
            s.rate_at("beijing-office", 0, noon),
            parse_rate("2 Mbit/s").ok(),
            "the \"*\" entry comes first"
        );
        assert_eq!(
            s.rate_at("beijing-office", 5, noon),
            parse_rate("10 Mbit/s").ok()
        );
        assert_eq!(
            s.rate_at("hefei", 5, noon),
            None,
            "no entry in force at the weekend"
        );
        assert!(schedule(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_entries_name_their_key() {
        let key = |l: LimitConfig| {
            schedule(&[entry(&["*"], "1 Mbit/s", None), l])
                .unwrap_err()
                .key
        };
        assert_eq!(key(entry(&["*"], "fast", None)), "sync.limit[1].rate");
        assert_eq!(
            key(entry(&["*"], "1 Mbit/s", Some("soon"))),
            "sync.limit[1].when"
        );
        assert_eq!(key(entry(&[], "1 Mbit/s", None)), "sync.limit[1].peers");
        assert_eq!(
            key(entry(&["hefei", "Bad Name"], "1 Mbit/s", None)),
            "sync.limit[1].peers[1]"
        );
        let urgent = |c: &[&str]| {
            check_urgent(&c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).map_err(|p| p.key)
        };
        assert_eq!(urgent(&["_policy", "alerts"]), Ok(()));
        assert_eq!(urgent(&["alerts", "Alerts!"]), Err("sync.urgent[1]".into()));
        assert_eq!(urgent(&["alerts", "alerts"]), Err("sync.urgent[1]".into()));
    }
}
