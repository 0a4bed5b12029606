//! Encryption at rest: [`SealedStore`] wraps any [`Store`] so that every value it puts into
//! the inner store is encrypted and authenticated (AES-256-GCM), and every value it reads
//! back is checked before it is returned.
//!
//! **What stays readable.** Keys are stored as they are, since the replica's ordered prefix
//! scans need them: collection names, record keys, origins and counters of versions, and the
//! number and sizes of values (a sealed value is its plaintext plus [`OVERHEAD`] bytes) can
//! be read by whoever reads the data dir. Values (record values, sibling sets with their
//! authors and signatures, collection states, the node's identity) cannot.
//!
//! **Sealed value layout.** `format (1) | key id (4) | nonce (12) | ciphertext | tag (16)`.
//! The additional authenticated data is `format | key id | store key`, so a value moved to
//! another key (or given another header) fails to open. The key id names the storage key
//! that sealed the value, so a store can be read with several keys while it is re-keyed.
//!
//! **Nonces.** Each open of a store draws, from the system's generator, a random 32-bit
//! prefix and a random 63-bit starting counter; each seal takes the next counter value
//! (never wrapping), so the 96-bit nonces of one open are all distinct. Two opens under the
//! same key can only repeat a nonce if their prefixes are equal (probability 2^-32 per pair
//! of opens) *and* their counter ranges overlap (probability at most (s1 + s2) / 2^63 for
//! opens that seal s1 and s2 values). Over a key's whole life the chance of any repeat is
//! below `opens × seals / 2^94`: for a million restarts and 2^40 seals, below 2^-34. Unlike
//! a counter persisted in the store, this holds when the data dir is restored from an old
//! copy or loses its last writes in a crash, since nothing is read back to pick a nonce.
//!
//! **The key check.** The reserved key [`CHECK_KEY`] (keys below `0x01` belong to this
//! wrapper and are hidden from callers) holds a sealed record listing the ids of every key
//! that may have sealed a value in the store. It is written when an empty store is first
//! opened with a key, so a wrong key is refused at open even on an empty store, and a store
//! is never opened without every key its values need.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

use super::{Rows, Store, StoreError, WriteBatch};
use crate::storage_key::{KeyFileError, KeyId, StorageKey};

/// The format byte of a sealed value (version 1: AES-256-GCM).
pub const SEALED_FORMAT: u8 = 1;
/// Bytes before the ciphertext: format, key id, nonce.
const HEADER: usize = 1 + 4 + NONCE_LEN;
/// Bytes of the authentication tag after the ciphertext.
const TAG: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = HEADER + TAG;
/// The smallest key callers may use: smaller keys are this wrapper's.
const FIRST_USER_KEY: &[u8] = &[0x01];
/// Where the key check lives (hidden from callers).
pub const CHECK_KEY: &[u8] = b"\x00sealed";
/// Opens the key check's plaintext.
const CHECK_MAGIC: &[u8; 8] = b"OSKCHK01";
/// Values re-sealed per atomic batch by [`rekey`].
const REKEY_BATCH: usize = 512;

