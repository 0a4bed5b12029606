//! Staff access: the node's users with their roles and collection lists, their tokens (kept
//! only as SHA-256 hashes, compared in constant time), the first admin token written at first
//! start, and the per-address slowdown of failed authentications.
//!
//! Users are local to a node (they do not replicate): `DATA_DIR/users.json`, mode 0600,
//! replaced atomically on every change, so a rotation or a removal takes effect at once and
//! survives a crash. A token is 256 random bits; since it cannot be guessed, one SHA-256 is
//! enough to store it (no password stretching is needed), and what is stored cannot be used to
//! sign in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The file, in the data dir, holding the node's users.
pub const USERS_FILE: &str = "users.json";
pub use crate::config::ADMIN_TOKEN_FILE;
/// The name of the admin user made at first start.
pub const FIRST_ADMIN: &str = "admin";
/// What every token starts with (so a leaked one is easy to recognise in a scan of files).
pub const TOKEN_PREFIX: &str = "ost_";
/// Longest user name.
pub const MAX_USER_NAME: usize = 64;
/// Most users one node keeps.
pub const MAX_USERS: usize = 1024;

pub use officesync_api::{Role, UserInfo};

/// Parses a role name, as the API's users routes take it.
pub fn parse_role(s: &str) -> Result<Role, AuthError> {
    Role::parse(s).ok_or_else(|| AuthError::BadRole(s.chars().take(32).collect()))
}

/// Why a user operation was refused, or the users file could not be used.
#[derive(Debug, Error)]
pub enum AuthError {
    /// A user name outside `[a-z0-9][a-z0-9._-]{0,63}`.
    #[error(
        "invalid user name {0:?}: use 1 to {MAX_USER_NAME} of a-z, 0-9, '.', '_', '-', \
         starting with a letter or digit"
    )]
    BadName(String),
    /// A role other than reader, writer, admin.
    #[error("invalid role {0:?}: use reader, writer or admin")]
    BadRole(String),
    /// A collection list entry that is not a collection name.
    #[error("invalid collection {0:?} in the user's collection list")]
    BadCollection(String),
    /// `user add` of a name that exists.
    #[error("user {0:?} already exists (use `officesync user token {0}` for a new token)")]
    Exists(String),
    /// A user that does not exist.
    #[error("no user {0:?} (see `officesync user list`)")]
    NoSuchUser(String),
    /// Removing the last admin would lock every admin out.
    #[error("{0:?} is the last admin: add another admin first")]
    LastAdmin(String),
    /// [`MAX_USERS`] reached.
    #[error("this node already has {MAX_USERS} users")]
    TooMany,
    /// The users file is unreadable or damaged: the daemon refuses to start over it.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No system randomness for a token.
    #[error("no system randomness for a token")]
    Random,
}

/// One user as stored: never the token, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredUser {
    name: String,
    role: Role,
    /// `None`: every collection the node may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    collections: Option<Vec<String>>,
    /// Hex SHA-256 of the token.
    token_sha256: String,
    /// When the user was added (unix ms).
    created_ms: u64,
    /// When its token was last issued (unix ms).
    token_issued_ms: u64,
}

/// The users file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    format: u32,
    users: Vec<StoredUser>,
}

/// Who made a request: the user a token belongs to, with what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name (`None` when the node serves with `auth = "none"`).
    pub user: Option<String>,
    /// Its role.
    pub role: Role,
    /// Its collections (`None`: all).
    pub collections: Option<Vec<String>>,
    /// When the token that authenticated was issued (unix ms; `None` without a token): a
    /// rotated token is another issue.
    pub token_issued_ms: Option<u64>,
}

impl Principal {
    /// Whoever reaches a node serving with `auth = "none"`: an admin without a name.
    pub fn anonymous_admin() -> Self {
        Self {
            user: None,
            role: Role::Admin,
            collections: None,
            token_issued_ms: None,
        }
    }

    /// Is `collection` in this user's list (admins hold every collection)?
    pub fn holds(&self, collection: &str) -> bool {
        self.role == Role::Admin
            || self
                .collections
                .as_ref()
                .is_none_or(|list| list.iter().any(|c| c == collection))
    }

    /// May it read `collection` (before node policy)? The nodes' status reports (`_status`)
    /// are for admins only.
    pub fn may_read(&self, collection: &str) -> bool {
        if collection == officesync_protocol::status::STATUS_COLLECTION {
            return self.role == Role::Admin;
        }
        self.holds(collection)
    }

    /// May it write or delete in `collection` (before node policy)? `_`-collections
    /// (`_policy`) take admins only.
    pub fn may_write(&self, collection: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Writer => !collection.starts_with('_') && self.holds(collection),
            Role::Reader => false,
        }
    }

    /// The author its writes carry on node `node`: `USER@NODE`, or `NODE` without a user.
    pub fn author(&self, node: &str) -> String {
        match &self.user {
            Some(user) => format!("{user}@{node}"),
            None => node.to_owned(),
        }
    }
}

