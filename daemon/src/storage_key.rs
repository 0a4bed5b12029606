//! Storage keys for encryption at rest: making a new key file (`officesync storage-key`),
//! reading one (`[storage] encryption_key_file`), and what is derived from a key (the AEAD
//! key that seals store values and the short key id that names the key in sealed values).
//!
//! A key file holds 32 random bytes written as 64 hexadecimal digits and a newline (so it
//! can be printed, copied into a password safe or typed back in); a file of exactly 32 raw
//! bytes (`head -c 32 /dev/urandom`) is read too. The key is never used directly: HKDF-SHA256
//! derives from it the AES-256-GCM key and the key id, so the id reveals nothing about the
//! key. Built without the `node` feature, for the CLI.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Bytes of key material in a key file.
pub const KEY_BYTES: usize = 32;

/// Mode of a key file `officesync storage-key` writes: its owner only.
pub const KEY_FILE_MODE: u32 = 0o600;

/// HKDF salt: fixes the derivations to this use and this version of the sealed format.
const HKDF_SALT: &[u8] = b"officesync storage key v1";
/// HKDF info of the AEAD key.
const INFO_AEAD: &[u8] = b"officesync storage aes-256-gcm";
/// HKDF info of the key id.
const INFO_ID: &[u8] = b"officesync storage key id";

/// Why a key file could not be written or read. Each renders as one line naming the file.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// The file exists and `--force` was not given.
    #[error("{} already exists; refusing to replace it: a store encrypted with the key in it could no longer be read (fix: choose another --out, or pass --force if that key is no longer needed)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file could not be read (missing, not readable by this user).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file does not hold a key.
    #[error("{} is not a storage key: {detail}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Every user of the machine may read (or write) the file.
    #[error("{} is open to every user of this machine (mode {mode:04o})", path.display())]
    OpenToAll {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The system's random number generator failed.
    #[error("no system randomness to make a key")]
    Random,
}

impl KeyFileError {
    /// The file the error is about (`None` for [`KeyFileError::Random`]).
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeyFileError::Exists { path }
            | KeyFileError::Write { path, .. }
            | KeyFileError::Read { path, .. }
            | KeyFileError::Format { path, .. }
            | KeyFileError::OpenToAll { path, .. } => Some(path),
            KeyFileError::Random => None,
        }
    }

    /// How to fix this error for the config key `key` (e.g. `storage.encryption_key_file`).
    pub fn fix(&self, key: &str) -> String {
        match self {
            KeyFileError::OpenToAll { path, .. } => format!(
                "chmod 0600 {p} (or chown root:officesync {p} && chmod 0640 {p}), and keep \
                 the key out of the data dir and its backups",
                p = path.display()
            ),
            KeyFileError::Read { .. } | KeyFileError::Format { .. } => format!(
                "point {key} at the key file this node's store was encrypted with (for a new \
                 store, make one with `officesync storage-key --out FILE`), readable by the \
                 daemon's user"
            ),
            KeyFileError::Exists { .. } => "choose another file, or pass --force".into(),
            KeyFileError::Write { .. } => "check that the directory exists and is writable".into(),
            KeyFileError::Random => "check the system's random number generator".into(),
        }
    }
}

/// The short public name of a storage key: 4 bytes derived from it, written in every value
/// it seals, shown as 8 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A storage key read from (or made for) a key file. Its bytes never appear in `Debug`.
#[derive(Clone)]
pub struct StorageKey {
    material: [u8; KEY_BYTES],
    id: KeyId,
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl StorageKey {
    /// A key from 32 bytes of key material.
    pub fn from_bytes(material: [u8; KEY_BYTES]) -> StorageKey {
        let mut id = [0u8; 4];
        derive(&material, INFO_ID, &mut id);
        StorageKey {
            material,
            id: KeyId(id),
        }
    }

    /// A new random key from the system's generator.
    pub fn generate() -> Result<StorageKey, KeyFileError> {
        let mut material = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut material)
            .map_err(|_| KeyFileError::Random)?;
        Ok(StorageKey::from_bytes(material))
    }

    /// This key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The AES-256-GCM key derived from this key.
    pub fn aead_key(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        derive(&self.material, INFO_AEAD, &mut key);
        key
    }