/// Why an encrypted store could not be opened or re-keyed. Each renders as one line with the
/// fix.
#[derive(Debug, Error)]
pub enum SealError {
    /// A key file could not be read.
    #[error("{key}: {source} (fix: {})", source.fix(key))]
    KeyFile {
        /// The config key naming the file.
        key: String,
        /// Why.
        source: KeyFileError,
    },
    /// Two configured key files hold the same key.
    #[error("{} and {} hold the same storage key (key id {id}) (fix: list each key once)", first.display(), second.display())]
    DuplicateKey {
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
        /// Their key's id.
        id: KeyId,
    },
    /// The store was encrypted with a key that no configured key file holds.
    #[error("storage.encryption_key_file {} (key id {file_id}) is not the key the store in {} was encrypted with (key id {store_id}) (fix: point storage.encryption_key_file at the key file with id {store_id}, as `officesync config check` shows it; to change keys, list the old file in storage.previous_encryption_key_files and run `officesyncd --config FILE --rekey`)", file.display(), dir.display())]
    WrongKey {
        /// The data dir.
        dir: PathBuf,
        /// The configured key file.
        file: PathBuf,
        /// Its key's id.
        file_id: KeyId,
        /// The id of the key that sealed the store's key check.
        store_id: KeyId,
    },
    /// An encrypted store opened without a key.
    #[error("the store in {} is encrypted (key id {store_id}), but storage.encryption_key_file is not set (fix: set storage.encryption_key_file to the key file this data dir was encrypted with)", dir.display())]
    KeyNeeded {
        /// The data dir.
        dir: PathBuf,
        /// The id of the key that sealed its key check (zeros when unreadable).
        store_id: KeyId,
    },
    /// A store of plaintext values opened with a key.
    #[error("the store in {} holds values that are not encrypted, but storage.encryption_key_file {} is set (fix: with the daemon stopped, run `officesyncd --config FILE --rekey` once to encrypt them; or remove storage.encryption_key_file)", dir.display(), file.display())]
    NotEncrypted {
        /// The data dir.
        dir: PathBuf,
        /// The configured key file.
        file: PathBuf,
    },
    /// Values sealed with a retired key remain, and no configured key file holds it.
    #[error("the store in {} still holds values sealed with key id {id}, which none of storage.encryption_key_file and storage.previous_encryption_key_files holds (fix: list that key's file in storage.previous_encryption_key_files, and run `officesyncd --config FILE --rekey` before removing it)", dir.display())]
    RetiredKeyMissing {
        /// The data dir.
        dir: PathBuf,
        /// The missing key's id.
        id: KeyId,
    },
    /// `--rekey` with no key configured.
    #[error("config {}: --rekey seals the store with storage.encryption_key_file, which is not set (fix: make a key with `officesync storage-key --out FILE` and set storage.encryption_key_file = FILE)", config.display())]
    NoKey {
        /// The config file.
        config: PathBuf,
    },
    /// An encryption of a plaintext store was interrupted.
    #[error("the encryption of the store in {} by `officesyncd --rekey` was interrupted (fix: run `officesyncd --config FILE --rekey` again; it resumes where it stopped)", dir.display())]
    Unfinished {
        /// The data dir.
        dir: PathBuf,
    },
    /// The store failed (locked, corrupt, I/O), or the key check is damaged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One storage key ready to seal and open.
struct SealingKey {
    id: KeyId,
    aead: LessSafeKey,
    file: PathBuf,
}

impl SealingKey {
    fn new(key: &StorageKey, file: PathBuf) -> SealingKey {
        let bytes = key.aead_key();
        // AES_256_GCM takes exactly the 32 bytes aead_key returns; it cannot refuse them.
        let aead = match UnboundKey::new(&AES_256_GCM, &bytes) {
            Ok(unbound) => LessSafeKey::new(unbound),
            Err(_) => unreachable!("AES-256-GCM key of 32 bytes"),
        };
        SealingKey {
            id: key.id(),
            aead,
            file,
        }
    }
}

/// The keys a [`SealedStore`] uses: the current one seals every new value; previous ones
/// only open values sealed before a key change.
pub struct Keyring {
    current: SealingKey,
    previous: Vec<SealingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// A keyring of `current` (read from `file`, named in errors) alone.
    pub fn new(current: &StorageKey, file: impl Into<PathBuf>) -> Keyring {
        Keyring {
            current: SealingKey::new(current, file.into()),
            previous: Vec::new(),
        }
    }

    /// Adds a previous key (read from `file`); refuses a key already in the ring.
    pub fn with_previous(
        mut self,
        key: &StorageKey,
        file: impl Into<PathBuf>,
    ) -> Result<Keyring, SealError> {
        let file = file.into();
        if let Some(same) = self.find(key.id()) {
            return Err(SealError::DuplicateKey {
                first: same.file.clone(),
                second: file,
                id: key.id(),
            });
        }
        self.previous.push(SealingKey::new(key, file));
        Ok(self)
    }

    /// Reads `current` (`storage.encryption_key_file`) and `previous`
    /// (`storage.previous_encryption_key_files`).
    pub fn load(current: &Path, previous: &[PathBuf]) -> Result<Keyring, SealError> {
        let read = |key: String, path: &Path| {
            StorageKey::read(path).map_err(|source| SealError::KeyFile { key, source })
        };
        let mut ring = Keyring::new(
            &read("storage.encryption_key_file".into(), current)?,
            current,
        );
        for (i, path) in previous.iter().enumerate() {
            let key = read(format!("storage.previous_encryption_key_files[{i}]"), path)?;
            ring = ring.with_previous(&key, path)?;
        }
        Ok(ring)
    }

    /// The id of the key that seals new values.
    pub fn current_id(&self) -> KeyId {
        self.current.id
    }

    fn find(&self, id: KeyId) -> Option<&SealingKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }
}

