//! Tests of the audit log as files on disk: chain, rotation, tampering, torn tails, limits.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const T0: u64 = 1_700_000_000_000;

fn rec(i: u64) -> Record {
    Record::new(Kind::Write, "zoë@hefei")
        .collection("permits")
        .key(format!("k{i}"))
        .version(format!("{i}@hefei"))
}

fn small(max_segment_bytes: u64) -> AuditOptions {
    AuditOptions {
        max_segment_bytes,
        ..AuditOptions::default()
    }
}

fn seg(dir: &Path, n: u64) -> PathBuf {
    dir.join(segment_name(n))
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("write");
}

/// A log of `n` entries in `dir`, `max` bytes per segment.
fn log_of(dir: &Path, n: u64, max: u64) -> AuditLog {
    let log = AuditLog::open(dir, small(max)).expect("open");
    for i in 1..=n {
        assert_eq!(log.append(rec(i), T0 + i).expect("append"), i);
    }
    log
}

/// The damage `verify` reports, with its file's name and line.
fn damage(dir: &Path) -> (String, u64, u64, Damage) {
    match verify(dir) {
        Err(AuditError::Damaged {
            file,
            line,
            seq,
            problem,
        }) => (
            file.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            line,
            seq,
            problem,
        ),
        other => panic!("expected damage, got {other:?}"),
    }
}

#[test]
fn append_reopen_and_continue_the_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("audit");
    let log = log_of(&dir, 3, 1 << 20);
    let head = log.head().expect("head");
    drop(log);
    let log = AuditLog::open(&dir, AuditOptions::default()).expect("reopen");
    assert_eq!(log.head().expect("head"), head);
    assert_eq!(log.opened().expect("opened").entries, 3);
    let seq = log
        .append_batch(vec![rec(4), rec(5).detail("batch")], T0 + 9)
        .expect("batch");
    assert_eq!(seq, 5);
    assert_eq!(log.append_batch(Vec::new(), T0).expect("empty batch"), 5);
    let summary = verify(&dir).expect("verify");
    assert_eq!(
        (summary.segments, summary.entries, summary.last_seq),
        (1, 5, 5)
    );
    assert_eq!(summary.last_hash, log.head().expect("head").hash);
    let page = read(&dir, 0, 100).expect("read");
    assert_eq!(page.entries.len(), 5);
    assert_eq!(page.entries[0].prev, GENESIS_HASH);
    for pair in page.entries.windows(2) {
        assert_eq!(pair[1].prev, pair[0].hash);
    }
    assert_eq!(page.entries[3].actor, "zoë@hefei");
    assert_eq!(page.entries[4].detail.as_deref(), Some("batch"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&seg(&dir, 1)), 0o600);
    }
}

#[test]
fn rotation_keeps_the_chain_across_segments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let max = 700;
    let log = log_of(dir, 20, max);
    let summary = verify(dir).expect("verify");
    assert!(summary.segments >= 3, "{summary:?}");
    assert_eq!(summary.entries, 20);
    let mut last_hash = GENESIS_HASH.to_owned();
    for n in 1..=summary.segments {
        let path = seg(dir, n);
        assert!(fs::metadata(&path).expect("meta").len() <= max);
        let first: Entry = serde_json::from_str(&lines(&path)[0]).expect("entry");
        assert_eq!(first.prev, last_hash, "segment {n} links to the one before");
        let last: Entry = serde_json::from_str(lines(&path).last().expect("line")).expect("entry");
        last_hash = last.hash;
    }
    drop(log);
    let options = AuditOptions {
        check: OpenCheck::LastSegment,
        ..small(max)
    };
    let log = AuditLog::open(dir, options).expect("reopen checking the last segment");
    assert_eq!(log.head().expect("head").seq, 20);
    log.append(rec(21), T0).expect("append");
    assert_eq!(verify(dir).expect("verify").entries, 21);
    assert!(seg(dir, 1).exists(), "old segments are kept");
}