/// The credential a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
    /// `Authorization: Basic base64(NAME:TOKEN)`.
    Basic {
        /// The user name.
        user: String,
        /// The token.
        token: String,
    },
}

impl Credential {
    /// Parses an `Authorization` header value; `None` when it is neither Bearer nor a
    /// well-formed Basic.
    pub fn parse(header: &str) -> Option<Credential> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return (!rest.is_empty()).then(|| Credential::Bearer(rest.to_owned()));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            let (user, token) = text.split_once(':')?;
            return Some(Credential::Basic {
                user: user.to_owned(),
                token: token.to_owned(),
            });
        }
        None
    }
}

/// The node's users: shared by the API's handlers; every change is written through to
/// `users.json` before it is answered, and takes effect for the next request.
#[derive(Debug, Clone)]
pub struct Users {
    path: PathBuf,
    inner: Arc<RwLock<Vec<StoredUser>>>,
    /// Counts the changes made, for whoever holds access granted earlier (open feeds).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

/// What [`Users::open`] did at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstStart {
    /// Users existed already.
    Existing,
    /// No admin existed: one was made and its token written to this file.
    AdminTokenWritten(PathBuf),
}

impl Users {
    /// Opens (or, at first start, creates) the users of `data_dir`. With no admin user, makes
    /// [`FIRST_ADMIN`] and writes its token to `DATA_DIR/admin.token` (mode 0600). A damaged
    /// users file is an error: the daemon never starts with an empty user list over it.
    pub fn open(data_dir: &Path, now_ms: u64) -> Result<(Users, FirstStart), AuthError> {
        let path = data_dir.join(USERS_FILE);
        let file_err = |detail: String| AuthError::File {
            path: path.clone(),
            detail,
        };
        let users = match std::fs::read(&path) {
            Ok(raw) => {
                let file: UsersFile = serde_json::from_slice(&raw)
                    .map_err(|e| file_err(format!("damaged users file: {e}")))?;
                if file.format != 1 {
                    return Err(file_err(format!(
                        "unknown users file format {}",
                        file.format
                    )));
                }
                file.users
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(file_err(e.to_string())),
        };
        let this = Users {
            path,
            inner: Arc::new(RwLock::new(users)),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        if this.read().iter().any(|u| u.role == Role::Admin) {
            return Ok((this, FirstStart::Existing));
        }
        let token = new_token()?;
        let token_path = data_dir.join(ADMIN_TOKEN_FILE);
        // The token file first: a crash before the users file is written leaves no admin,
        // and the next start makes a new one.
        crate::pki::write_atomic(&token_path, format!("{token}\n").as_bytes(), 0o600).map_err(
            |e| AuthError::File {
                path: token_path.clone(),
                detail: e.to_string(),
            },
        )?;
        this.change(|users| {
            users.retain(|u| u.name != FIRST_ADMIN);
            users.push(StoredUser {
                name: FIRST_ADMIN.to_owned(),
                role: Role::Admin,
                collections: None,
                token_sha256: token_hash_hex(&token),
                created_ms: now_ms,
                token_issued_ms: now_ms,
            });
            Ok(())
        })?;
        Ok((this, FirstStart::AdminTokenWritten(token_path)))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<StoredUser>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f` to a copy of the users, writes it through, then makes it current.
    fn change(
        &self,
        f: impl FnOnce(&mut Vec<StoredUser>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let mut guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = guard.clone();
        f(&mut next)?;
        let file = UsersFile {
            format: 1,
            users: next.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| AuthError::File {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        crate::pki::write_atomic(&self.path, &bytes, 0o600).map_err(|e| AuthError::File {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        *guard = next;
        drop(guard);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Changes whenever a user is added, removed or given a new token.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// `p` as it stands now: `None` when its user is gone or its token was replaced since it
    /// authenticated; else with the user's current role and collections.
    pub fn recheck(&self, p: &Principal) -> Option<Principal> {
        let Some(name) = &p.user else {
            return Some(p.clone());
        };
        let users = self.read();
        let user = users
            .iter()
            .find(|u| &u.name == name && Some(u.token_issued_ms) == p.token_issued_ms)?;
        Some(Principal {
            user: Some(user.name.clone()),
            role: user.role,
            collections: user.collections.clone(),
            token_issued_ms: Some(user.token_issued_ms),
        })
    }

    /// The user `credential` belongs to, or `None`. Every stored hash is compared in
    /// constant time; a Basic credential must also name the token's user.
    pub fn authenticate(&self, credential: &Credential) -> Option<Principal> {
        let (name, token) = match credential {
            Credential::Bearer(token) => (None, token.as_str()),
            Credential::Basic { user, token } => (Some(user.as_str()), token.as_str()),
        };
        let presented = token_hash(token);
        let users = self.read();
        let mut found = None;
        for user in users.iter() {
            let Some(stored) = decode_hex32(&user.token_sha256) else {
                continue;
            };
            if constant_time_eq(&stored, &presented) && name.is_none_or(|n| n == user.name) {
                found = Some(Principal {
                    user: Some(user.name.clone()),
                    role: user.role,
                    collections: user.collections.clone(),
                    token_issued_ms: Some(user.token_issued_ms),
                });
            }
        }
        found
    }

    /// Adds `name` with `role` over `collections` (`None`: all) and returns its token, which
    /// is shown this once and never stored.
    pub fn add(
        &self,
        name: &str,
        role: Role,
        collections: Option<Vec<String>>,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        check_name(name)?;
        if let Some(list) = &collections {
            for c in list {
                officesync_protocol::names::validate_collection_name(c)
                    .map_err(|_| AuthError::BadCollection(c.chars().take(80).collect()))?;
            }
        }
        let token = new_token()?;
        self.change(|users| {
            if users.iter().any(|u| u.name == name) {
                return Err(AuthError::Exists(name.to_owned()));
            }
            if users.len() >= MAX_USERS {
                return Err(AuthError::TooMany);
            }
            users.push(StoredUser {
                name: name.to_owned(),
                role,
                collections,
                token_sha256: token_hash_hex(&token),
                created_ms: now_ms,
                token_issued_ms: now_ms,
            });
            Ok(())
        })?;
        Ok(token)
    }

    /// Removes `name`; its token stops working at once. The last admin cannot be removed.
    pub fn remove(&self, name: &str) -> Result<(), AuthError> {
        self.change(|users| {
            let Some(at) = users.iter().position(|u| u.name == name) else {
                return Err(AuthError::NoSuchUser(name.to_owned()));
            };
            let admins = users.iter().filter(|u| u.role == Role::Admin).count();
            if users[at].role == Role::Admin && admins == 1 {
                return Err(AuthError::LastAdmin(name.to_owned()));
            }
            users.remove(at);
            Ok(())
        })
    }

    /// Issues `name` a new token and returns it with the user's role; the old token stops
    /// working at once.
    pub fn rotate(&self, name: &str, now_ms: u64) -> Result<(String, Role), AuthError> {
        let token = new_token()?;
        let mut role = Role::Reader;
        self.change(|users| {
            let user = users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_owned()))?;
            user.token_sha256 = token_hash_hex(&token);
            user.token_issued_ms = now_ms;
            role = user.role;
            Ok(())
        })?;
        Ok((token, role))
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<UserInfo> {
        let mut list: Vec<UserInfo> = self
            .read()
            .iter()
            .map(|u| UserInfo {
                name: u.name.clone(),
                role: u.role,
                collections: u.collections.clone(),
                created_ms: u.created_ms,
                token_issued_ms: u.token_issued_ms,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

/// Checks a user name: `[a-z0-9][a-z0-9._-]{0,63}` (no `@`, which separates it from the node
/// in an author, and no `:`, which ends it in Basic credentials).
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.chars().take(80).collect()))
    }
}

/// A new token: [`TOKEN_PREFIX`] and 256 random bits, base64url.
fn new_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| AuthError::Random)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn token_hash(token: &str) -> [u8; 32] {
    officesync_protocol::version::value_hash(token.trim().as_bytes())
}

fn token_hash_hex(token: &str) -> String {
    crate::pki::hex(&token_hash(token))
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Compares two hashes without an early exit, so the time taken says nothing of where they
/// differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// How many failed authentications one client address may make in [`FailureLimiter`]'s
/// window before it is told to wait.
pub const MAX_FAILURES: u32 = 10;
/// The window of [`MAX_FAILURES`], in ms.
pub const FAILURE_WINDOW_MS: u64 = 60_000;
/// Most client addresses tracked at once (older windows are dropped first).
const MAX_TRACKED: usize = 4096;

/// Slows brute force: after [`MAX_FAILURES`] failed authentications from one address within
/// [`FAILURE_WINDOW_MS`], further requests from it get 429 until the window has passed.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl FailureLimiter {
    /// A limiter tracking no one.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(seconds)` when `addr` must wait that long before trying again.
    pub fn check(&self, addr: IpAddr, now_ms: u64) -> Result<(), u64> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get(&addr) {
            Some(&(start, count))
                if count >= MAX_FAILURES && now_ms < start + FAILURE_WINDOW_MS =>
            {
                Err((start + FAILURE_WINDOW_MS - now_ms).div_ceil(1000).max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `addr`.
    pub fn failed(&self, addr: IpAddr, now_ms: u64) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&addr) {
            windows.retain(|_, (start, _)| now_ms < *start + FAILURE_WINDOW_MS);
            if windows.len() >= MAX_TRACKED {
                // Still full of live windows: drop the oldest.
                if let Some(oldest) = windows.iter().min_by_key(|(_, w)| w.0).map(|(a, _)| *a) {
                    windows.remove(&oldest);
                }
            }
        }
        let w = windows.entry(addr).or_insert((now_ms, 0));
        if now_ms >= w.0 + FAILURE_WINDOW_MS {
            *w = (now_ms, 0);
        }
        w.1 = w.1.saturating_add(1);
    }

    /// Forgets `addr`'s failures after it authenticated.
    pub fn succeeded(&self, addr: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.remove(&addr);
    }
}

#[cfg(test)]
mod tests;