/// Where the next nonce comes from: a random prefix and a counter from a random start (see
/// the module doc for why no nonce repeats under one key).
#[derive(Debug)]
struct Nonces {
    prefix: [u8; 4],
    next: AtomicU64,
}

impl Nonces {
    fn new() -> Result<Nonces, StoreError> {
        let mut seed = [0u8; 12];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| StoreError::Io("no system randomness for the store's nonces".into()))?;
        let (prefix, start) = seed.split_at(4);
        let mut prefix_bytes = [0u8; 4];
        prefix_bytes.copy_from_slice(prefix);
        let mut start_bytes = [0u8; 8];
        start_bytes.copy_from_slice(start);
        Ok(Nonces {
            prefix: prefix_bytes,
            // Below 2^63: at least 2^63 seals before the counter could run out.
            next: AtomicU64::new(u64::from_be_bytes(start_bytes) >> 1),
        })
    }

    /// The next nonce; an error (never a repeat) once the counter is spent.
    fn next(&self) -> Result<[u8; NONCE_LEN], StoreError> {
        let n = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .map_err(|_| {
                StoreError::Io("the store's nonce counter is spent; restart officesyncd".into())
            })?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.prefix);
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        Ok(nonce)
    }
}

/// A [`Store`] that seals every value it writes into `S` and opens every value it reads.
pub struct SealedStore<S> {
    inner: S,
    keys: Keyring,
    nonces: Nonces,
    dir: PathBuf,
}

impl<S> std::fmt::Debug for SealedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore")
            .field("dir", &self.dir)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// What the key check records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyCheck {
    /// While a plaintext store is being encrypted: keys from this one on are still plaintext.
    plaintext_from: Option<Vec<u8>>,
    /// Ids of every key that may have sealed a value in the store.
    in_use: Vec<KeyId>,
}

impl KeyCheck {
    fn encode(&self) -> Vec<u8> {
        let mut out = CHECK_MAGIC.to_vec();
        out.push(u8::from(self.plaintext_from.is_some()));
        // At most a handful of keys: a ring is one current key and a few previous ones.
        out.push(self.in_use.len().min(255) as u8);
        for id in self.in_use.iter().take(255) {
            out.extend_from_slice(&id.0);
        }
        if let Some(from) = &self.plaintext_from {
            out.extend_from_slice(from);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<KeyCheck> {
        let rest = bytes.strip_prefix(CHECK_MAGIC)?;
        let (&state, rest) = rest.split_first()?;
        let (&n, mut rest) = rest.split_first()?;
        let mut in_use = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let (id, tail) = rest.split_first_chunk::<4>()?;
            in_use.push(KeyId(*id));
            rest = tail;
        }
        let plaintext_from = match state {
            0 if rest.is_empty() => None,
            1 => Some(rest.to_vec()),
            _ => return None,
        };
        Some(KeyCheck {
            plaintext_from,
            in_use,
        })
    }
}

/// How a [`rekey`] went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// The key every value is now sealed with.
    pub key_id: Option<KeyId>,
    /// Values in the store.
    pub values: u64,
    /// Plaintext values encrypted (a store that was not encrypted before).
    pub encrypted: u64,
    /// Values sealed with a previous key, re-sealed with the current one.
    pub resealed: u64,
}

/// The additional authenticated data of a value at `key` under header `head` (format and
/// key id).
fn aad(head: &[u8], key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(head.len() + key.len());
    aad.extend_from_slice(head);
    aad.extend_from_slice(key);
    aad
}

/// A store key as error messages show it (escaped, shortened).
fn describe(key: &[u8]) -> String {
    let shown: String = key.escape_ascii().to_string();
    if shown.len() > 120 {
        let mut cut = 120;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &shown[..cut])
    } else {
        shown
    }
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The key id in the header of a sealed value, if it has one of this format.
fn sealed_by(value: &[u8]) -> Option<KeyId> {
    if value.len() < OVERHEAD || value[0] != SEALED_FORMAT {
        return None;
    }
    let (id, _) = value[1..].split_first_chunk::<4>()?;
    Some(KeyId(*id))
}

/// Refuses a store that holds a key check (so was encrypted) when no key is configured.
pub fn refuse_if_sealed(store: &dyn Store, dir: &Path) -> Result<(), SealError> {
    match store.get(CHECK_KEY)? {
        None => Ok(()),
        Some(raw) => Err(SealError::KeyNeeded {
            dir: dir.to_owned(),
            store_id: sealed_by(&raw).unwrap_or(KeyId([0; 4])),
        }),
    }
}