#[test]
fn an_entry_larger_than_a_segment_gets_its_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = log_of(tmp.path(), 1, 100);
    log.append(rec(2), T0).expect("append");
    assert_eq!(verify(tmp.path()).expect("verify").segments, 2);
}

#[test]
fn every_single_bit_flip_is_caught() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    drop(log_of(dir, 4, 700));
    assert_eq!(verify(dir).expect("verify").segments, 2);
    for n in [1, 2] {
        let path = seg(dir, n);
        let good = fs::read(&path).expect("read");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        for (pos, &byte) in good.iter().enumerate() {
            for bit in 0..8 {
                file.write_all_at(&[byte ^ (1 << bit)], pos as u64)
                    .expect("flip");
                assert!(
                    verify(dir).is_err(),
                    "flip of bit {bit} at byte {pos} of segment {n} not caught"
                );
                if bit == 0 {
                    let opened = AuditLog::open(dir, small(700));
                    assert!(opened.is_err(), "open accepted a flip at byte {pos}");
                }
            }
            file.write_all_at(&[byte], pos as u64).expect("restore");
        }
    }
    assert_eq!(verify(dir).expect("verify").entries, 4);
}

#[test]
fn deleted_swapped_and_rewritten_entries_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    drop(log_of(dir, 4, 1 << 20));
    let path = seg(dir, 1);
    let good = lines(&path);

    write_lines(&path, &[&good[..1], &good[2..]].concat());
    let (file, line, seq, problem) = damage(dir);
    assert_eq!((file.as_str(), line, seq), ("000001.log", 2, 2));
    assert_eq!(
        problem,
        Damage::BadSeq {
            expected: 2,
            found: 3
        }
    );

    let swapped = vec![
        good[0].clone(),
        good[2].clone(),
        good[1].clone(),
        good[3].clone(),
    ];
    write_lines(&path, &swapped);
    assert!(matches!(damage(dir), (_, 2, 2, Damage::BadSeq { .. })));

    // Rewrite entry 2 with its hash recomputed: the link from entry 3 breaks.
    let mut edited: Entry = serde_json::from_str(&good[1]).expect("entry");
    edited.actor = "mallory@hefei".into();
    edited.hash = edited.compute_hash();
    let mut forged = good.clone();
    forged[1] = edited.encode();
    write_lines(&path, &forged);
    assert!(matches!(damage(dir), (_, 3, 3, Damage::BrokenLink { .. })));

    // A non-canonical but equal line (escaped character) is caught too.
    let mut escaped = good.clone();
    escaped[0] = escaped[0].replace("permits", "\\u0070ermits");
    write_lines(&path, &escaped);
    assert_eq!(damage(dir).3, Damage::NotCanonical);

    write_lines(&path, &good);
    let err = AuditLog::open(dir, AuditOptions::default());
    assert!(err.is_ok());
}