    /// Reads the key in `path`: 64 hex digits (whitespace around them ignored) or exactly 32
    /// raw bytes. Refuses a file every user may read or write.
    pub fn read(path: &Path) -> Result<StorageKey, KeyFileError> {
        let read_err = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        if !meta.is_file() {
            return Err(KeyFileError::Format {
                path: path.to_owned(),
                detail: "not a regular file".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            return Err(KeyFileError::OpenToAll {
                path: path.to_owned(),
                mode,
            });
        }
        // A key file is 65 bytes; anything much larger is not one (and is not read whole).
        if meta.len() > 1024 {
            return Err(KeyFileError::Format {
                path: path.to_owned(),
                detail: format!("{} bytes, a key file has 64 hex digits", meta.len()),
            });
        }
        let bytes = fs::read(path).map_err(read_err)?;
        parse(&bytes)
            .map(StorageKey::from_bytes)
            .map_err(|detail| KeyFileError::Format {
                path: path.to_owned(),
                detail,
            })
    }

    /// Writes this key to a new file `path` (mode 0600). An existing file is refused unless
    /// `force`, in which case it is replaced atomically.
    pub fn write_new(&self, path: &Path, force: bool) -> Result<(), KeyFileError> {
        let write_err = |source| KeyFileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut text = crate::pki::hex(&self.material);
        text.push('\n');
        if force {
            return crate::pki::write_atomic(path, text.as_bytes(), KEY_FILE_MODE)
                .map_err(write_err);
        }
        // create_new: a file that appears between a check and the write is never replaced.
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(KEY_FILE_MODE)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(KeyFileError::Exists {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(write_err(e)),
        };
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            drop(file);
            let _ = fs::remove_file(path);
            return Err(write_err(e));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err)?;
        }
        Ok(())
    }
}

/// HKDF-SHA256 of `material` for `info` into `out`.
fn derive(material: &[u8; KEY_BYTES], info: &[u8], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(material);
    let info = [info];
    // Both fail only for an output longer than 255 hash lengths; ours are 4 and 32 bytes.
    let filled = prk
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out));
    debug_assert!(filled.is_ok(), "HKDF output of {} bytes", out.len());
}

/// The key material in a key file's bytes, or what is wrong with them.
fn parse(bytes: &[u8]) -> Result<[u8; KEY_BYTES], String> {
    let text = bytes.trim_ascii();
    if text.len() == 2 * KEY_BYTES && text.iter().all(u8::is_ascii_hexdigit) {
        let mut out = [0u8; KEY_BYTES];
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            // Both are hex digits (checked above), so the fallback never applies.
            let digit = |b: u8| char::from(b).to_digit(16).unwrap_or(0) as u8;
            *byte = digit(pair[0]) << 4 | digit(pair[1]);
        }
        return Ok(out);
    }
    if bytes.len() == KEY_BYTES {
        let mut out = [0u8; KEY_BYTES];
        out.copy_from_slice(bytes);
        return Ok(out);
    }
    Err(format!(
        "expected 64 hex digits (as `officesync storage-key` writes) or 32 raw bytes, found {} bytes",
        bytes.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn a_new_key_file_is_owner_only_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("storage.key");
        let key = StorageKey::generate().expect("key");
        key.write_new(&path, false).expect("write");
        assert_eq!(mode(&path), 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 65, "{text:?}");
        let back = StorageKey::read(&path).expect("read back");
        assert_eq!(back.id(), key.id());
        assert_eq!(back.aead_key(), key.aead_key());
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("storage.key");
        let first = StorageKey::generate().expect("key");
        first.write_new(&path, false).expect("write");
        let second = StorageKey::generate().expect("key");
        let err = second.write_new(&path, false).expect_err("exists");
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("storage.key"), "{err}");
        assert_eq!(StorageKey::read(&path).expect("read").id(), first.id());
        second.write_new(&path, true).expect("forced");
        assert_eq!(StorageKey::read(&path).expect("read").id(), second.id());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn keys_differ_and_ids_follow_the_key() {
        let a = StorageKey::generate().expect("key");
        let b = StorageKey::generate().expect("key");
        assert_ne!(a.aead_key(), b.aead_key());
        assert_ne!(a.id(), b.id());
        let same = StorageKey::from_bytes([7; KEY_BYTES]);
        assert_eq!(same.id(), StorageKey::from_bytes([7; KEY_BYTES]).id());
        // The AEAD key is derived, never the key file's bytes themselves.
        assert_ne!(same.aead_key(), [7; KEY_BYTES]);
        assert!(!format!("{same:?}").contains("material"));
    }

    #[test]
    fn raw_and_hex_files_read_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let path = dir.path().join(name);
            fs::write(&path, bytes).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            path
        };
        let raw = write("raw", &[9u8; 32], 0o600);
        assert_eq!(
            StorageKey::read(&raw).expect("raw").id(),
            StorageKey::from_bytes([9; 32]).id()
        );
        let hex = write(
            "hex",
            format!("  {}\n\n", "0A".repeat(32)).as_bytes(),
            0o640,
        );
        assert_eq!(
            StorageKey::read(&hex).expect("hex").id(),
            StorageKey::from_bytes([10; 32]).id()
        );
        for (name, bytes) in [
            ("short", "ab".repeat(31).into_bytes()),
            ("not-hex", "zz".repeat(32).into_bytes()),
            ("empty", Vec::new()),
        ] {
            let path = write(name, &bytes, 0o600);
            let err = StorageKey::read(&path).expect_err(name);
            assert!(matches!(err, KeyFileError::Format { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let open = write("open", "ab".repeat(32).as_bytes(), 0o644);
        let err = StorageKey::read(&open).expect_err("world-readable");
        assert!(
            matches!(err, KeyFileError::OpenToAll { mode: 0o644, .. }),
            "{err}"
        );
        let err = StorageKey::read(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, KeyFileError::Read { .. }), "{err}");
        let err = StorageKey::read(dir.path()).expect_err("a directory");
        assert!(matches!(err, KeyFileError::Format { .. }), "{err}");
    }
}