impl<S: Store> SealedStore<S> {
    /// Opens `inner` (the store in `dir`, named in errors) with `keys`. An empty store gets
    /// a key check of the current key; any other store must hold one that a key of `keys`
    /// opens, and every key it lists must be in `keys`.
    pub fn open(inner: S, keys: Keyring, dir: &Path) -> Result<SealedStore<S>, SealError> {
        let store = SealedStore {
            inner,
            keys,
            nonces: Nonces::new()?,
            dir: dir.to_owned(),
        };
        match store.read_check()? {
            None => {
                if !store.inner.range(b"", None, 1)?.is_empty() {
                    return Err(SealError::NotEncrypted {
                        dir: store.dir.clone(),
                        file: store.keys.current.file.clone(),
                    });
                }
                store.write_check(&KeyCheck {
                    plaintext_from: None,
                    in_use: vec![store.keys.current_id()],
                })?;
            }
            Some(check) => {
                if check.plaintext_from.is_some() {
                    return Err(SealError::Unfinished {
                        dir: store.dir.clone(),
                    });
                }
                store.require_keys(&check)?;
                let current = store.keys.current_id();
                if !check.in_use.contains(&current) {
                    // Listed before the first value it seals, in its own synced write.
                    let mut check = check;
                    check.in_use.push(current);
                    store.write_check(&check)?;
                }
            }
        }
        Ok(store)
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Every key `check` lists must be in the ring.
    fn require_keys(&self, check: &KeyCheck) -> Result<(), SealError> {
        match check
            .in_use
            .iter()
            .find(|id| self.keys.find(**id).is_none())
        {
            Some(id) => Err(SealError::RetiredKeyMissing {
                dir: self.dir.clone(),
                id: *id,
            }),
            None => Ok(()),
        }
    }

    /// The key check, `None` in a store that has none; refuses one no key opens.
    fn read_check(&self) -> Result<Option<KeyCheck>, SealError> {
        let Some(raw) = self.inner.get(CHECK_KEY)? else {
            return Ok(None);
        };
        let corrupt = |detail: String| {
            SealError::Store(StoreError::Corrupt {
                path: self.dir.display().to_string(),
                detail,
            })
        };
        let id = sealed_by(&raw).ok_or_else(|| {
            corrupt("its encryption key check is not a sealed value of format 1".into())
        })?;
        if self.keys.find(id).is_none() {
            return Err(SealError::WrongKey {
                dir: self.dir.clone(),
                file: self.keys.current.file.clone(),
                file_id: self.keys.current.id,
                store_id: id,
            });
        }
        let plain = self.open_value(CHECK_KEY, raw)?;
        KeyCheck::decode(&plain)
            .map(Some)
            .ok_or_else(|| corrupt("its encryption key check does not decode".into()))
    }

    /// Seals and writes `check`, then syncs.
    fn write_check(&self, check: &KeyCheck) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(CHECK_KEY.to_vec(), self.seal(CHECK_KEY, &check.encode())?);
        self.inner.apply(batch)?;
        self.inner.sync()
    }

    /// `value` sealed for `key` with the current key.
    fn seal(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce = self.nonces.next()?;
        let current = &self.keys.current;
        let mut out = Vec::with_capacity(OVERHEAD + value.len());
        out.push(SEALED_FORMAT);
        out.extend_from_slice(&current.id.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let aad = aad(&out[..5], key);
        let tag = current
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut out[HEADER..],
            )
            .map_err(|_| {
                StoreError::Io(format!("cannot encrypt the value of {}", describe(key)))
            })?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plaintext of `sealed`, read at `key`; a typed error naming the key when it is not
    /// a sealed value, was sealed with an unknown key, or fails authentication.
    fn open_value(&self, key: &[u8], mut sealed: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.dir.display().to_string(),
            detail: format!("the value of {}: {detail}", describe(key)),
        };
        let Some(id) = sealed_by(&sealed) else {
            return Err(corrupt(format!(
                "not an encrypted value ({} bytes{}); written without encryption, or damaged",
                sealed.len(),
                sealed
                    .first()
                    .map_or(String::new(), |b| format!(", format byte {b}"))
            )));
        };
        let Some(sealer) = self.keys.find(id) else {
            return Err(corrupt(format!(
                "sealed with key id {id}, which no configured key file holds"
            )));
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[5..HEADER]);
        let aad = aad(&sealed[..5], key);
        let len = sealer
            .aead
            .open_within(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut sealed,
                HEADER..,
            )
            .map_err(|_| {
                corrupt(format!(
                    "fails authentication under key id {id} (altered, damaged, or moved from \
                     another key)"
                ))
            })?
            .len();
        sealed.truncate(len);
        Ok(sealed)
    }
}