#[test]
fn tampering_across_segments_is_caught() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    drop(log_of(dir, 12, 700));
    let segments = verify(dir).expect("verify").segments;
    assert!(segments >= 4);

    // The last entry of segment 1 rewritten and rehashed: segment 2's first link breaks.
    let path = seg(dir, 1);
    let good = lines(&path);
    let mut edited: Entry = serde_json::from_str(good.last().expect("line")).expect("entry");
    edited.key = Some("other".into());
    edited.hash = edited.compute_hash();
    let mut forged = good.clone();
    *forged.last_mut().expect("line") = edited.encode();
    write_lines(&path, &forged);
    let (file, line, _, problem) = damage(dir);
    assert_eq!((file.as_str(), line), ("000002.log", 1));
    assert!(matches!(problem, Damage::BrokenLink { .. }));
    let err = AuditLog::open(dir, AuditOptions::default()).expect_err("damaged");
    let text = err.to_string();
    assert!(text.starts_with("audit log damaged: "), "{text}");
    assert!(text.contains("000002.log entry "), "{text}");
    write_lines(&path, &good);

    // A middle segment removed, then the gap closed by renaming.
    let middle = fs::read(seg(dir, 2)).expect("read");
    fs::remove_file(seg(dir, 2)).expect("remove");
    assert!(matches!(verify(dir), Err(AuditError::MissingSegment { file }) if file == seg(dir, 2)));
    assert!(AuditLog::open(dir, AuditOptions::default()).is_err());
    for n in 3..=segments {
        fs::rename(seg(dir, n), seg(dir, n - 1)).expect("rename");
    }
    let (file, line, _, problem) = damage(dir);
    assert_eq!((file.as_str(), line), ("000002.log", 1));
    assert!(matches!(problem, Damage::BadSeq { .. }));
    for n in (3..=segments).rev() {
        fs::rename(seg(dir, n - 1), seg(dir, n)).expect("rename");
    }
    fs::write(seg(dir, 2), middle).expect("restore");
    assert_eq!(verify(dir).expect("verify").entries, 12);

    // An earlier segment without its final newline.
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
    assert_eq!(damage(dir).3, Damage::Unterminated);
}

#[test]
fn a_torn_tail_is_reported_then_truncated_on_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    drop(log_of(dir, 4, 1 << 20));
    let path = seg(dir, 1);
    let full = fs::read(&path).expect("read");
    let cut = full
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(2)
        .map(|(i, _)| i + 1)
        .expect("three lines");
    let last_len = full.len() - cut - 1;
    for k in 1..=last_len {
        fs::write(&path, &full[..cut + k]).expect("write");
        let summary = verify(dir).expect("a torn tail is not damage");
        if k < last_len {
            assert_eq!(summary.entries, 3, "prefix {k}");
            let torn = summary.torn_tail.expect("torn tail");
            assert_eq!((torn.offset, torn.bytes), (cut as u64, k as u64));
            assert_eq!(read(dir, 0, 10).expect("read").entries.len(), 3);
        } else {
            assert_eq!(
                (summary.entries, summary.torn_tail),
                (4, None),
                "only the newline lost"
            );
        }
        let log = AuditLog::open(dir, AuditOptions::default()).expect("open repairs");
        let expect = if k < last_len { 3 } else { 4 };
        assert_eq!(log.head().expect("head").seq, expect);
        log.append(rec(9), T0).expect("append");
        let after = verify(dir).expect("verify after repair");
        assert_eq!((after.entries, after.torn_tail), (expect + 1, None));
    }
    // A crash just after starting a new segment: only a torn line in it.
    fs::write(&path, &full).expect("write");
    fs::write(seg(dir, 2), &full[..10]).expect("write");
    assert_eq!(read(dir, 0, 10).expect("read").entries.len(), 4);
    assert_eq!(read_last(dir, 2).expect("read_last").entries.len(), 2);
    let log = AuditLog::open(dir, AuditOptions::default()).expect("open");
    assert_eq!(log.append(rec(5), T0).expect("append"), 5);
    assert_eq!(lines(&seg(dir, 2)).len(), 1);
    drop(log);
    fs::remove_file(seg(dir, 2)).expect("remove");

    fs::write(&path, [&full[..cut], b"garbage".as_slice()].concat()).expect("write");
    assert!(matches!(damage(dir), (_, 4, 4, Damage::Unparsable(_))));
}

