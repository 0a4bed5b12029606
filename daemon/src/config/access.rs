//! Whether a user account may use the files a config names, from ownership and mode bits.
//!
//! `officesync config check` runs as root, but `officesyncd` runs as its own user: this module
//! tells, without switching users, whether that user can read the config and the `[tls]` files
//! and use `node.data_dir`, and if not, which file or directory stops it and the command that
//! fixes it. The daemon uses the same explanation when it cannot read a file itself. Access
//! control lists and security modules (SELinux, AppArmor) are not considered.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The system user database.
const PASSWD: &str = "/etc/passwd";
/// The system group database.
const GROUP: &str = "/etc/group";

/// A user account as the kernel checks it: user id, primary group, supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user name (`uid N` when the user database does not know the uid).
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Every group id the account's processes carry, the primary one included.
    pub groups: Vec<u32>,
}

/// What an account needs of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read a file.
    Read,
    /// Create, write and remove files in a directory (read, write and search it).
    Manage,
}

/// What [`Account::check`] found when nothing stops the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The path exists and the account may use it.
    Allowed,
    /// The path does not exist; the account may search the directories above it that do.
    Missing,
    /// This process may not look (it is not root, and a directory on the way is closed to
    /// it): nothing is known.
    Unknown,
}

/// Why an account cannot use a path: the path that stops it, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The path the account needs.
    pub path: PathBuf,
    /// The path that stops it: `path` itself, or a directory above it the account cannot
    /// search.
    pub blocker: PathBuf,
    /// `owner:group` of the blocker, as names where the databases know them.
    pub ownership: String,
    /// The blocker's permission bits.
    pub mode: u32,
    /// The command that fixes it.
    pub fix: String,
}

impl Account {
    /// The account `name` from `/etc/passwd` and `/etc/group`; `Ok(None)` if there is no such
    /// user.
    pub fn lookup(name: &str) -> io::Result<Option<Account>> {
        let passwd = fs::read_to_string(PASSWD)?;
        let group = fs::read_to_string(GROUP).unwrap_or_default();
        Ok(Account::from_databases(name, &passwd, &group))
    }

    /// The account `name` from the text of a passwd and a group file.
    pub fn from_databases(name: &str, passwd: &str, group: &str) -> Option<Account> {
        let (uid, gid) = passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let _password = fields.next()?;
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })?;
        let mut groups = vec![gid];
        for line in group.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let [_, _, id, members] = fields[..] {
                if members.split(',').any(|m| m.trim() == name) {
                    if let Ok(id) = id.parse() {
                        if !groups.contains(&id) {
                            groups.push(id);
                        }
                    }
                }
            }
        }
        Some(Account {
            name: name.to_owned(),
            uid,
            gid,
            groups,
        })
    }

    /// The account this process runs as (its effective ids, from `/proc/self/status`), or
    /// `None` where that cannot be read.
    pub fn current() -> Option<Account> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let ids = |key: &str| -> Option<Vec<u32>> {
            let line = status.lines().find_map(|l| l.strip_prefix(key))?;
            line.split_whitespace().map(|n| n.parse().ok()).collect()
        };
        let uid = *ids("Uid:")?.get(1)?;
        let gid = *ids("Gid:")?.get(1)?;
        let mut groups = vec![gid];
        for g in ids("Groups:").unwrap_or_default() {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let passwd = fs::read_to_string(PASSWD).unwrap_or_default();
        let name = id_name(&passwd, uid).unwrap_or_else(|| format!("uid {uid}"));
        Some(Account {
            name,
            uid,
            gid,
            groups,
        })
    }

    /// `user NAME (uid N)`, for messages.
    pub fn describe(&self) -> String {
        if self.name == format!("uid {}", self.uid) {
            format!("the user with uid {}", self.uid)
        } else {
            format!("user {} (uid {})", self.name, self.uid)
        }
    }

    /// The name of the account's primary group, or its number.
    pub fn group_name(&self) -> String {
        let group = fs::read_to_string(GROUP).unwrap_or_default();
        id_name(&group, self.gid).unwrap_or_else(|| self.gid.to_string())
    }

    /// Whether the account may do `want` (bits of `rwx`, 4/2/1) to a file with `meta`.
    fn allowed(&self, meta: &fs::Metadata, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.groups.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }

    /// Whether the account can do `need` to `path` (an absolute path), or what stops it.
    ///
    /// A path this process cannot look at gives [`Access::Unknown`].
    pub fn check(&self, path: &Path, need: Need) -> Result<Access, Box<Denied>> {
        let ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        for dir in ancestors.into_iter().rev() {
            let meta = match fs::metadata(dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Access::Missing),
                Err(_) => return Ok(Access::Unknown),
            };
            if !self.allowed(&meta, 1) {
                return Err(self.denied(path, dir, &meta, Need::Read));
            }
        }
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Access::Missing),
            Err(_) => return Ok(Access::Unknown),
        };
        let want = match need {
            Need::Read if meta.is_dir() => 5,
            Need::Read => 4,
            Need::Manage => 7,
        };
        if self.allowed(&meta, want) {
            Ok(Access::Allowed)
        } else {
            Err(self.denied(path, path, &meta, need))
        }
    }

    /// The [`Denied`] for `blocker` (with `meta`) in the way of `path`.
    fn denied(&self, path: &Path, blocker: &Path, meta: &fs::Metadata, need: Need) -> Box<Denied> {
        let passwd = fs::read_to_string(PASSWD).unwrap_or_default();
        let group = fs::read_to_string(GROUP).unwrap_or_default();
        let owner = id_name(&passwd, meta.uid()).unwrap_or_else(|| meta.uid().to_string());
        let owner_group = id_name(&group, meta.gid()).unwrap_or_else(|| meta.gid().to_string());
        let b = blocker.display();
        let (user, grp) = (&self.name, self.group_name());
        let fix = if need == Need::Manage {
            format!("chown {user}:{grp} {b} && chmod 0700 {b}")
        } else if meta.is_dir() {
            format!("chown root:{grp} {b} && chmod 0750 {b}")
        } else {
            format!("chown root:{grp} {b} && chmod 0640 {b}")
        };
        Box::new(Denied {
            path: path.to_owned(),
            blocker: blocker.to_owned(),
            ownership: format!("{owner}:{owner_group}"),
            mode: meta.mode() & 0o7777,
            fix,
        })
    }
}

impl Denied {
    /// What the account cannot do, one line: `user officesync (uid 999) cannot read
    /// /etc/officesync/node.key: it is root:root, mode 0600`.
    pub fn describe(&self, account: &Account, need: Need) -> String {
        let verb = match need {
            Need::Read => "read",
            Need::Manage => "write to",
        };
        let who = account.describe();
        if self.blocker == self.path {
            format!(
                "{who} cannot {verb} {}: it is {}, mode {:04o}",
                self.path.display(),
                self.ownership,
                self.mode
            )
        } else {
            format!(
                "{who} cannot {verb} {}: it cannot enter {}, which is {}, mode {:04o}",
                self.path.display(),
                self.blocker.display(),
                self.ownership,
                self.mode
            )
        }
    }
}

/// The name of id `id` in a passwd or group file's text.
fn id_name(database: &str, id: u32) -> Option<String> {
    database.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == id).then(|| name.to_owned())
    })
}
