//! `deploy/INSTALL.md`, followed to the letter on loopback: every fenced `sh` block of the
//! guide runs with bash, in document order, on the simulated machine its first comment names
//! (`# build machine`, `# CA machine (offline)`, `# general office`, `# office (hefei)`,
//! `# every node`), and must exit 0. So the guide and this test cannot drift: a new block runs
//! as soon as it is written.
//!
//! A machine is a directory standing for its `/`. What the test changes, and nothing else:
//! - **paths**: absolute paths under [`ROOTED`] are rewritten into the machine's directory
//!   (`/etc/officesync` → `<machine>/etc/officesync`);
//! - **USB sticks**: a stick is a directory shared by all machines (`sticks/sdb1` for
//!   `/dev/sdb1`, whichever machine it is plugged into), so what one machine writes on it the
//!   next one reads;
//! - **addresses**: `gov.example.cn:7400` → the general office's loopback replication port,
//!   `0.0.0.0:7400` → the machine's own, `127.0.0.1:7480` → the machine's own API port (and
//!   `OFFICESYNC_API` names it, the CLI's default address on that machine);
//! - **commands that change the host**, by stand-ins first on `PATH` (see [`STANDINS`]):
//!   `cargo` copies the binaries this test run uses (with their debug info, which step 1
//!   strips) instead of compiling a release again;
//!   `scp` copies into the named machine's directory; `mount DEVICE DIR` puts the stick's
//!   directory at DIR (a stick is mounted on one machine at a time) and `umount DIR` takes it
//!   away; `useradd` records the user in the machine's `/etc/passwd`; `install` and `chown`
//!   check that the owner and group exist there; `systemctl` runs the unit's `ExecStart` as systemd would (its `Environment=`,
//!   drop-ins, `StateDirectory=`, `User=`, SIGTERM on stop, and "failed" when the daemon
//!   exits non-zero); `journalctl` reads that output; `firewall-cmd` and `ufw` check and
//!   record the rule;
//! - **the service user** (see [`ServiceUser`]): run as root, the guide's `officesync` user is
//!   the host's `nobody` (uid and gid 65534): `useradd` records it with those ids, `install`
//!   and `chown` really change ownership, `systemctl` really runs the daemon as it, and
//!   `OFFICESYNC_USER=nobody` makes `config check` check access as it, so a file mode the
//!   daemon cannot live with fails the walk-through. Run as another user, ownership is left
//!   alone and everything runs as that user;
//! - **the probe for a node config**: `officesync ca init` and `ca issue` warn on a host with
//!   `/etc/officesync/officesync.toml`; `OFFICESYNC_NODE_CONFIG_PROBE` points them at the
//!   machine's own, not the host's.
//!
//! A block whose comment says "a moment later" is retried for up to [`MOMENT`], as the
//! reader would. The upgrade block runs twice in a row on each node, as two upgrades would.
//! Around some blocks the test checks what the guide says they do ([`Checks::after_block`]),
//! and after every block where the keys are ([`Checks::keys_in_place`]): `ca.key` on the CA
//! machine and its backup sticks only, each node's `node.key` on that node (and on the way
//! there) only; so the general office never holds the CA key or another office's key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use officesync_tests::process::{free_tcp_port, free_udp_port, run_bounded, wait_until};
use officesync_tests::{bins, ApiClient, OutputExt};

/// Paths of a machine's file system that the guide writes or reads (longest first).
const ROOTED: &[&str] = &[
    "/etc/systemd/system",
    "/etc/bash_completion.d",
    "/etc/officesync",
    "/usr/local/share/man",
    "/usr/local/bin",
    "/var/lib/officesync",
    "/var/backups",
    "/root",
    "/mnt",
];

/// How long one block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a "a moment later" block may be retried.
const MOMENT: Duration = Duration::from_secs(30);

/// The stand-ins for commands that would change the host, as `(name, bash script)`.
const STANDINS: &[(&str, &str)] = &[
    ("systemctl", SYSTEMCTL),
    ("journalctl", JOURNALCTL),
    ("cargo", CARGO),
    ("scp", SCP),
    ("mount", MOUNT),
    ("umount", UMOUNT),
    ("useradd", USERADD),
    ("install", INSTALL),
    ("chown", CHOWN),
    ("firewall-cmd", FIREWALL_CMD),
    ("ufw", UFW),
];