#[test]
fn refused_authentications_are_rate_limited() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let options = AuditOptions {
        refusals: RefusalLimits {
            per_addr: 2,
            global: 3,
            window_ms: 60_000,
            max_tracked: 4,
        },
        ..AuditOptions::default()
    };
    let log = AuditLog::open(dir, options).expect("open");
    let minute = 28_333_333 * 60_000;
    let mut recorded = 0;
    for i in 0..1000 {
        let addr = if i % 2 == 0 {
            "10.0.0.1:5000"
        } else {
            "10.0.0.2:6000"
        };
        if log
            .refused(addr, "bad token", minute + i)
            .expect("refused")
            .is_some()
        {
            recorded += 1;
        }
    }
    assert_eq!(recorded, 3);
    assert_eq!(
        verify(dir).expect("verify").entries,
        3,
        "nothing more written yet"
    );
    log.tick(minute + 59_999).expect("tick within the window");
    assert_eq!(verify(dir).expect("verify").entries, 3);
    let seq = log
        .append(
            Record::new(Kind::UserAdd, "admin@hefei").detail("bob writer"),
            minute + 60_000,
        )
        .expect("append");
    assert_eq!(seq, 6, "two summaries went first");
    let page = read(dir, 3, 10).expect("read");
    let kinds: Vec<_> = page.entries.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        [Kind::AuthSuppressed, Kind::AuthSuppressed, Kind::UserAdd]
    );
    let detail = page.entries[0].detail.clone().unwrap_or_default();
    assert!(
        detail.starts_with("suppressed 498 refused authentications from 10.0.0.1:5000"),
        "{detail}"
    );
    assert_eq!(page.entries[1].actor, "10.0.0.2:6000");

    assert!(log
        .refused("10.0.0.3:1", "bad", minute + 60_001)
        .expect("refused")
        .is_some());
    assert!(log
        .refused("10.0.0.3:1", "bad", minute + 60_002)
        .expect("refused")
        .is_some());
    assert!(log
        .refused("10.0.0.3:1", "bad", minute + 60_003)
        .expect("refused")
        .is_none());
    log.tick(minute + 120_000).expect("tick after the window");
    let last = read_last(dir, 1).expect("read_last");
    assert_eq!(last.entries[0].kind, Kind::AuthSuppressed);
    assert!(log
        .refused("10.0.0.3:1", "bad", minute + 120_001)
        .expect("refused")
        .is_some());
    assert!(log
        .refused("10.0.0.3:1", "bad", minute + 120_002)
        .expect("refused")
        .is_some());
    assert!(log
        .refused("10.0.0.3:1", "bad", minute + 120_003)
        .expect("refused")
        .is_none());
    log.flush_suppressed(minute + 120_004).expect("flush");
    let last = read_last(dir, 1).expect("read_last");
    assert!(last.entries[0]
        .detail
        .as_deref()
        .unwrap_or_default()
        .starts_with("suppressed 1 "));
    assert_eq!(verify(dir).expect("verify").entries, 12);
}

#[test]
fn listing_pages_oldest_first_across_segments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    assert_eq!(
        read(&dir.join("none"), 0, 10).expect("missing dir").entries,
        Vec::new()
    );
    drop(log_of(dir, 25, 900));
    assert!(verify(dir).expect("verify").segments >= 3);
    let seqs = |page: &Page| page.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = read(dir, after, 10).expect("read");
        all.extend(seqs(&page));
        let Some(last) = page.entries.last() else {
            break;
        };
        after = last.seq;
        if !page.more {
            break;
        }
    }
    assert_eq!(all, (1..=25).collect::<Vec<_>>());
    let page = read(dir, 10, 10).expect("read");
    assert_eq!((seqs(&page), page.more), ((11..=20).collect(), true));
    let page = read(dir, 20, 10).expect("read");
    assert_eq!((seqs(&page), page.more), ((21..=25).collect(), false));
    assert!(read(dir, 25, 10).expect("read").entries.is_empty());
    let page = read_last(dir, 3).expect("read_last");
    assert_eq!((seqs(&page), page.more), (vec![23, 24, 25], false));
    assert_eq!(read_last(dir, 100).expect("read_last").entries.len(), 25);
    assert!(read(dir, 0, 0).expect("read").more);
}

#[test]
fn clones_append_from_many_threads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(tmp.path(), small(2000)).expect("open");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    log.append(rec(t * 100 + i), T0).expect("append");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(verify(tmp.path()).expect("verify").entries, 100);
}
