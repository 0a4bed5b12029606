//! Tests of [`SealedStore`]: round trips, what the inner store holds, refusals of altered,
//! moved and foreign values, wrong and missing keys, nonces, re-keying and encryption of a
//! plaintext store.

use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::*;
use crate::store::{contract, MemoryStore, SledStore};

const MARKER: &[u8] = b"MARKER-7f3a-secret-value";

fn key(n: u8) -> StorageKey {
    StorageKey::from_bytes([n; 32])
}

fn ring(n: u8) -> Keyring {
    Keyring::new(&key(n), format!("/etc/officesync/key{n}"))
}

fn dir() -> PathBuf {
    PathBuf::from("/var/lib/officesync")
}

/// A sealed store over a shared memory store the test can look into.
fn sealed(n: u8) -> (Arc<MemoryStore>, SealedStore<Arc<MemoryStore>>) {
    let inner = Arc::new(MemoryStore::new());
    let store = SealedStore::open(inner.clone(), ring(n), &dir()).expect("open");
    (inner, store)
}

fn put(store: &dyn Store, k: &[u8], v: &[u8]) {
    let mut b = WriteBatch::default();
    b.put(k.to_vec(), v.to_vec());
    store.apply(b).expect("apply");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every raw value of `inner`, the key check included.
fn raw(inner: &MemoryStore) -> Rows {
    inner.range(b"", None, usize::MAX).expect("range")
}

fn corrupt_detail(err: StoreError) -> String {
    match err {
        StoreError::Corrupt { detail, .. } => detail,
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn meets_the_store_contract() {
    let (_, store) = sealed(1);
    contract::exercise(&store);
}

#[test]
fn values_round_trip_and_are_never_stored_in_clear() {
    let (inner, store) = sealed(1);
    let big: Vec<u8> = MARKER.iter().copied().cycle().take(20_000).collect();
    put(&store, b"K\x09situation/hefei", MARKER);
    put(&store, b"V\x09situation/0001", &big);
    put(&store, b"K\x09situation/empty", b"");
    assert_eq!(
        store.get(b"K\x09situation/hefei").expect("get"),
        Some(MARKER.to_vec())
    );
    assert_eq!(store.get(b"V\x09situation/0001").expect("get"), Some(big));
    assert_eq!(
        store.get(b"K\x09situation/empty").expect("get"),
        Some(Vec::new())
    );
    assert_eq!(store.get(b"K\x09absent").expect("get"), None);
    let rows = raw(&inner);
    assert_eq!(rows.len(), 4, "three values and the key check");
    for (k, v) in &rows {
        assert!(!contains(v, MARKER), "{} holds the marker", describe(k));
        assert_eq!(v[0], SEALED_FORMAT);
        assert_eq!(&v[1..5], &key(1).id().0, "sealed with the current key");
    }
    // Keys stay readable (documented): the scans need them.
    assert!(rows.iter().any(|(k, _)| k == b"K\x09situation/hefei"));
    // A value costs exactly OVERHEAD bytes more.
    let hefei = inner
        .get(b"K\x09situation/hefei")
        .expect("get")
        .expect("raw");
    assert_eq!(hefei.len(), MARKER.len() + OVERHEAD);
}

#[test]
fn range_opens_values_and_hides_the_key_check() {
    let (_, store) = sealed(1);
    // An empty store looks empty (the replica refuses a store holding records without an
    // identity, and checks that with a range from the first key).
    assert!(store.range(b"", None, 1).expect("range").is_empty());
    assert_eq!(store.get(CHECK_KEY).expect("get"), None);
    for i in 0..20u8 {
        put(&store, &[b'K', i], &[i; 3]);
    }
    let all = store.range(b"", None, 100).expect("range");
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|(k, v)| v == &vec![k[1]; 3]));
    let some = store
        .range(&[b'K', 5], Some(&[b'K', 9]), 100)
        .expect("range");
    let keys: Vec<u8> = some.iter().map(|(k, _)| k[1]).collect();
    assert_eq!(keys, [5, 6, 7, 8]);
    assert_eq!(store.range(b"", Some(b"\x00z"), 10).expect("range"), []);
    assert_eq!(store.range(b"K", None, 3).expect("range").len(), 3);
}

#[test]
fn reserved_keys_are_refused_and_the_batch_is_not_applied() {
    let (inner, store) = sealed(1);
    let before = raw(&inner);
    for reserved in [CHECK_KEY.to_vec(), Vec::new(), b"\x00other".to_vec()] {
        let mut b = WriteBatch::default();
        b.put(b"K1".to_vec(), b"one".to_vec());
        b.put(reserved.clone(), b"x".to_vec());
        let err = store.apply(b).expect_err("reserved");
        assert!(err.to_string().contains("reserved"), "{err}");
    }
    assert_eq!(raw(&inner), before, "nothing of a refused batch is applied");
}

#[test]
fn altered_values_are_refused_naming_the_key() {
    let (inner, store) = sealed(1);
    put(&store, b"Kcoll/key", MARKER);
    let good = inner.get(b"Kcoll/key").expect("get").expect("raw");
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        inner
            .apply(WriteBatch {
                ops: vec![(b"Kcoll/key".to_vec(), Some(bad))],
            })
            .expect("apply");
        let detail = corrupt_detail(store.get(b"Kcoll/key").expect_err("altered"));
        assert!(detail.contains("Kcoll/key"), "byte {at}: {detail}");
        let err = store.range(b"K", None, 10).expect_err("range too");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
    // Cut short, lengthened, emptied, or a plaintext value: refused, never a panic.
    for bad in [
        good[..good.len() - 1].to_vec(),
        [good.clone(), vec![0]].concat(),
        Vec::new(),
        vec![SEALED_FORMAT; OVERHEAD - 1],
        MARKER.to_vec(),
    ] {
        inner
            .apply(WriteBatch {
                ops: vec![(b"Kcoll/key".to_vec(), Some(bad.clone()))],
            })
            .expect("apply");
        let detail = corrupt_detail(store.get(b"Kcoll/key").expect_err("bad"));
        assert!(detail.contains("Kcoll/key"), "{detail}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let (inner, store) = sealed(1);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..200usize {
        let bytes: Vec<u8> = (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Often a plausible header, so the AEAD itself is reached.
                match i {
                    0 => SEALED_FORMAT,
                    1..=4 => key(1).id().0[i - 1],
                    _ => state as u8,
                }
            })
            .collect();
        inner
            .apply(WriteBatch {
                ops: vec![(b"Kx".to_vec(), Some(bytes))],
            })
            .expect("apply");
        assert!(store.get(b"Kx").is_err(), "{len} random bytes opened");
    }
}

#[test]
fn a_value_moved_to_another_key_is_refused() {
    let (inner, store) = sealed(1);
    put(&store, b"Kcoll/public", b"nothing to see");
    put(&store, b"Kcoll/secret", MARKER);
    let secret = inner.get(b"Kcoll/secret").expect("get").expect("raw");
    inner
        .apply(WriteBatch {
            ops: vec![(b"Kcoll/public".to_vec(), Some(secret))],
        })
        .expect("apply");
    let detail = corrupt_detail(store.get(b"Kcoll/public").expect_err("moved"));
    assert!(detail.contains("fails authentication"), "{detail}");
    assert!(detail.contains("Kcoll/public"), "{detail}");
}

#[test]
fn a_wrong_key_is_refused_at_open_even_on_an_empty_store() {
    let (inner, store) = sealed(1);
    drop(store);
    let err = SealedStore::open(inner.clone(), ring(2), &dir()).expect_err("wrong key");
    let line = err.to_string();
    assert!(matches!(err, SealError::WrongKey { .. }), "{line}");
    assert!(
        line.contains("/etc/officesync/key2"),
        "names the file: {line}"
    );
    assert!(line.contains(&key(1).id().to_string()), "{line}");
    assert!(!line.contains('\n'));
    // The right key still opens it.
    SealedStore::open(inner, ring(1), &dir()).expect("right key");
}

#[test]
fn a_wrong_key_never_opens_values_of_another() {
    let (inner, store) = sealed(1);
    put(&store, b"Kcoll/key", MARKER);
    drop(store);
    // Even past the key check (a store whose check lists key 2), values of key 1 stay shut.
    let forged = SealedStore {
        inner: inner.clone(),
        keys: ring(2),
        nonces: Nonces::new().expect("nonces"),
        dir: dir(),
    };
    let detail = corrupt_detail(forged.get(b"Kcoll/key").expect_err("foreign"));
    assert!(detail.contains("no configured key file"), "{detail}");
}

#[test]
fn missing_and_unexpected_encryption_are_refused() {
    // An encrypted store opened without a key.
    let (inner, store) = sealed(1);
    put(&store, b"Kcoll/key", MARKER);
    drop(store);
    let err = refuse_if_sealed(inner.as_ref(), &dir()).expect_err("encrypted");
    assert!(matches!(err, SealError::KeyNeeded { .. }), "{err}");
    assert!(err.to_string().contains("encryption_key_file"), "{err}");
    // A plaintext store opened with a key.
    let plain = Arc::new(MemoryStore::new());
    put(plain.as_ref(), b"Kcoll/key", MARKER);
    refuse_if_sealed(plain.as_ref(), &dir()).expect("plaintext store, no key: fine");
    let err = SealedStore::open(plain.clone(), ring(1), &dir()).expect_err("plaintext");
    assert!(matches!(err, SealError::NotEncrypted { .. }), "{err}");
    assert!(err.to_string().contains("--rekey"), "{err}");
    assert_eq!(raw(&plain).len(), 1, "the refused open wrote nothing");
}

#[test]
fn a_damaged_key_check_is_corruption() {
    let (inner, store) = sealed(1);
    drop(store);
    let mut check = inner.get(CHECK_KEY).expect("get").expect("check");
    let last = check.len() - 1;
    check[last] ^= 0x80;
    inner
        .apply(WriteBatch {
            ops: vec![(CHECK_KEY.to_vec(), Some(check))],
        })
        .expect("apply");
    let err = SealedStore::open(inner, ring(1), &dir()).expect_err("damaged");
    assert!(
        matches!(err, SealError::Store(StoreError::Corrupt { .. })),
        "{err}"
    );
}

#[test]
fn nonces_never_repeat_across_many_seals_and_reopens() {
    let inner = Arc::new(MemoryStore::new());
    let mut seen = HashSet::new();
    let mut total = 0;
    for _open in 0..3 {
        let store = SealedStore::open(inner.clone(), ring(1), &dir()).expect("open");
        let mut last: Option<u64> = None;
        for i in 0..20_000u32 {
            let sealed = store.seal(b"Kk", &i.to_be_bytes()).expect("seal");
            let nonce: [u8; NONCE_LEN] = sealed[5..HEADER].try_into().expect("nonce");
            assert!(seen.insert(nonce), "nonce repeated after {total} seals");
            total += 1;
            let counter = u64::from_be_bytes(nonce[4..].try_into().expect("counter"));
            if let Some(last) = last {
                assert_eq!(counter, last + 1, "one counter per open");
            }
            last = Some(counter);
        }
    }
    // The same plaintext at the same key seals differently every time.
    let (_, store) = sealed(1);
    assert_ne!(
        store.seal(b"Kk", MARKER).expect("seal"),
        store.seal(b"Kk", MARKER).expect("seal")
    );
}

#[test]
fn a_spent_nonce_counter_refuses_instead_of_wrapping() {
    let (_, store) = sealed(1);
    store.nonces.next.store(u64::MAX - 1, Ordering::Relaxed);
    store.seal(b"Kk", b"last").expect("the last nonce");
    let err = store.seal(b"Kk", b"one more").expect_err("spent");
    assert!(err.to_string().contains("nonce"), "{err}");
    assert!(store.seal(b"Kk", b"still").is_err(), "stays refused");
}

#[test]
fn rotation_reads_with_previous_keys_and_rekey_retires_them() {
    let (inner, store) = sealed(1);
    for i in 0..(REKEY_BATCH as u32 + 10) {
        put(&store, format!("Kold/{i:05}").as_bytes(), MARKER);
    }
    drop(store);
    // Key 2 current, key 1 previous: old values read, new ones are sealed with key 2.
    let rotated = || ring(2).with_previous(&key(1), "/etc/officesync/key1");
    let store =
        SealedStore::open(inner.clone(), rotated().expect("ring"), &dir()).expect("rotated");
    assert_eq!(
        store.get(b"Kold/00000").expect("get"),
        Some(MARKER.to_vec())
    );
    put(&store, b"Knew", b"new");
    let new = inner.get(b"Knew").expect("get").expect("raw");
    assert_eq!(sealed_by(&new), Some(key(2).id()));
    drop(store);
    // Key 1 is still needed: refused without it, naming its id.
    let err = SealedStore::open(inner.clone(), ring(2), &dir()).expect_err("key 1 missing");
    assert!(matches!(err, SealError::RetiredKeyMissing { .. }), "{err}");
    assert!(err.to_string().contains(&key(1).id().to_string()), "{err}");
    // Re-key: every value sealed with key 2; then key 2 alone opens everything.
    let report = rekey(inner.clone(), rotated().expect("ring"), &dir()).expect("rekey");
    assert_eq!(report.values, REKEY_BATCH as u64 + 11);
    assert_eq!(report.resealed, REKEY_BATCH as u64 + 10);
    assert_eq!(report.encrypted, 0);
    let store = SealedStore::open(inner.clone(), ring(2), &dir()).expect("key 2 alone");
    assert_eq!(
        store.get(b"Kold/00511").expect("get"),
        Some(MARKER.to_vec())
    );
    assert!(raw(&inner)
        .iter()
        .all(|(_, v)| sealed_by(v) == Some(key(2).id())));
    // Re-keying again has nothing to do.
    drop(store);
    let again = rekey(inner, ring(2), &dir()).expect("rekey again");
    assert_eq!(again.resealed, 0);
}

#[test]
fn duplicate_keys_in_a_ring_are_refused() {
    let err = ring(1)
        .with_previous(&key(1), "/elsewhere/key1")
        .expect_err("same key twice");
    assert!(matches!(err, SealError::DuplicateKey { .. }), "{err}");
    assert!(err.to_string().contains("/elsewhere/key1"), "{err}");
}

/// A store that fails every `apply` after the first `allowed` ones.
struct Flaky {
    inner: Arc<MemoryStore>,
    allowed: AtomicUsize,
}

impl Store for Flaky {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Rows, StoreError> {
        self.inner.range(start, end, limit)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.allowed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| StoreError::Io("power cut".into()))?;
        self.inner.apply(batch)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
}

#[test]
fn a_plaintext_store_is_encrypted_by_rekey_which_resumes_after_a_cut() {
    let inner = Arc::new(MemoryStore::new());
    let n = 2 * REKEY_BATCH + 7;
    for i in 0..n {
        put(inner.as_ref(), format!("Kc/{i:05}").as_bytes(), MARKER);
    }
    // Cut after the key check and one batch.
    let flaky = Flaky {
        inner: inner.clone(),
        allowed: AtomicUsize::new(2),
    };
    let err = rekey(flaky, ring(1), &dir()).expect_err("cut");
    assert!(err.to_string().contains("power cut"), "{err}");
    // Half done: the daemon refuses it, the values read so far are sealed, the rest plain.
    let err = SealedStore::open(inner.clone(), ring(1), &dir()).expect_err("unfinished");
    assert!(matches!(err, SealError::Unfinished { .. }), "{err}");
    let plain = raw(&inner)
        .iter()
        .filter(|(_, v)| contains(v, MARKER))
        .count();
    assert_eq!(plain, n - REKEY_BATCH);
    // Run again: resumes, and everything is sealed exactly once.
    let report = rekey(inner.clone(), ring(1), &dir()).expect("resume");
    assert_eq!(report.encrypted, (n - REKEY_BATCH) as u64);
    assert_eq!(report.resealed, 0);
    assert!(raw(&inner).iter().all(|(_, v)| !contains(v, MARKER)));
    let store = SealedStore::open(inner, ring(1), &dir()).expect("encrypted");
    let rows = store.range(b"", None, usize::MAX).expect("range");
    assert_eq!(rows.len(), n);
    assert!(rows.iter().all(|(_, v)| v == MARKER));
}

#[test]
fn on_sled_nothing_on_disk_holds_a_value() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let big: Vec<u8> = MARKER.iter().copied().cycle().take(300_000).collect();
    {
        let sled = SledStore::open(tmp.path()).expect("open");
        let store = SealedStore::open(sled, ring(3), tmp.path()).expect("sealed");
        for i in 0..50u32 {
            put(&store, format!("Kc/{i}").as_bytes(), MARKER);
        }
        put(&store, b"Vbig", &big);
        store.sync().expect("sync");
    }
    let sled = SledStore::open(tmp.path()).expect("reopen");
    let store = SealedStore::open(sled, ring(3), tmp.path()).expect("sealed");
    assert_eq!(store.get(b"Vbig").expect("get"), Some(big));
    drop(store);
    let mut files = 0;
    let mut stack = vec![tmp.path().to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).expect("read");
                assert!(
                    !contains(&bytes, MARKER),
                    "{} holds a value",
                    path.display()
                );
            }
        }
    }
    assert!(files > 0);
    // Opened without the key: refused.
    let sled = SledStore::open(tmp.path()).expect("reopen");
    assert!(refuse_if_sealed(&sled, tmp.path()).is_err());
}

#[tokio::test]
async fn a_replica_runs_on_a_sealed_store_chunked_values_included() {
    use crate::replica::{Replica, ReplicaOptions};
    let inner = Arc::new(MemoryStore::new());
    let store = SealedStore::open(inner.clone(), ring(1), &dir()).expect("open");
    let replica = Replica::open(Arc::new(store), ReplicaOptions::new("hefei")).expect("replica");
    let big: Vec<u8> = MARKER.iter().copied().cycle().take(1 << 20).collect();
    replica
        .write("situation", "hefei/small", Some(MARKER.to_vec()))
        .await
        .expect("write");
    replica
        .write("situation", "hefei/big", Some(big.clone()))
        .await
        .expect("write");
    let read = replica
        .get("situation", "hefei/big")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(read.winner().value.as_deref(), Some(&big[..]));
    replica.close().await.expect("close");
    let rows = raw(&inner);
    assert!(
        rows.len() > 100,
        "the big value is chunked: {} rows",
        rows.len()
    );
    assert!(rows.iter().all(|(_, v)| !contains(v, MARKER)));
}