/// `systemctl` on a machine: the unit's service as a background process.
const SYSTEMCTL: &str = r#"#!/usr/bin/env bash
# Stand-in for systemctl on the machine in $MACHINE_ROOT.
set -euo pipefail
R="$MACHINE_ROOT"
units="$R/etc/systemd/system"
run="$R/run/systemd"
mkdir -p "$run"
fail() { echo "systemctl: $*" >&2; exit 1; }
unit_file() {
  local u="${1%.service}.service"
  [ -f "$units/$u" ] || fail "Unit $u not found."
  echo "$units/$u"
}
# The unit and its drop-ins, in order (later settings win, as in systemd).
settings() {
  local f d
  f=$(unit_file "$1")
  cat "$f"
  for d in "$f.d"/*.conf; do [ -f "$d" ] && cat "$d"; done
  return 0
}
value() { settings "$1" | sed -n "s/^$2=//p"; }
alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

start() {
  local name="${1%.service}"
  if alive "$name"; then return 0; fi
  local exec w e state mode log from
  exec=$(value "$name" ExecStart | tail -n1)
  [ -n "$exec" ] || fail "$name.service has no ExecStart"
  local -a cmd=() envs=()
  for w in $exec; do case "$w" in /*) cmd+=("$R$w") ;; *) cmd+=("$w") ;; esac; done
  for e in $(value "$name" Environment); do envs+=("$e"); done
  # User=, Group=: with REAL_OWNERS=1, the daemon runs as them and owns its state directory.
  local user group uid= gid=
  user=$(value "$name" User | tail -n1)
  group=$(value "$name" Group | tail -n1)
  if [ "$REAL_OWNERS" = 1 ] && [ -n "$user" ]; then
    uid=$(awk -F: -v n="$user" '$1 == n { print $3; exit }' "$R/etc/passwd")
    gid=$(awk -F: -v n="${group:-$user}" '$1 == n { print $3; exit }' "$R/etc/group")
    [ -n "$uid" ] && [ -n "$gid" ] || fail "$name.service: User=$user or Group=$group does not exist"
    cmd=(setpriv --reuid="$uid" --regid="$gid" --clear-groups "${cmd[@]}")
  fi
  state=$(value "$name" StateDirectory | tail -n1)
  if [ -n "$state" ]; then
    mode=$(value "$name" StateDirectoryMode | tail -n1)
    mkdir -p "$R/var/lib/$state"
    chmod "${mode:-0755}" "$R/var/lib/$state"
    if [ -n "$uid" ]; then /usr/bin/chown -R "$uid:$gid" "$R/var/lib/$state"; fi
  fi
  log="$run/$name.log"
  touch "$log"
  from=$(wc -l < "$log")
  rm -f "$run/$name.exit" "$run/$name.pid"
  PIDFILE="$run/$name.pid" EXITFILE="$run/$name.exit" setsid env "${envs[@]}" \
    bash -c '"$@" & echo $! > "$PIDFILE"; wait $!; echo $? > "$EXITFILE"' _ "${cmd[@]}" \
    < /dev/null >> "$log" 2>&1 &
  # Type=notify: systemd returns once the daemon has said READY=1 (after "node started").
  # Wait (bounded) for the daemon to be up, or to fail as systemd would report it.
  for _ in $(seq 200); do
    if tail -n +"$((from + 1))" "$log" | grep -q "node started"; then return 0; fi
    if [ -f "$run/$name.exit" ]; then
      tail -n 5 "$log" >&2
      fail "Job for $name.service failed: the daemon exited with status $(cat "$run/$name.exit")"
    fi
    sleep 0.1
  done
  fail "$name.service did not start within 20 s"
}

stop() {
  local name="${1%.service}" pid code
  if ! alive "$name"; then rm -f "$run/$name.pid"; return 0; fi
  pid=$(cat "$run/$name.pid")
  kill -TERM "$pid"
  for _ in $(seq 300); do [ -f "$run/$name.exit" ] && break; sleep 0.1; done
  if [ ! -f "$run/$name.exit" ]; then kill -KILL "$pid"; fail "$name.service did not stop within 30 s; killed"; fi
  rm -f "$run/$name.pid"
  code=$(cat "$run/$name.exit")
  [ "$code" = 0 ] || fail "$name.service failed: the daemon exited with status $code on stop"
}

status() {
  local name="${1%.service}"
  unit_file "$name" > /dev/null
  echo "● $name.service - $(value "$name" Description | tail -n1)"
  if alive "$name"; then
    echo "     Active: active (running)"
    echo "   Main PID: $(cat "$run/$name.pid")"
    tail -n 3 "$run/$name.log"
    return 0
  fi
  echo "     Active: inactive (dead)"
  exit 3
}

now=no
args=()
for a in "$@"; do
  case "$a" in
    --now) now=yes ;;
    --no-pager|--quiet|-q) ;;
    -*) fail "option $a is not supported by this stand-in" ;;
    *) args+=("$a") ;;
  esac
done
[ ${#args[@]} -ge 1 ] || fail "no command"
verb=${args[0]}
case "$verb" in
  daemon-reload) for u in "$units"/*.service; do [ -f "$u" ] && grep -q '^\[Service\]' "$u"; done ;;
  enable)
    [ ${#args[@]} -eq 2 ] || fail "enable takes one unit"
    wanted=$(value "${args[1]}" WantedBy | tail -n1)
    mkdir -p "$units/$wanted.wants"
    ln -sf "$(unit_file "${args[1]}")" "$units/$wanted.wants/"
    if [ "$now" = yes ]; then start "${args[1]}"; fi ;;
  start) start "${args[1]}" ;;
  stop) stop "${args[1]}" ;;
  restart) stop "${args[1]}"; start "${args[1]}" ;;
  status) status "${args[1]}" ;;
  reset-failed) unit_file "${args[1]}" > /dev/null ;;
  *) fail "command $verb is not supported by this stand-in" ;;
esac
"#;

/// `journalctl -u UNIT [-n N] [-p warning] [-o cat]`: the output `systemctl` collected.
const JOURNALCTL: &str = r#"#!/usr/bin/env bash
# Stand-in for journalctl on the machine in $MACHINE_ROOT.
set -euo pipefail
unit= lines= priority=
while [ $# -gt 0 ]; do
  case "$1" in
    -u) unit=${2%.service}; shift 2 ;;
    -n) lines=$2; shift 2 ;;
    -p) priority=$2; shift 2 ;;
    -o) [ "$2" = cat ] || { echo "journalctl: -o $2 is not supported" >&2; exit 1; }; shift 2 ;;
    -b|--no-pager) shift ;;
    *) echo "journalctl: $1 is not supported by this stand-in" >&2; exit 1 ;;
  esac
done
[ -n "$unit" ] || { echo "journalctl: -u UNIT is required here" >&2; exit 1; }
log="$MACHINE_ROOT/run/systemd/$unit.log"
[ -f "$log" ] || exit 0
case "$priority" in
  '') cat "$log" ;;
  warning) grep -E ' (WARN|ERROR) |"level":"(WARN|ERROR)"' "$log" || true ;;
  *) echo "journalctl: -p $priority is not supported" >&2; exit 1 ;;
esac | if [ -n "$lines" ]; then tail -n "$lines"; else cat; fi
"#;

/// `cargo build --release --bins`: the binaries this test run uses, without a second build.
const CARGO: &str = r#"#!/usr/bin/env bash
set -euo pipefail
[ "$*" = "build --release --bins" ] || { echo "cargo stand-in: only 'build --release --bins', not '$*'" >&2; exit 1; }
[ -f Cargo.toml ] || { echo "cargo: not in the source tree" >&2; exit 1; }
mkdir -p target/release
cp "$OFFICESYNC_TEST_BIN_DIR/officesyncd" "$OFFICESYNC_TEST_BIN_DIR/officesync" target/release/
echo "    Finished release (stand-in: the binaries of this test run)" >&2
"#;

/// `scp [-r] SRC... root@HOST:PATH` between simulated machines.
const SCP: &str = r#"#!/usr/bin/env bash
set -euo pipefail
fail() { echo "scp: $*" >&2; exit 1; }
recursive=
args=()
for a in "$@"; do
  case "$a" in -r) recursive=-r ;; -*) fail "option $a is not supported" ;; *) args+=("$a") ;; esac
done
[ ${#args[@]} -ge 2 ] || fail "usage: scp [-r] SRC... root@HOST:PATH"
dest=${args[-1]}
unset 'args[-1]'
host=${dest%%:*}
path=${dest#*:}
[ "$host" != "$dest" ] || fail "the destination $dest names no host"
case "$host" in
  root@gov.example.cn) root=$GOV_ROOT ;;
  root@hefei.example.cn) root=$HEFEI_ROOT ;;
  *) fail "unknown host $host" ;;
esac
case "$path" in /*) target=$root$path ;; '') target=$root/root/ ;; *) target=$root/root/$path ;; esac
cp $recursive "${args[@]}" "$target"
"#;

/// `mount /dev/sdXN DIR`: the stick `$STICKS/sdXN`, shared by all machines, appears at DIR
/// (an empty directory of this machine); a stick is mounted on one machine at a time.
const MOUNT: &str = r#"#!/usr/bin/env bash
set -euo pipefail
fail() { echo "mount: $*" >&2; exit 32; }
[ $# -eq 2 ] || fail "the stand-in takes DEVICE DIR, not '$*'"
dev=$1
dir=${2%/}
case "$dev" in /dev/sd[a-z][0-9]) ;; *) fail "$dev: not a USB stick's partition (/dev/sdXN)" ;; esac
stick="$STICKS/${dev#/dev/}"
case "$dir" in "$MACHINE_ROOT"/*) ;; *) fail "$dir is not on this machine" ;; esac
[ -d "$dir" ] && [ ! -L "$dir" ] || fail "$dir: no such directory, or a stick is mounted there"
[ -z "$(ls -A "$dir")" ] || fail "$dir: the mount point is not empty"
[ ! -e "$stick.mounted" ] || fail "$dev is still mounted at $(cat "$stick.mounted") (umount it there first)"
mkdir -p "$stick"
rmdir "$dir"
ln -s "$stick" "$dir"
echo "$dir" > "$stick.mounted"
"#;

/// `umount DIR`: the stick mounted at DIR goes away, leaving the empty mount point.
const UMOUNT: &str = r#"#!/usr/bin/env bash
set -euo pipefail
fail() { echo "umount: $*" >&2; exit 32; }
[ $# -eq 1 ] || fail "the stand-in takes DIR, not '$*'"
dir=${1%/}
[ -L "$dir" ] || fail "$dir: not mounted"
stick=$(readlink "$dir")
rm "$dir"
mkdir "$dir"
rm -f "$stick.mounted"
"#;

/// `useradd --system ... NAME`: the user and its group in the machine's /etc/passwd and group.
const USERADD: &str = r#"#!/usr/bin/env bash
set -euo pipefail
name=${!#}
case " $* " in *" --system "*) ;; *) echo "useradd: the guide must create a --system user" >&2; exit 1 ;; esac
if grep -q "^$name:" "$MACHINE_ROOT/etc/passwd"; then echo "useradd: user '$name' already exists" >&2; exit 9; fi
echo "$name:x:$SERVICE_UID:$SERVICE_GID::/var/lib/$name:/usr/sbin/nologin" >> "$MACHINE_ROOT/etc/passwd"
echo "$name:x:$SERVICE_GID:" >> "$MACHINE_ROOT/etc/group"
"#;

/// `install [-o USER] [-g GROUP] ...`: checks the names, then the real install, with the
/// machine's ids when `REAL_OWNERS=1`.
const INSTALL: &str = r#"#!/usr/bin/env bash
set -euo pipefail
id_of() { awk -F: -v n="$2" '$1 == n { print $3; exit }' "$MACHINE_ROOT/etc/$1"; }
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) id=$(id_of passwd "$2"); [ -n "$id" ] || { echo "install: invalid user '$2'" >&2; exit 1; }
        [ "$REAL_OWNERS" = 1 ] && args+=(-o "$id"); shift 2 ;;
    -g) id=$(id_of group "$2"); [ -n "$id" ] || { echo "install: invalid group '$2'" >&2; exit 1; }
        [ "$REAL_OWNERS" = 1 ] && args+=(-g "$id"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec /usr/bin/install "${args[@]}"
"#;

/// `chown USER[:GROUP] FILE...`: checks the names and the files, and changes ownership to the
/// machine's ids when `REAL_OWNERS=1`.
const CHOWN: &str = r#"#!/usr/bin/env bash
set -euo pipefail
id_of() { awk -F: -v n="$2" '$1 == n { print $3; exit }' "$MACHINE_ROOT/etc/$1"; }
recursive=()
if [ "${1:-}" = -R ]; then recursive=(-R); shift; fi
[ $# -ge 2 ] || { echo "chown: missing operand" >&2; exit 1; }
owner=${1%%:*}
group=${1#*:}
uid=$(id_of passwd "$owner")
[ -n "$uid" ] || { echo "chown: invalid user: '$1'" >&2; exit 1; }
spec=$uid
if [ "$group" != "$1" ]; then
  gid=$(id_of group "$group")
  [ -n "$gid" ] || { echo "chown: invalid group: '$1'" >&2; exit 1; }
  spec=$uid:$gid
fi
shift
for f in "$@"; do [ -e "$f" ] || { echo "chown: cannot access '$f'" >&2; exit 1; }; done
if [ "$REAL_OWNERS" = 1 ]; then /usr/bin/chown "${recursive[@]}" "$spec" "$@"; fi
"#;

/// `firewall-cmd --permanent --add-port=7400/udp`, `firewall-cmd --reload`.
const FIREWALL_CMD: &str = r#"#!/usr/bin/env bash
set -euo pipefail
case "$*" in
  "--permanent --add-port=7400/udp"|"--reload") echo "firewall-cmd $*" >> "$MACHINE_ROOT/run/firewall"; echo success ;;
  *) echo "firewall-cmd stand-in: unexpected '$*'" >&2; exit 1 ;;
esac
"#;

/// `ufw allow 7400/udp`.
const UFW: &str = r#"#!/usr/bin/env bash
set -euo pipefail
[ "$*" = "allow 7400/udp" ] || { echo "ufw stand-in: unexpected '$*'" >&2; exit 1; }
echo "ufw $*" >> "$MACHINE_ROOT/run/firewall"
echo "Rules updated"
"#;

/// The host account that stands for the guide's `officesync` user (see the module doc).
#[derive(Debug, Clone)]
struct ServiceUser {
    /// Its name on the host (`nobody`, or the user running the test).
    name: String,
    /// Its user id.
    uid: u32,
    /// Its primary group id.
    gid: u32,
    /// The name of that group on the host.
    group: String,
    /// Whether ownership is real: the test runs as root and the daemon runs as this user.
    real: bool,
}

impl ServiceUser {
    /// `nobody` (65534:65534) when the test runs as root and the host has it; otherwise the
    /// user running the test (`None` if the host's /etc/passwd does not name it).
    fn for_this_host() -> Option<ServiceUser> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let field = |db: &str, column: usize, value: &str| -> Option<Vec<String>> {
            db.lines()
                .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
                .find(|f| f.get(column).map(String::as_str) == Some(value))
        };
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
        let (uid, real) = match field(&passwd, 0, "nobody") {
            Some(f) if me == 0 && f[2] == "65534" && f[3] == "65534" => (65534, true),
            _ => (me, false),
        };
        let user = field(&passwd, 2, &uid.to_string())?;
        let gid: u32 = user[3].parse().ok()?;
        let group =
            field(&group, 2, &gid.to_string()).map_or_else(|| gid.to_string(), |f| f[0].clone());
        Some(ServiceUser {
            name: user[0].clone(),
            uid,
            gid,
            group,
            real,
        })
    }

    /// `text` (a command's output) with this user as the guide names it: `officesync`, uid 999.
    fn as_in_guide(&self, text: &str) -> String {
        text.replace(
            &format!("user {} (uid {})", self.name, self.uid),
            "user officesync (uid 999)",
        )
        .replace(
            &format!("-o {} -g {} ", self.name, self.group),
            "-o officesync -g officesync ",
        )
        .replace(&format!("root:{} ", self.group), "root:officesync ")
        .replace(
            &format!("chown {}:{} ", self.name, self.group),
            "chown officesync:officesync ",
        )
    }
}

/// One simulated machine.
struct Machine {
    /// The label the guide uses: `build machine`, `CA machine (offline)`, `general office`,
    /// `office (hefei)`.
    label: &'static str,
    /// The directory standing for its `/`.
    root: PathBuf,
    /// Its loopback replication port (for `0.0.0.0:7400`).
    sync_port: u16,
    /// Its loopback API port (for `127.0.0.1:7480`).
    api_port: u16,
}

impl Machine {
    /// A machine with the skeleton of a fresh Debian install under `base/dir`.
    fn new(base: &Path, dir: &str, label: &'static str) -> Machine {
        let root = base.join(dir);
        for sub in [
            "etc/systemd/system",
            "usr/local/bin",
            "usr/local/share/man",
            "var/lib",
            "var/backups",
            "root",
            "run",
            "mnt",
        ] {
            std::fs::create_dir_all(root.join(sub)).expect("machine skeleton");
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n")
            .expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
        Machine {
            label,
            root,
            sync_port: free_udp_port(),
            api_port: free_tcp_port(),
        }
    }

    /// The name of the node this machine runs, if it is one.
    fn node(&self) -> Option<&'static str> {
        match self.label {
            "general office" => Some("general-office"),
            "office (hefei)" => Some("hefei"),
            _ => None,
        }
    }

    /// The node config the guide writes on this machine (`/etc/officesync/officesync.toml`).
    fn node_config(&self) -> PathBuf {
        self.root.join("etc/officesync/officesync.toml")
    }

    /// Where the daemon on this machine writes its admin token: what `officesync` run as root
    /// there reads by default (`/var/lib/officesync/admin.token`).
    fn admin_token_path(&self) -> PathBuf {
        self.root.join("var/lib/officesync/admin.token")
    }

    /// A client of this machine's API, signed in as its admin.
    fn api(&self) -> ApiClient {
        let token =
            officesync_daemon::config::read_admin_token(&self.root.join("var/lib/officesync")).ok();
        ApiClient::new(SocketAddr::from(([127, 0, 0, 1], self.api_port))).with_token(token)
    }

    /// The machine's directory as a string.
    fn root_str(&self) -> &str {
        self.root.to_str().expect("UTF-8 temp path")
    }

    /// `text` with the machine's paths and addresses (see the module doc).
    fn localize(&self, text: &str, hub_sync: u16) -> String {
        let text = text
            .replace("gov.example.cn:7400", &format!("127.0.0.1:{hub_sync}"))
            .replace("0.0.0.0:7400", &format!("127.0.0.1:{}", self.sync_port))
            .replace("127.0.0.1:7480", &format!("127.0.0.1:{}", self.api_port));
        root_paths(&text, self.root_str())
    }

    /// `text` (a command's output) with the machine's paths and addresses as in the guide.
    fn delocalize(&self, text: &str) -> String {
        text.replace(self.root_str(), "")
            .replace(&format!("127.0.0.1:{}", self.api_port), "127.0.0.1:7480")
    }

    /// Stops a daemon the guide left running (the test failed midway): SIGTERM, then SIGKILL.
    fn kill_leftovers(&self) {
        let Ok(pid) = std::fs::read_to_string(self.root.join("run/systemd/officesyncd.pid")) else {
            return;
        };
        let pid = pid.trim();
        let _ = Command::new("kill").args(["-TERM", pid]).status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// Rewrites absolute paths under [`ROOTED`] in `text` into `root`: a prefix counts where it
/// starts a word (after whitespace, a quote, `=`, `(`, `<`, `>` or at the start) and is not
/// followed by a name character.
fn root_paths(text: &str, root: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    'outer: while let Some(c) = rest.chars().next() {
        let starts_word = prev.is_none_or(|p| p.is_whitespace() || "\"'=(<>".contains(p));
        if c == '/' && starts_word {
            for prefix in ROOTED {
                if let Some(after) = rest.strip_prefix(prefix) {
                    let ends = after
                        .chars()
                        .next()
                        .is_none_or(|n| !(n.is_alphanumeric() || n == '_' || n == '-'));
                    if ends {
                        out.push_str(root);
                        out.push_str(prefix);
                        prev = prefix.chars().last();
                        rest = after;
                        continue 'outer;
                    }
                }
            }
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A fenced block of the guide.
#[derive(Debug)]
struct Block {
    /// The info string: `sh`, `text`, `toml`.
    lang: String,
    /// Line number of the opening fence (1-based).
    line: usize,
    /// The lines between the fences.
    body: String,
}

/// Every fenced block of `markdown`, in order.
fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        if let Some(info) = line.strip_prefix("```") {
            match open.take() {
                Some(block) => blocks.push(block),
                None => {
                    open = Some(Block {
                        lang: info.trim().to_owned(),
                        line: i + 1,
                        body: String::new(),
                    })
                }
            }
        } else if let Some(block) = open.as_mut() {
            block.body.push_str(line);
            block.body.push('\n');
        }
    }
    assert!(open.is_none(), "an unclosed code fence in the guide");
    blocks
}

/// The machines a block's first comment names, and whether it says "a moment later".
fn block_target(block: &Block) -> (Vec<&'static str>, bool) {
    let first = block.body.lines().next().unwrap_or_default();
    let marker = first.strip_prefix("# ").unwrap_or_else(|| {
        panic!(
            "INSTALL.md line {}: a command block must start with a comment naming its machine \
             (`# general office`, ...), not {first:?}",
            block.line
        )
    });
    let (machine, note) = marker.split_once(", ").unwrap_or((marker, ""));
    let machines = match machine {
        "build machine" => vec!["build machine"],
        "CA machine (offline)" => vec!["CA machine (offline)"],
        "general office" => vec!["general office"],
        "office (hefei)" => vec!["office (hefei)"],
        "every node" => vec!["general office", "office (hefei)"],
        other => panic!(
            "INSTALL.md line {}: unknown machine {other:?} (use build machine, CA machine \
             (offline), general office, office (hefei) or every node)",
            block.line
        ),
    };
    (machines, note.contains("a moment later"))
}

/// The lines of a TOML text that carry settings (no comments, no blank lines).
fn settings(toml: &str) -> Vec<String> {
    toml.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The body of the `cat > FILE <<'EOF'` here-document in `script`.
fn heredoc<'s>(script: &'s str, file: &str) -> Option<&'s str> {
    let start = script.find(&format!("cat > {file} <<'EOF'\n"))?;
    let body = &script[start..];
    let body = &body[body.find('\n')? + 1..];
    Some(&body[..body.find("\nEOF\n")? + 1])
}

/// Whether `machine`'s node reports a live session with the general office.
fn connected_to_hub(machine: &Machine) -> bool {
    machine.api().status()["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == "general-office" && p["connected"] == true)
}

/// Waits (bounded) until hefei's session with the general office is up (`true`) or down.
fn wait_hub_link(hefei: &Machine, up: bool, what: &str, block: &str) {
    // Dialers back off up to 30 s between attempts, so a reconnection may take that long.
    let waited = Instant::now();
    let ok = wait_until(Duration::from_secs(45), Duration::from_millis(200), || {
        connected_to_hub(hefei) == up
    });
    assert!(ok, "around INSTALL.md's block\n{block}\nexpected: {what}");
    eprintln!("{what}: after {:?}", waited.elapsed());
}

/// What the checks around the blocks share.
struct Checks<'a> {
    /// Every machine.
    machines: &'a [Machine],
    /// The CA machine.
    ca: &'a Machine,
    /// The general office.
    hub: &'a Machine,
    /// The office hefei.
    hefei: &'a Machine,
    /// The USB sticks, one directory each (`sdb1`, ...).
    sticks: &'a Path,
    /// Every private key seen so far, by owner: `CA` for `ca.key`, else the node's name.
    keys: Keys,
    /// Who stands for the `officesync` user, if anyone.
    service: Option<&'a ServiceUser>,
    /// Every fenced block of the guide (for the outputs it shows).
    blocks: &'a [Block],
    /// hefei's `certificate` status before its renewal.
    cert_before: Option<serde_json::Value>,
    /// hefei's replica id before its restore.
    replica_before: Option<String>,
}

impl Checks<'_> {
    /// The body of the guide's `text` block that starts with `start`.
    fn shown(&self, start: &str) -> &str {
        self.blocks
            .iter()
            .find(|b| b.lang == "text" && b.body.starts_with(start))
            .map(|b| b.body.trim())
            .unwrap_or_else(|| panic!("the guide no longer shows output starting {start:?}"))
    }

    /// Runs `machine`'s `officesync` with `args` (as the guide's commands would).
    fn officesync(&self, machine: &Machine, args: &[&str]) -> Output {
        let mut cmd = Command::new(machine.root.join("usr/local/bin/officesync"));
        cmd.args(args)
            .env_remove("OFFICESYNC_API")
            .env_remove("OFFICESYNC_TOKEN")
            .env_remove("OFFICESYNC_CONFIG")
            .env("OFFICESYNC_TOKEN_FILE", machine.admin_token_path())
            .env("OFFICESYNC_NODE_CONFIG_PROBE", machine.node_config());
        if let Some(service) = self.service {
            cmd.env("OFFICESYNC_USER", &service.name);
        }
        run_bounded(cmd, None, BLOCK_TIMEOUT)
    }

    /// Sets up what a block's check needs: an office connected before it is revoked; hefei's
    /// certificate before its renewal. And a stick a block mounts on a node brings it no key
    /// but the node's own.
    fn before_block(&mut self, block: &str, machine: &Machine) {
        if let Some(node) = machine.node() {
            let plugged = block
                .split("mount /dev/")
                .skip(1)
                .filter_map(|rest| rest.split_whitespace().next())
                .map(|device| self.sticks.join(device));
            for stick in plugged {
                let theirs: Vec<_> = walk_files(&stick)
                    .into_iter()
                    .filter(|file| {
                        let bundle = file.file_name().is_some_and(|n| n == "node.key")
                            && !file.parent().is_some_and(|dir| dir.ends_with(node));
                        let key = std::fs::read(file).unwrap_or_default();
                        bundle || self.keys.owner_of(&key).is_some_and(|o| o != node)
                    })
                    .collect();
                assert!(
                    theirs.is_empty(),
                    "before\n{block}\non the {}, the stick {} brings it keys not its own: \
                     {theirs:?}",
                    machine.label,
                    stick.display()
                );
            }
        }
        if block.contains("policy revoke-node hefei") {
            wait_hub_link(
                self.hefei,
                true,
                "hefei is connected before the revocation",
                block,
            );
        }
        if is_renewal(block) {
            let status = hefei_api(self.hefei).status();
            self.cert_before = Some(status["certificate"].clone());
        }
        if block.contains("officesync restore") {
            let status = hefei_api(self.hefei).status();
            self.replica_before = status["replica"].as_str().map(str::to_owned);
        }
    }

    /// Checks what the guide says a block run on `machine` does, where the exit code alone
    /// cannot show it.
    fn after_block(&mut self, block: &str, machine: &Machine) {
        let (hub, hefei) = (self.hub, self.hefei);
        if block.contains("tar czf officesync-dist.tar.gz") {
            release_archive(machine, block);
        } else if block.contains("officesync ca init --dir") {
            self.second_ca_init(block);
        } else if block.contains("cat > /etc/officesync/officesync.toml")
            && machine.label == "office (hefei)"
        {
            self.config_check_catches_an_unreadable_key(block);
        } else if block.contains("/var/backups/officesync-before-upgrade") {
            backup_is_a_whole_file(
                machine,
                &machine
                    .root
                    .join("var/backups/officesync-before-upgrade.osbackup"),
                block,
            );
        } else if block.contains("officesync backup --output /var/backups/officesync/") {
            let dir = machine.root.join("var/backups/officesync");
            let files = walk_files(&dir);
            assert!(
                !files.is_empty(),
                "after\n{block}\nno backup in {}",
                dir.display()
            );
            for file in files {
                backup_is_a_whole_file(machine, &file, block);
            }
        } else if block.contains("officesync restore") {
            self.restored(block);
        } else if block.contains("officesync --config /etc/officesync/officesync.toml") {
            self.config_names_the_api(machine, block);
        } else if is_renewal(block) {
            self.renewed(block);
        } else if block.contains("officesync user add li") {
            self.staff_users(block);
        } else if block.contains("officesync verify") && machine.label == "general office" {
            self.silent_peer_and_its_reason(block);
        } else if block.contains("policy revoke-node hefei") {
            wait_hub_link(hefei, false, "the revoked hefei is shut out", block);
            // And stays out: its dialer retries and is refused at the handshake.
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(300));
                assert!(!connected_to_hub(hefei), "the revoked hefei got back in");
            }
            // What the troubleshooting table tells the reader to look for in the journal.
            let journal = std::fs::read_to_string(hub.root.join("run/systemd/officesyncd.log"))
                .expect("the general office's journal");
            let quoted = "refused a node revoked by _policy";
            assert!(
                journal.contains(quoted),
                "the general office never logged {quoted:?}:\n{journal}"
            );
            // And hefei's `officesync peers` says why the general office is down, as the
            // troubleshooting table tells the reader to look.
            let api = format!("127.0.0.1:{}", hefei.api_port);
            let mut last = String::new();
            let told = wait_until(Duration::from_secs(45), Duration::from_millis(300), || {
                let out = self.officesync(hefei, &["--api", &api, "peers"]);
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                last.contains("general-office: down: ") && last.contains("revoked")
            });
            assert!(told, "hefei's officesync peers never said why:\n{last}");
        } else if block.contains("policy unrevoke-node hefei") {
            wait_hub_link(
                hefei,
                true,
                "hefei reconnects once the revocation is lifted",
                block,
            );
        }
        if machine.label == self.ca.label && block.contains("cp -r /root/bundles/") {
            // Steps 6 and 15: the key handed over is gone from the CA machine, and the stick
            // carries one node's bundle.
            let bundles = self.ca.root.join("root/bundles");
            for stick in sticks(self.sticks) {
                let on_stick = named(&stick, "node.key");
                assert!(
                    on_stick.len() <= 1,
                    "after\n{block}\nthe stick carries more than one bundle: {on_stick:?}"
                );
                for key in on_stick {
                    let bundle = key.parent().and_then(Path::file_name).expect("bundle dir");
                    let left = bundles.join(bundle).join("node.key");
                    assert!(
                        !left.exists(),
                        "after\n{block}\nthe CA machine kept the key it handed over: {}",
                        left.display()
                    );
                }
            }
        }
        if machine.node().is_some() && block.contains("shred -u /mnt/usb/") {
            // Steps 6 and 15: once installed, the key is gone from the stick.
            for stick in sticks(self.sticks) {
                let left = named(&stick, "node.key");
                assert!(
                    left.is_empty(),
                    "after\n{block}\non the {}, keys left on the stick: {left:?}",
                    machine.label
                );
            }
        }
    }

    /// After every block: records the private keys now on the CA machine, the sticks and the
    /// nodes, then checks that each machine holds only its own (see [`keys_out_of_place`]).
    fn keys_in_place(&mut self, block: &str) {
        for file in walk_files(&self.ca.root)
            .into_iter()
            .chain(walk_files(self.sticks))
        {
            let owner = match file.file_name().and_then(|n| n.to_str()) {
                Some("ca.key") => "CA".to_owned(),
                Some("node.key") => bundle_owner(&file),
                _ => continue,
            };
            self.keys.note(&owner, &file);
        }
        for machine in self.machines {
            if let Some(node) = machine.node() {
                self.keys
                    .note(node, &machine.root.join("etc/officesync/node.key"));
            }
        }
        for machine in self.machines.iter().filter(|m| m.label != self.ca.label) {
            let wrong = keys_out_of_place(&machine.root, machine.node(), &self.keys);
            assert!(
                wrong.is_empty(),
                "after\n{block}\nthe {} holds keys that are not its own:\n{}",
                machine.label,
                wrong.join("\n")
            );
        }
    }

    /// After step 9: the general office hangs (SIGSTOP). hefei's `peers` first shows it
    /// `SILENT for N s` while the session still stands, then as down with the reason, as the
    /// troubleshooting table says; once it runs again, hefei reconnects by itself.
    fn silent_peer_and_its_reason(&self, block: &str) {
        let (hub, hefei) = (self.hub, self.hefei);
        wait_hub_link(hefei, true, "hefei is connected before the hang", block);
        let pid = std::fs::read_to_string(hub.root.join("run/systemd/officesyncd.pid"))
            .expect("the general office's pid file");
        let signal = |sig: &str| {
            let status = Command::new("kill")
                .args([sig, pid.trim()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {sig} {pid}");
        };
        let api = format!("127.0.0.1:{}", hefei.api_port);
        let peers_says = |wanted: &dyn Fn(&str) -> bool| {
            let mut last = String::new();
            let ok = wait_until(Duration::from_secs(45), Duration::from_millis(300), || {
                let out = self.officesync(hefei, &["--api", &api, "peers"]);
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                wanted(&last)
            });
            (ok, last)
        };
        signal("-STOP");
        let (silent, silent_out) = peers_says(&|out| {
            out.lines()
                .any(|l| l.starts_with("general-office") && l.contains("SILENT for "))
        });
        let (down, down_out) = peers_says(&|out| out.contains("general-office: down: "));
        signal("-CONT");
        assert!(
            silent,
            "hefei's peers never showed the hung general office as SILENT:\n{silent_out}"
        );
        assert!(
            down,
            "hefei's peers never said why the hung general office is down:\n{down_out}"
        );
        eprintln!("silent, then down:\n{silent_out}\n{down_out}");
        wait_hub_link(
            hefei,
            true,
            "hefei reconnects once the general office runs again",
            block,
        );
    }

    /// Step 16: li reads but may not write (exit 6, as the troubleshooting table quotes), a
    /// wrong token is refused with exit 5, and the audit log names wang's and admin's changes.
    fn staff_users(&self, block: &str) {
        let hub = self.hub;
        let li = hub.root.join("root/li.token");
        let li = li.to_str().expect("UTF-8");
        let api = format!("127.0.0.1:{}", hub.api_port);
        let put = self.officesync(
            hub,
            &[
                "--api",
                &api,
                "--token-file",
                li,
                "put",
                "situation",
                "li/try",
                "x",
            ],
        );
        put.expect_code(
            6,
            &format!(
                "after
{block}
li's put"
            ),
        );
        let said = put.stderr_text();
        assert!(
            said.starts_with(
                "error: forbidden: user li (reader) may not write collection \"situation\""
            ),
            "li's refused put said: {said}"
        );
        let wrong = self.officesync(
            hub,
            &["--api", &api, "--token", "ost_not-a-token", "status"],
        );
        wrong.expect_code(5, "a wrong token");
        assert!(
            wrong
                .stderr_text()
                .contains("refused the request: invalid token"),
            "{}",
            wrong.stderr_text()
        );
        let wang = std::fs::read_to_string(hub.root.join("root/wang.token")).expect("wang.token");
        let put = self.officesync(
            hub,
            &[
                "--api",
                &api,
                "--token",
                wang.trim(),
                "put",
                "situation",
                "wang/report",
                "ok",
            ],
        );
        put.expect_success("wang's put");
        let audit = self.officesync(hub, &["--api", &api, "audit", "--json"]);
        audit.expect_success("officesync audit");
        let text = audit.stdout_text();
        for wanted in [
            "\"actor\": \"wang@general-office\"",
            "\"kind\": \"user_add\"",
        ] {
            assert!(
                text.contains(wanted),
                "no {wanted} in the audit log:\n{text}"
            );
        }
    }

    /// Step 4: a second `ca init` refuses with the message the guide shows, and keeps the CA.
    fn second_ca_init(&self, block: &str) {
        let machine = self.ca;
        let ca = machine.root.join("root/officesync-ca");
        let pem = || std::fs::read(ca.join("ca.pem")).expect("ca.pem");
        let before = pem();
        let again = self.officesync(
            machine,
            &["ca", "init", "--dir", ca.to_str().expect("UTF-8")],
        );
        again.expect_code(2, "a second ca init");
        let said = machine.delocalize(&again.stderr_text());
        let shown = self.shown("error: a deployment CA already exists");
        assert_eq!(
            said.trim(),
            shown,
            "after\n{block}\nthe second ca init said otherwise"
        );
        assert_eq!(pem(), before, "the refused ca init changed the CA");
    }

    /// Step 9: `--config` finds the API from the node's config alone. The blocks run with
    /// `OFFICESYNC_API` set (see the module doc), which would win; without it, the CLI's
    /// default address is not the machine's API port, so only the config can lead it there.
    fn config_names_the_api(&self, machine: &Machine, block: &str) {
        let config = machine.root.join("etc/officesync/officesync.toml");
        let config = config.to_str().expect("UTF-8");
        let out = self.officesync(machine, &["--config", config, "status", "--json"]);
        out.expect_success(&format!("after\n{block}\nofficesync --config"));
        let status: serde_json::Value = serde_json::from_str(&out.stdout_text()).expect("JSON");
        let node = machine.node().expect("a node");
        assert_eq!(
            status["node"], node,
            "--config reached another node: {status}"
        );
        // And OFFICESYNC_CONFIG does the same.
        // With no token given, the config's data dir holds the admin token the CLI uses.
        let mut cmd = Command::new(machine.root.join("usr/local/bin/officesync"));
        cmd.arg("peers")
            .env_remove("OFFICESYNC_API")
            .env_remove("OFFICESYNC_TOKEN")
            .env_remove("OFFICESYNC_TOKEN_FILE")
            .env("OFFICESYNC_CONFIG", config);
        run_bounded(cmd, None, BLOCK_TIMEOUT).expect_success("officesync with OFFICESYNC_CONFIG");
    }

    /// Step 7 at hefei: the key as `ca issue` wrote it (root's, 0600) fails the check, and the
    /// daemon, naming the user and the fix.
    fn config_check_catches_an_unreadable_key(&self, block: &str) {
        let hefei = self.hefei;
        let config = hefei.root.join("etc/officesync/officesync.toml");
        let config = config.to_str().expect("UTF-8");
        let Some(service) = self.service.filter(|s| s.real) else {
            eprintln!("permission check skipped: ownership is real only when run as root");
            return;
        };
        let key = hefei.root.join("etc/officesync/node.key");
        let meta = std::fs::metadata(&key).expect("node.key");
        std::os::unix::fs::chown(&key, Some(0), Some(0)).expect("chown");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let check = self.officesync(hefei, &["config", "check", config]);
        let mut daemon = Command::new("setpriv");
        daemon
            .arg(format!("--reuid={}", service.uid))
            .arg(format!("--regid={}", service.gid))
            .arg("--clear-groups")
            .arg(hefei.root.join("usr/local/bin/officesyncd"))
            .args(["--check", "--config", config]);
        let daemon = run_bounded(daemon, None, BLOCK_TIMEOUT);
        std::os::unix::fs::chown(&key, Some(meta.uid()), Some(meta.gid())).expect("chown back");
        std::fs::set_permissions(&key, meta.permissions()).expect("chmod back");

        // A data dir root made (0755): the daemon's failed start names the user and the fix.
        let data = hefei.root.join("var/lib/officesync");
        std::fs::create_dir(&data).expect("a root-owned data dir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut start = Command::new("setpriv");
        start
            .arg(format!("--reuid={}", service.uid))
            .arg(format!("--regid={}", service.gid))
            .arg("--clear-groups")
            .arg(hefei.root.join("usr/local/bin/officesyncd"))
            .args(["--config", config]);
        let start = run_bounded(start, None, BLOCK_TIMEOUT);
        std::fs::remove_dir_all(&data).expect("remove the data dir");
        start.expect_code(1, "officesyncd over a data dir root owns");
        let said = service.as_in_guide(&hefei.delocalize(&start.stderr_text()));
        let expected = "node.data_dir: permission denied: user officesync (uid 999) cannot write \
                        to /var/lib/officesync: it is root:root, mode 0755 (fix: chown \
                        officesync:officesync /var/lib/officesync && chmod 0700 \
                        /var/lib/officesync)";
        assert!(
            said.lines().count() == 1 && said.contains(expected),
            "officesyncd over a data dir root owns said: {said}"
        );

        eprintln!("permission check: config check and officesyncd refuse a key only root reads");
        check.expect_code(2, "config check of a key only root can read");
        daemon.expect_code(2, "officesyncd with a key only root can read");
        let expected = "tls.key: permission denied: user officesync (uid 999) cannot read \
                        /etc/officesync/node.key: it is root:root, mode 0600 (fix: chown \
                        root:officesync /etc/officesync/node.key && chmod 0640 \
                        /etc/officesync/node.key)";
        for (who, said) in [
            ("config check", check.stderr_text()),
            ("officesyncd", daemon.stderr_text()),
        ] {
            let said = service.as_in_guide(&hefei.delocalize(&said));
            assert!(
                said.lines().count() == 1 && said.contains(expected),
                "after\n{block}\n{who} with a 0600 root key said: {said}"
            );
        }
    }

    /// Step 15 at hefei: a new certificate, and the link to the general office back.
    fn restored(&self, block: &str) {
        let hefei = self.hefei;
        let before = self
            .replica_before
            .clone()
            .expect("hefei's replica before the restore");
        let status = hefei_api(hefei).status();
        let now = status["replica"].as_str().expect("replica").to_owned();
        assert_ne!(
            now, before,
            "after\n{block}\nhefei is not a new incarnation"
        );
        assert!(
            hefei_api(hefei)
                .get("situation", "install-test/hefei")
                .is_some(),
            "the restored hefei lacks its own record"
        );
        // What the copy lacked comes back from the general office: equal digests.
        let digest = |api: ApiClient| api.status()["collections"]["situation"]["digest"].clone();
        let converged = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
            digest(hefei_api(hefei)) == digest(self.hub.api())
        });
        assert!(
            converged,
            "after\n{block}\nthe restored hefei did not converge with the general office"
        );
    }

    fn renewed(&self, block: &str) {
        let status = hefei_api(self.hefei).status();
        let before = self
            .cert_before
            .as_ref()
            .expect("hefei's certificate before renewal");
        let after = &status["certificate"];
        assert_ne!(
            after["serial"], before["serial"],
            "hefei's certificate was not renewed"
        );
        assert!(
            after["expires_in_secs"].as_i64() > Some(824 * 86_400),
            "{after}"
        );
        wait_hub_link(
            self.hefei,
            true,
            "hefei reconnects with its new certificate",
            block,
        );
        let metrics = hefei_api(self.hefei).call("GET", "/metrics", None).text();
        let serial = after["serial"].as_str().expect("serial");
        assert!(
            metrics.contains(&format!(
                "officesync_certificate_expiry_timestamp_seconds{{serial=\"{serial}\""
            )),
            "{metrics}"
        );
    }
}

/// Whether `block` is the office's half of a certificate renewal (step 15).
fn is_renewal(block: &str) -> bool {
    block.contains("/etc/officesync/node.key") && block.contains("systemctl restart officesyncd")
}

/// Private keys by owner (`CA` for `ca.key`, else the node's name), each kept once.
#[derive(Debug, Default)]
struct Keys(BTreeMap<String, Vec<Vec<u8>>>);

impl Keys {
    /// Records the key in `file`, if there is one, as `owner`'s, unless it is known already:
    /// a key's first owner stays its owner, wherever it is copied later.
    fn note(&mut self, owner: &str, file: &Path) {
        let Ok(key) = std::fs::read(file) else {
            return;
        };
        if self.owner_of(&key).is_none() {
            self.0.entry(owner.to_owned()).or_default().push(key);
        }
    }

    /// The owner of the key `bytes`, if it is one of them.
    fn owner_of(&self, bytes: &[u8]) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, keys)| keys.iter().any(|k| k == bytes))
            .map(|(owner, _)| owner.as_str())
    }

    /// Whether some key is `len` bytes long.
    fn any_of_len(&self, len: u64) -> bool {
        self.0.values().flatten().any(|k| k.len() as u64 == len)
    }
}

/// The node a bundle's `node.key` belongs to: its directory's name (`.../hefei/node.key`).
fn bundle_owner(key: &Path) -> String {
    key.parent()
        .and_then(Path::file_name)
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// What under the machine directory `root` is not its own key: any `ca.key`, any `node.key`
/// but its own node's `/etc/officesync/node.key` (`own` is its node's name; `None`: no node),
/// and any file, whatever its name, equal to a key of `keys` whose owner is not `own`. One
/// line each; empty when the machine holds only its own key.
fn keys_out_of_place(root: &Path, own: Option<&str>, keys: &Keys) -> Vec<String> {
    let mut wrong = Vec::new();
    for file in walk_files(root) {
        let shown = format!("/{}", file.strip_prefix(root).unwrap_or(&file).display());
        match file.file_name().and_then(|n| n.to_str()) {
            Some("ca.key") => {
                wrong.push(format!("{shown}: a CA key"));
                continue;
            }
            Some("node.key") if own.is_none() || shown != "/etc/officesync/node.key" => {
                wrong.push(format!("{shown}: a node key outside /etc/officesync"));
                continue;
            }
            _ => {}
        }
        let len = std::fs::metadata(&file).map_or(0, |m| m.len());
        if !keys.any_of_len(len) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        match keys.owner_of(&bytes) {
            Some(owner) if Some(owner) != own => {
                wrong.push(format!("{shown}: the key of {owner}"));
            }
            _ => {}
        }
    }
    wrong
}

/// The USB sticks under `dir`: one directory each.
fn sticks(dir: &Path) -> Vec<PathBuf> {
    let mut sticks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sticks.sort();
    sticks
}

/// The files under `dir` called `name`.
fn named(dir: &Path, name: &str) -> Vec<PathBuf> {
    walk_files(dir)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == name))
        .collect()
}

/// The API client of hefei's node.
fn hefei_api(hefei: &Machine) -> ApiClient {
    hefei.api()
}

/// Steps 12 and 13: `file` is a whole backup of `machine`'s node (checksum, header), mode
/// 0600, its values sealed exactly when the node encrypts its store.
fn backup_is_a_whole_file(machine: &Machine, file: &Path, block: &str) {
    let checked = officesync_daemon::backup::frame::check_file(file).unwrap_or_else(|e| {
        panic!(
            "on the {}, after\n{block}\n{} is not a whole backup: {e}",
            machine.label,
            file.display()
        )
    });
    assert_eq!(
        Some(checked.header.node.as_str()),
        machine.node(),
        "{}",
        file.display()
    );
    assert!(checked.rows > 0, "{}: an empty backup", file.display());
    let mode = std::fs::metadata(file)
        .expect("backup")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
    let config = std::fs::read_to_string(machine.node_config()).expect("node config");
    assert_eq!(
        checked.header.sealed,
        config.contains("encryption_key_file"),
        "{}: sealed values exactly when the store is encrypted",
        file.display()
    );
}

/// Step 1: the archive's binaries carry no debug information, and its docs come along.
fn release_archive(build: &Machine, block: &str) {
    let dist = build.root.join("src/officesync-dist");
    for doc in ["README.md", "INSTALL.md"] {
        assert!(
            dist.join(doc).is_file(),
            "after\n{block}\nthe archive lacks {doc}"
        );
    }
    for bin in ["officesyncd", "officesync"] {
        let bytes = std::fs::read(dist.join(bin)).expect("a binary of the archive");
        let sections = elf_section_names(&bytes);
        assert!(!sections.is_empty(), "{bin}: no ELF sections found");
        assert!(
            !sections.iter().any(|s| s == ".debug_info"),
            "after\n{block}\nthe archive's {bin} still carries debug information"
        );
    }
}

/// The section names of a 64-bit little-endian ELF file (empty if it is not one).
fn elf_section_names(elf: &[u8]) -> Vec<String> {
    let num = |at: usize, len: usize| -> Option<usize> {
        let bytes = elf.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0usize, |n, b| n << 8 | usize::from(*b)),
        )
    };
    let parse = || -> Option<Vec<String>> {
        (elf.get(..6)? == b"\x7fELF\x02\x01").then_some(())?;
        let (shoff, shentsize, shnum, shstrndx) =
            (num(0x28, 8)?, num(0x3a, 2)?, num(0x3c, 2)?, num(0x3e, 2)?);
        let header = |i: usize| shoff + i * shentsize;
        let strtab = num(header(shstrndx) + 0x18, 8)?;
        (0..shnum)
            .map(|i| {
                let start = strtab + num(header(i), 4)?;
                let len = elf.get(start..)?.iter().position(|b| *b == 0)?;
                Some(String::from_utf8_lossy(&elf[start..start + len]).into_owned())
            })
            .collect()
    };
    parse().unwrap_or_default()
}

/// Every file under `dir` (none if it does not exist).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Everything the guide's machines run, stopped at the end (also when the test fails).
struct Deployment {
    machines: Vec<Machine>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for machine in &self.machines {
            machine.kill_leftovers();
        }
    }
}

#[test]
fn install_guide_runs_as_written() {
    let started = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned();
    let guide = std::fs::read_to_string(repo.join("deploy/INSTALL.md")).expect("read guide");
    let blocks = fenced_blocks(&guide);

    let tmp = tempfile::Builder::new()
        .prefix("officesync-install-")
        .tempdir()
        .expect("temp dir");
    // The service user must reach the machines' files, as it reaches / on a real machine.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let service = ServiceUser::for_this_host();
    eprintln!("the officesync user is played by {service:?}");
    let standins = tmp.path().join("standins");
    std::fs::create_dir_all(&standins).expect("standins dir");
    for (name, script) in STANDINS {
        let path = standins.join(name);
        std::fs::write(&path, script).expect("write stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let deployment = Deployment {
        machines: vec![
            Machine::new(tmp.path(), "build", "build machine"),
            Machine::new(tmp.path(), "ca", "CA machine (offline)"),
            Machine::new(tmp.path(), "gov", "general office"),
            Machine::new(tmp.path(), "hefei", "office (hefei)"),
        ],
    };
    let machine = |label: &str| -> &Machine {
        deployment
            .machines
            .iter()
            .find(|m| m.label == label)
            .expect("known machine")
    };
    let hub_sync = machine("general office").sync_port;
    let stick_dir = tmp.path().join("sticks");
    std::fs::create_dir_all(&stick_dir).expect("sticks dir");

    // The build machine holds the source tree: the parts the guide uses.
    let src = machine("build machine").root.join("src");
    std::fs::create_dir_all(&src).expect("src dir");
    std::fs::copy(repo.join("Cargo.toml"), src.join("Cargo.toml")).expect("copy Cargo.toml");
    std::fs::copy(repo.join("README.md"), src.join("README.md")).expect("copy README.md");
    officesync_tests::copy_dir(&repo.join("deploy"), &src.join("deploy"));
    let bin_dir = bins::officesyncd_path()
        .parent()
        .expect("bin dir")
        .to_owned();
    assert!(bin_dir.join(bins::CLI).is_file(), "officesync is not built");

    let mut checks = Checks {
        machines: &deployment.machines,
        ca: machine("CA machine (offline)"),
        hub: machine("general office"),
        hefei: machine("office (hefei)"),
        sticks: &stick_dir,
        keys: Keys::default(),
        service: service.as_ref(),
        blocks: &blocks,
        cert_before: None,
        replica_before: None,
    };
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
    let mut outputs: Vec<(&'static str, String, String)> = Vec::new();
    for block in blocks.iter().filter(|b| b.lang == "sh") {
        let (targets, retry) = block_target(block);
        for label in targets {
            let m = machine(label);
            let script = m.localize(&block.body, hub_sync);
            let cwd = if label == "build machine" {
                src.clone()
            } else {
                m.root.join("root")
            };
            let run = || -> Output {
                let mut bash = Command::new("bash");
                bash.args(["-euo", "pipefail", "-c", &script])
                    .current_dir(&cwd)
                    .env_clear()
                    .env(
                        "PATH",
                        format!(
                            "{}:{}/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            standins.display(),
                            m.root_str()
                        ),
                    )
                    .env("HOME", m.root.join("root"))
                    .env("LANG", "C.UTF-8")
                    .env("TMPDIR", tmp.path())
                    .env("MACHINE_ROOT", &m.root)
                    .env("STICKS", &stick_dir)
                    .env("OFFICESYNC_NODE_CONFIG_PROBE", m.node_config())
                    .env("GOV_ROOT", &machine("general office").root)
                    .env("HEFEI_ROOT", &machine("office (hefei)").root)
                    .env("OFFICESYNC_TEST_BIN_DIR", &bin_dir)
                    .env("OFFICESYNC_API", format!("127.0.0.1:{}", m.api_port))
                    .env("OFFICESYNC_TOKEN_FILE", m.admin_token_path())
                    .env(
                        "SERVICE_UID",
                        service.as_ref().map_or(999, |s| s.uid).to_string(),
                    )
                    .env(
                        "SERVICE_GID",
                        service.as_ref().map_or(999, |s| s.gid).to_string(),
                    )
                    .env(
                        "REAL_OWNERS",
                        if service.as_ref().is_some_and(|s| s.real) {
                            "1"
                        } else {
                            "0"
                        },
                    );
                if let Some(service) = &service {
                    bash.env("OFFICESYNC_USER", &service.name);
                }
                run_bounded(bash, None, BLOCK_TIMEOUT)
            };
            checks.before_block(&block.body, m);
            let block_started = Instant::now();
            // The upgrade step runs twice, as two upgrades would.
            let times = if block
                .body
                .contains("/var/backups/officesync-before-upgrade")
            {
                2
            } else {
                1
            };
            let mut out = None;
            for _ in 0..times {
                let deadline = Instant::now() + if retry { MOMENT } else { Duration::ZERO };
                let this = loop {
                    let this = run();
                    if this.status.success() || Instant::now() >= deadline {
                        break this;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                };
                assert!(
                    this.status.success(),
                    "INSTALL.md line {} failed on the {label}:\n{}\n--- script as run ---\n{script}",
                    block.line,
                    this.describe()
                );
                out = Some(this);
            }
            let out = out.expect("the block ran");
            eprintln!(
                "INSTALL.md line {} on the {label}: {:?}",
                block.line,
                block_started.elapsed()
            );
            if block.body.contains("officesync ca init --dir") {
                let said = out.stderr_text();
                assert!(
                    !said.contains("looks like an officesync node"),
                    "the guide's ca init on the {label} warned that it is a node:\n{said}"
                );
            }
            checks.after_block(&block.body, m);
            checks.keys_in_place(&block.body);
            *ran.entry(label).or_default() += 1;
            outputs.push((label, block.body.clone(), m.delocalize(&out.stdout_text())));
        }
    }

    // The guide still walks the whole way: CA, bundle, copy, install, start, confirm.
    let all_sh: String = blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .map(|b| b.body.as_str())
        .collect();
    for step in [
        "officesync ca init --dir",
        "officesync ca issue hefei",
        "cp -r /root/bundles/hefei /mnt/usb/",
        "shred -u /root/bundles/hefei/node.key",
        "shred -u /mnt/usb/hefei/node.key",
        "/usr/local/bin/",
        "/etc/systemd/system/officesyncd.service",
        "useradd --system",
        "officesync config check /etc/officesync/officesync.toml",
        "systemctl enable --now officesyncd",
        "officesync status",
        "officesync get situation install-test/hefei",
    ] {
        assert!(all_sh.contains(step), "the guide lost the step {step:?}");
    }
    assert!(
        guide.contains("`refused a node revoked by _policy`"),
        "the troubleshooting table no longer quotes the revocation log line checked above"
    );
    for label in [
        "build machine",
        "CA machine (offline)",
        "general office",
        "office (hefei)",
    ] {
        assert!(
            ran.get(label).copied().unwrap_or(0) > 0,
            "nothing ran on the {label}"
        );
    }

    // Where the keys are once the guide is done. The general office holds neither the CA key
    // nor another office's key (also checked after every block)...
    let hub = machine("general office");
    assert!(
        checks.keys.0.get("hefei").is_some_and(|k| k.len() >= 2),
        "hefei's first key and its renewed one were never seen: {:?}",
        checks.keys.0.keys()
    );
    let wrong = keys_out_of_place(&hub.root, hub.node(), &checks.keys);
    assert!(
        wrong.is_empty(),
        "after following the guide, the general office holds keys that are not its own:\n{}",
        wrong.join("\n")
    );
    // ... the CA key is on the CA machine and two backup sticks, no node's key is left on a
    // stick or on the CA machine...
    let ca_key = std::fs::read(
        machine("CA machine (offline)")
            .root
            .join("root/officesync-ca/ca.key"),
    )
    .expect("the CA machine keeps ca.key");
    let mut backups = Vec::new();
    for stick in sticks(&stick_dir) {
        let left = named(&stick, "node.key");
        assert!(left.is_empty(), "node keys left on a stick: {left:?}");
        for copy in named(&stick, "ca.key") {
            let copy = std::fs::read(copy).expect("a backup of ca.key");
            assert!(copy == ca_key, "{} holds another CA key", stick.display());
            backups.push(stick.clone());
        }
    }
    assert_eq!(
        backups.len(),
        2,
        "the CA key is not on two backup sticks: {backups:?}"
    );
    let left = named(
        &machine("CA machine (offline)").root.join("root/bundles"),
        "node.key",
    );
    assert!(
        left.is_empty(),
        "node keys left on the CA machine: {left:?}"
    );
    // ... and `ca init` would have warned on the general office, a node.
    let probe_ca = tmp.path().join("ca-on-the-hub");
    let on_hub = checks.officesync(
        hub,
        &["ca", "init", "--dir", probe_ca.to_str().expect("UTF-8")],
    );
    on_hub.expect_success("ca init on the general office");
    assert!(
        on_hub
            .stderr_text()
            .contains("looks like an officesync node"),
        "ca init on the general office did not warn: {}",
        on_hub.stderr_text()
    );

    // The configs the guide writes are the example configs, comments aside.
    for (label, example) in [
        ("general office", "general-office.toml"),
        ("office (hefei)", "hefei.toml"),
    ] {
        let written = outputs
            .iter()
            .find_map(|(l, body, _)| {
                (*l == label)
                    .then(|| heredoc(body, "/etc/officesync/officesync.toml"))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("the guide writes no config on the {label}"));
        let file = std::fs::read_to_string(repo.join("deploy/examples").join(example))
            .expect("read example");
        assert_eq!(
            settings(written),
            settings(&file),
            "the {label}'s config in INSTALL.md differs from deploy/examples/{example}"
        );
    }

    // What the guide says `config check` prints is what it printed at hefei.
    let promised = blocks
        .iter()
        .find(|b| b.lang == "text" && b.body.starts_with("ok: node hefei"))
        .expect("the guide shows config check's output");
    let printed = outputs
        .iter()
        .find(|(l, body, _)| *l == "office (hefei)" && body.contains("config check"))
        .map(|(_, _, out)| out.as_str())
        .expect("config check ran at hefei");
    // Its second line names the user checked: the guide's officesync is the host's stand-in.
    let (promised, printed) = match &service {
        Some(service) => (promised.body.trim(), service.as_in_guide(printed)),
        None => (
            promised.body.lines().next().unwrap_or_default(),
            printed.to_owned(),
        ),
    };
    assert!(
        printed.contains(promised),
        "config check printed {printed:?}, the guide shows {promised:?}"
    );
    // `verify` at the general office prints the table the guide shows.
    let shown = blocks
        .iter()
        .find(|b| b.lang == "text" && b.body.starts_with("PEER   COLLECTION  OUTCOME"))
        .expect("the guide shows verify's table");
    let verified = outputs
        .iter()
        .find(|(l, body, _)| *l == "general office" && body.contains("officesync verify"))
        .map(|(_, _, out)| out.as_str())
        .expect("verify ran at the general office");
    for line in shown.body.lines().take(2) {
        assert!(
            verified.lines().any(|l| l == line),
            "the guide shows {line:?}; verify printed:\n{verified}"
        );
    }
    assert!(
        verified
            .lines()
            .any(|l| l.contains(" with 1 peer: ") && l.ends_with(" equal")),
        "verify's summary line:\n{verified}"
    );
    // The JSON log drop-in took effect.
    let json_log = outputs
        .iter()
        .find(|(_, body, _)| body.contains("json-logs.conf"))
        .map(|(_, _, out)| out.lines().last().unwrap_or_default().to_owned())
        .expect("the guide switches to JSON logs");
    assert!(
        serde_json::from_str::<serde_json::Value>(&json_log).is_ok(),
        "not a JSON log line: {json_log:?}"
    );

    // Both services still run; they stop cleanly (the stand-in fails on a non-zero exit).
    for label in ["office (hefei)", "general office"] {
        let m = machine(label);
        let mut stop = Command::new(standins.join("systemctl"));
        stop.args(["stop", "officesyncd"])
            .env("MACHINE_ROOT", &m.root);
        run_bounded(stop, None, BLOCK_TIMEOUT).expect_success(&format!("stop on the {label}"));
        let log = std::fs::read_to_string(m.root.join("run/systemd/officesyncd.log"))
            .expect("service log");
        let last = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            last.contains("node stopped; store flushed"),
            "the {label}'s service did not end with a clean stop:\n{log}"
        );
    }
    eprintln!(
        "install guide: {} command blocks ran ({ran:?}) in {:?}",
        ran.values().sum::<usize>(),
        started.elapsed()
    );
}

#[test]
fn paths_are_rooted_only_where_they_start() {
    let rooted = root_paths(
        "install -m 0640 a /etc/officesync/node.key\ncd /root && x=\"/var/lib/officesync\"\n\
         mv /var/lib/officesync /var/lib/officesync.damaged-1 /rootfs /usr/local/binx a/root",
        "/M",
    );
    assert_eq!(
        rooted,
        "install -m 0640 a /M/etc/officesync/node.key\ncd /M/root && x=\"/M/var/lib/officesync\"\n\
         mv /M/var/lib/officesync /M/var/lib/officesync.damaged-1 /rootfs /usr/local/binx a/root"
    );
}

/// The check that the general office holds only its own key fails where the guide would put
/// the CA key or another office's key on it, under any name; it passes the node's own key.
#[test]
fn keys_out_of_place_finds_the_ca_key_and_other_offices_keys() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let put = |rel: &str, bytes: &[u8]| {
        let path = tmp.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let mut keys = Keys::default();
    keys.note("CA", &put("ca/root/officesync-ca/ca.key", b"the CA key"));
    keys.note(
        "hefei",
        &put("ca/root/bundles/hefei/node.key", b"hefei's key"),
    );
    let own = put("hub/etc/officesync/node.key", b"the hub's key");
    keys.note("general-office", &own);
    keys.note("hefei", &own); // already the hub's: a key keeps its first owner
    let hub = tmp.path().join("hub");
    put("hub/var/lib/officesync/db", b"records");
    assert_eq!(
        keys_out_of_place(&hub, Some("general-office"), &keys),
        Vec::<String>::new()
    );

    put("hub/root/officesync-ca/ca.key", b"a CA key");
    put("hub/root/bundles/hefei/node.key", b"hefei's key");
    put("hub/root/hefei-backup.pem", b"hefei's key");
    put("hub/var/backups/ca.pem", b"the CA key");
    let mut found = keys_out_of_place(&hub, Some("general-office"), &keys);
    found.sort();
    assert_eq!(
        found,
        [
            "/root/bundles/hefei/node.key: a node key outside /etc/officesync",
            "/root/hefei-backup.pem: the key of hefei",
            "/root/officesync-ca/ca.key: a CA key",
            "/var/backups/ca.pem: the key of CA",
        ]
    );
    // Another office's key installed as the hub's own is caught too; and a machine that is no
    // node may hold no node key at all.
    std::fs::write(&own, b"hefei's key").expect("write");
    assert!(keys_out_of_place(&hub, Some("general-office"), &keys)
        .contains(&"/etc/officesync/node.key: the key of hefei".to_owned()));
    std::fs::write(&own, b"the hub's key").expect("write");
    assert!(keys_out_of_place(&hub, None, &keys)
        .contains(&"/etc/officesync/node.key: a node key outside /etc/officesync".to_owned()));
}

/// Whether `text` holds the parts of `pattern` (split at `...`) in order.
fn matches_elided(text: &str, pattern: &str) -> bool {
    let mut rest = text;
    for part in pattern.split("...") {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[test]
fn troubleshooting_quotes_what_the_tools_print() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned();
    let guide = std::fs::read_to_string(repo.join("deploy/INSTALL.md")).expect("read guide");
    let troubleshooting = &guide[guide
        .find("## Troubleshooting")
        .expect("the guide has a Troubleshooting section")..];
    let example = std::fs::read_to_string(repo.join("deploy/examples/hefei.toml"))
        .expect("read the hefei example");

    let tmp = tempfile::tempdir().expect("temp dir");
    // Readable by the unprivileged user of the permission case below.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = |name: &str| tmp.path().join(name);
    let cli = |args: &[&str]| -> Output {
        let out = officesync_tests::officesync(args);
        assert!(out.code().is_some(), "{}", out.describe());
        out
    };
    let s = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
    cli(&["ca", "init", "--dir", &s(&dir("ca"))]).expect_success("ca init");
    cli(&["ca", "init", "--dir", &s(&dir("other-ca"))]).expect_success("ca init");
    for (name, ca, out) in [
        ("hefei", "ca", "hefei"),
        ("wuhu", "ca", "wuhu"),
        ("hefei", "other-ca", "hefei-other-ca"),
    ] {
        cli(&[
            "ca",
            "issue",
            name,
            "--ca-dir",
            &s(&dir(ca)),
            "--out",
            &s(&dir(out)),
        ])
        .expect_success("ca issue");
    }
    for bundle in ["hefei", "wuhu", "hefei-other-ca"] {
        std::fs::set_permissions(dir(bundle), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    // hefei's example config with its [tls] files taken from the named bundles.
    let config = |file: &str, ca: &str, cert: &str, key: &str, extra: &str| -> String {
        let text = example
            .replace("/etc/officesync/ca.pem", &s(&dir(ca).join("ca.pem")))
            .replace("/etc/officesync/node.pem", &s(&dir(cert).join("node.pem")))
            .replace("/etc/officesync/node.key", &s(&dir(key).join("node.key")))
            .replace("/var/lib/officesync", &s(&dir("data")));
        let path = dir(file);
        std::fs::write(&path, format!("{text}{extra}")).expect("write config");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        s(&path)
    };
    let check = |path: String| -> Output {
        let out = cli(&["config", "check", &path]);
        out.expect_code(2, "config check of a broken config");
        out
    };

    let mut cases: Vec<(&str, String)> = vec![
        (
            r#"tls.cert names "wuhu" but node.name is "hefei""#,
            check(config("a.toml", "wuhu", "wuhu", "wuhu", "")).stderr_text(),
        ),
        (
            "tls.cert ... does not chain to tls.ca",
            check(config(
                "b.toml",
                "hefei",
                "hefei-other-ca",
                "hefei-other-ca",
                "",
            ))
            .stderr_text(),
        ),
        (
            "tls.key ... is not the key of tls.cert",
            check(config("c.toml", "hefei", "hefei", "wuhu", "")).stderr_text(),
        ),
        (
            "unknown field `colour` in [cluster]",
            check(config("d.toml", "hefei", "hefei", "hefei", "colour = 1\n")).stderr_text(),
        ),
    ];

    // The key as ca issue writes it (0600, root's) read by a user outside its group: as root,
    // run the check as nobody; otherwise take the owner's read permission away.
    let readable_config = config("e.toml", "hefei", "hefei", "hefei", "");
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let denied = if root {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bins::officesync_path())
            .args(["config", "check", &readable_config]);
        run_bounded(cmd, None, Duration::from_secs(30))
    } else {
        let key = dir("hefei").join("node.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        cli(&["config", "check", &readable_config])
    };
    denied.expect_code(2, "config check with an unreadable key");
    cases.push((
        "tls.key: permission denied: user ... cannot read ...",
        denied.stderr_text(),
    ));

    // ca init on a host with a node config: it warns, and makes the CA all the same.
    let node_config = dir("officesync.toml");
    std::fs::write(&node_config, "").expect("a node config");
    let mut on_a_node =
        officesync_tests::process::officesync_command(["ca", "init", "--dir", &s(&dir("hub-ca"))]);
    on_a_node.env("OFFICESYNC_NODE_CONFIG_PROBE", &node_config);
    let on_a_node = run_bounded(on_a_node, None, Duration::from_secs(30));
    on_a_node.expect_success("ca init on a node");
    cases.push((
        "warning: ... exists, so this host looks like an officesync node: the CA key ... belongs \
         on an offline machine that is never a node ...",
        on_a_node.stderr_text(),
    ));

    let port = free_tcp_port();
    let unreachable = cli(&["--api", &format!("127.0.0.1:{port}"), "status"]);
    unreachable.expect_code(3, "status without a daemon");
    cases.push((
        "cannot reach officesyncd at 127.0.0.1:7480",
        unreachable
            .stderr_text()
            .replace(&format!("127.0.0.1:{port}"), "127.0.0.1:7480"),
    ));

    // Another program on the API port: a web server answering every request with a page.
    let web = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = web.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in web.incoming().flatten() {
            let mut stream = stream;
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut head);
            let page = "<html><body>Welcome to nginx!</body></html>";
            let answer = format!(
                "HTTP/1.1 200 OK\r\nserver: nginx/1.24.0\r\ncontent-type: text/html\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
        }
    });
    let foreign = cli(&["--api", &format!("127.0.0.1:{port}"), "status"]);
    foreign.expect_code(3, "status against another program");
    cases.push((
        "127.0.0.1:7480 answered, but it is not officesyncd (...); check --api / api.listen",
        foreign
            .stderr_text()
            .replace(&format!("127.0.0.1:{port}"), "127.0.0.1:7480"),
    ));

    for (quoted, printed) in cases {
        assert!(
            troubleshooting.contains(quoted),
            "the troubleshooting table no longer quotes {quoted:?}"
        );
        assert!(
            printed.lines().count() == 1 && matches_elided(&printed, quoted),
            "the guide quotes {quoted:?}, the tool printed {printed:?}"
        );
    }
}
