//! Staff access: users, roles and tokens (`/v1/whoami`, `/v1/users`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a user may do: each role includes the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads of its collections, status and metrics.
    Reader,
    /// Also writes and deletes in its collections.
    Writer,
    /// Everything: every collection, `_policy`, users, the audit log, verify.
    Admin,
}

impl Role {
    /// The role's name as the CLI and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    /// Parses `reader`, `writer` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as listed: everything but the token (which is never stored) and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// Its collections (`null`: every collection the node may read).
    pub collections: Option<Vec<String>>,
    /// When it was added (unix ms).
    pub created_ms: u64,
    /// When its current token was issued (unix ms).
    pub token_issued_ms: u64,
}

/// `GET /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersBody {
    /// Every user, by name.
    pub users: Vec<UserInfo>,
}

/// `POST /v1/users`: the user to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Its name: `[a-z0-9][a-z0-9._-]{0,63}`.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its collections (`null` or absent: every collection the node may read).
    #[serde(default)]
    pub collections: Option<Vec<String>>,
}

/// A user's new token (`POST /v1/users`, `POST /v1/users/{name}/token`), shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBody {
    /// The user.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The token: give it to the user; it is not stored and cannot be shown again.
    pub token: String,
}

/// `DELETE /v1/users/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedBody {
    /// The removed user.
    pub removed: String,
}

/// `GET /v1/whoami`: who the request's token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The user (`null` when the node serves with `auth = "none"`).
    pub user: Option<String>,
    /// Its role.
    pub role: Role,
    /// Its collections (`null`: every collection the node may read).
    pub collections: Option<Vec<String>>,
    /// `token` or `none`: how the node authenticates.
    pub auth: String,
}