impl<S: Store> Store for SealedStore<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if key < FIRST_USER_KEY {
            return Ok(None);
        }
        match self.inner.get(key)? {
            None => Ok(None),
            Some(sealed) => self.open_value(key, sealed).map(Some),
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Rows, StoreError> {
        let start = start.max(FIRST_USER_KEY);
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        self.inner
            .range(start, end, limit)?
            .into_iter()
            .map(|(k, v)| {
                let v = self.open_value(&k, v)?;
                Ok((k, v))
            })
            .collect()
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut sealed = WriteBatch {
            ops: Vec::with_capacity(batch.ops.len()),
        };
        for (key, value) in batch.ops {
            if key.as_slice() < FIRST_USER_KEY {
                return Err(StoreError::Io(format!(
                    "key {} is reserved for the encryption layer",
                    describe(&key)
                )));
            }
            let value = value.map(|v| self.seal(&key, &v)).transpose()?;
            sealed.ops.push((key, value));
        }
        // One inner batch: as atomic as the batch it replaces.
        self.inner.apply(sealed)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }

    fn mark_durable(&self, generation: u64) -> Result<(), StoreError> {
        self.inner.mark_durable(generation)
    }

    fn durable_mark(&self) -> Option<u64> {
        self.inner.durable_mark()
    }

    fn unsynced_blob_files(&self) -> u64 {
        self.inner.unsynced_blob_files()
    }
}

/// Seals every value of `inner` (the store in `dir`) with the current key of `keys`, with the
/// daemon stopped: encrypts a store of plaintext values, or re-seals values sealed with a
/// previous key, so that key can be retired. Works in atomic batches and resumes after an
/// interruption; the key check lists only the current key once it is done.
pub fn rekey<S: Store>(inner: S, keys: Keyring, dir: &Path) -> Result<RekeyReport, SealError> {
    let store = SealedStore {
        inner,
        keys,
        nonces: Nonces::new()?,
        dir: dir.to_owned(),
    };
    let current = store.keys.current_id();
    let mut report = RekeyReport {
        key_id: Some(current),
        ..RekeyReport::default()
    };
    let mut check = match store.read_check()? {
        Some(check) => {
            store.require_keys(&check)?;
            check
        }
        None if store.inner.range(b"", None, 1)?.is_empty() => {
            store.write_check(&KeyCheck {
                plaintext_from: None,
                in_use: vec![current],
            })?;
            return Ok(report);
        }
        None => {
            let check = KeyCheck {
                plaintext_from: Some(FIRST_USER_KEY.to_vec()),
                in_use: vec![current],
            };
            store.write_check(&check)?;
            check
        }
    };
    if !check.in_use.contains(&current) {
        check.in_use.push(current);
        store.write_check(&check)?;
    }
    // Plaintext values first: every key from the cursor on, in order.
    while let Some(from) = check.plaintext_from.clone() {
        let rows = store.inner.range(&from, None, REKEY_BATCH)?;
        let mut batch = WriteBatch::default();
        for (k, v) in &rows {
            batch.put(k.clone(), store.seal(k, v)?);
        }
        report.encrypted += rows.len() as u64;
        check.plaintext_from = match rows.last() {
            Some((last, _)) if rows.len() == REKEY_BATCH => Some(successor(last)),
            _ => None,
        };
        // The cursor moves in the same atomic batch as the values it passes.
        batch.put(CHECK_KEY.to_vec(), store.seal(CHECK_KEY, &check.encode())?);
        store.inner.apply(batch)?;
    }
    store.inner.sync()?;
    // Then values sealed with any other key.
    let mut from = FIRST_USER_KEY.to_vec();
    loop {
        let rows = store.inner.range(&from, None, REKEY_BATCH)?;
        let mut batch = WriteBatch::default();
        for (k, v) in &rows {
            report.values += 1;
            if sealed_by(v) == Some(current) {
                continue;
            }
            let plain = store.open_value(k, v.clone())?;
            batch.put(k.clone(), store.seal(k, &plain)?);
            report.resealed += 1;
        }
        if !batch.is_empty() {
            store.inner.apply(batch)?;
        }
        match rows.last() {
            Some((last, _)) if rows.len() == REKEY_BATCH => from = successor(last),
            _ => break,
        }
    }
    check.in_use = vec![current];
    store.write_check(&check)?;
    Ok(report)
}

#[cfg(test)]
mod tests;
