#!/usr/bin/env bash
# Builds the Debian package officesync_VERSION_amd64.deb out of already-built binaries, with
# dpkg-deb from a staged tree (no debhelper), and prints its path as its last line.
#
#   deploy/package.sh [--bin-dir DIR] [--out DIR] [--version VERSION]
#
#   --bin-dir DIR      where officesyncd and officesync are (default: target/release; the
#                      tests pass target/debug)
#   --out DIR          where to write the .deb (default: target/debian)
#   --version VERSION  the package version (default: the workspace version in Cargo.toml)
#   --compression ALGO dpkg-deb's compressor: xz (default), gzip (faster, for tests) or zstd
#
# The maintainer named in the package is DEBFULLNAME <DEBEMAIL> when both are set.
#
# The package holds /usr/bin/officesyncd and /usr/bin/officesync (stripped), the hardened
# unit (/lib/systemd/system/officesyncd.service), the officesync system user (sysusers.d,
# made by postinst), /etc/officesync/officesync.toml (the example config, a conffile), the
# data dir /var/lib/officesync (mode 0700, owned by officesync), manual pages (officesync's
# from `officesync man`, officesyncd(8) from deploy/officesyncd.8) and bash, zsh and fish
# completions. Installing it does not start the daemon: the node needs its bundle and config
# first (deploy/INSTALL.md); an upgrade restarts a running daemon.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin_dir="$repo/target/release"
out="$repo/target/debian"
version=
compression=xz

usage() { sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "package.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bin_dir=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --version) [ $# -ge 2 ] || die "--version needs a version"; version=$2; shift 2 ;;
    --compression) [ $# -ge 2 ] || die "--compression needs xz, gzip or zstd"; compression=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

for bin in officesyncd officesync; do
  [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin is missing: run \`cargo build --release --bins\` or pass --bin-dir"
done
for tool in dpkg-deb strip gzip; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev binutils gzip)"
done
if [ -z "$version" ]; then
  version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")"
  [ -n "$version" ] || die "no version in $repo/Cargo.toml [workspace.package]"
fi
arch=amd64
maintainer="${DEBFULLNAME:-officesync maintainers} <${DEBEMAIL:-maintainers@officesync.example.org}>"
[ "$(uname -m)" = x86_64 ] || die "only amd64 (x86_64) packages are built here"

stage="$(mktemp -d "${TMPDIR:-/tmp}/officesync-deb.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
umask 022

# Binaries, stripped (the unstripped ones stay in --bin-dir for crash analysis).
install -d "$root/usr/bin"
for bin in officesyncd officesync; do
  install -m 0755 "$bin_dir/$bin" "$root/usr/bin/$bin"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/$bin"
done

# The unit, pointing at the packaged binary.
install -d "$root/lib/systemd/system"
sed 's|/usr/local/bin/officesyncd|/usr/bin/officesyncd|' "$here/officesyncd.service" \
  > "$root/lib/systemd/system/officesyncd.service"
chmod 0644 "$root/lib/systemd/system/officesyncd.service"
grep -q '^ExecStart=/usr/bin/officesyncd ' "$root/lib/systemd/system/officesyncd.service" \
  || die "the unit's ExecStart is not /usr/local/bin/officesyncd any more: update package.sh"

# The system user, for systemd-sysusers (postinst runs it, or useradd without systemd).
install -d "$root/usr/lib/sysusers.d"
cat > "$root/usr/lib/sysusers.d/officesync.conf" <<'EOF'
# The officesync node daemon's own unprivileged user (officesyncd.service: User=officesync).
u officesync - "officesync node daemon" /var/lib/officesync /usr/sbin/nologin
EOF

# The config (a conffile: an upgrade keeps the node's own), and the data dir.
install -d -m 0755 "$root/etc/officesync"
install -m 0640 "$here/officesync.example.toml" "$root/etc/officesync/officesync.toml"
install -d -m 0700 "$root/var/lib/officesync"

# Manual pages and completions, from the binaries themselves.
install -d "$root/usr/share/man/man1" "$root/usr/share/man/man8"
"$bin_dir/officesync" man --dir "$root/usr/share/man/man1" >/dev/null
install -m 0644 "$here/officesyncd.8" "$root/usr/share/man/man8/officesyncd.8"
find "$root/usr/share/man" -type f -name '*.[18]' -exec gzip -9n {} +
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
"$bin_dir/officesync" completions bash > "$root/usr/share/bash-completion/completions/officesync"
"$bin_dir/officesync" completions zsh > "$root/usr/share/zsh/vendor-completions/_officesync"
"$bin_dir/officesync" completions fish > "$root/usr/share/fish/vendor_completions.d/officesync.fish"

# Documentation: copyright, changelogs, the guide.
doc="$root/usr/share/doc/officesync"
install -d "$doc"
cat > "$doc/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: officesync

Files: *
Copyright: 2026 the officesync authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License version 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
EOF
gzip -9n < "$repo/CHANGELOG.md" > "$doc/changelog.gz"
{
  echo "officesync ($version) unstable; urgency=medium"
  echo
  echo "  * Release $version; see /usr/share/doc/officesync/changelog.gz."
  echo
  echo " -- $maintainer  $(LC_ALL=C date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n > "$doc/changelog.Debian.gz"
gzip -9n < "$repo/README.md" > "$doc/README.md.gz"

# lintian: what is so on purpose (each with its reason).
install -d "$root/usr/share/lintian/overrides"
cat > "$root/usr/share/lintian/overrides/officesync" <<'EOF'
# The replica is private to the daemon's user: systemd's StateDirectoryMode=0700 and the
# deployment guide ask for 0700, and postinst gives it to officesync.
officesync: non-standard-dir-perm 0700 != 0755 [var/lib/officesync/]
# The config names the node's key files and may hold the storage key's path: readable by root
# and the daemon's group only (postinst: root:officesync 0640).
officesync: non-standard-file-perm 0640 != 0644 [etc/officesync/officesync.toml]
EOF

# Control files.
install -d "$root/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<EOF
Package: officesync
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: libc6 (>= 2.34), libgcc-s1, passwd, init-system-helpers (>= 1.54)
Recommends: systemd
Section: net
Priority: optional
Homepage: https://example.invalid/officesync
Description: replicated records for government offices over slow links
 officesyncd keeps a replica of the offices' shared records in a local store,
 replicates it with its peers over QUIC with mutual TLS, and serves a local
 HTTP API; officesync is its command-line tool (records, status, users,
 certificates, backups).
 .
 Installing the package does not start the daemon: install the node's
 certificate bundle and edit /etc/officesync/officesync.toml first, then
 "systemctl enable --now officesyncd" (see /usr/share/doc/officesync).
EOF
echo /etc/officesync/officesync.toml > "$root/DEBIAN/conffiles"

cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# officesync postinst: the system user, ownership of the config and data dir, and a restart
# of a running daemon on upgrade.
set -e
if [ "$1" = configure ]; then
    if ! getent passwd officesync >/dev/null; then
        if command -v systemd-sysusers >/dev/null; then
            systemd-sysusers officesync.conf
        else
            useradd --system --user-group --home-dir /var/lib/officesync --no-create-home \
                --shell /usr/sbin/nologin officesync
        fi
    fi
    chown root:officesync /etc/officesync /etc/officesync/officesync.toml
    chmod 0750 /etc/officesync
    chmod 0640 /etc/officesync/officesync.toml
    chown officesync:officesync /var/lib/officesync
    chmod 0700 /var/lib/officesync
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            deb-systemd-invoke try-restart officesyncd.service >/dev/null || true
        fi
    fi
fi
exit 0
EOF
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# officesync prerm: stop the daemon when the package is removed (not on upgrade).
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop officesyncd.service >/dev/null || true
fi
exit 0
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# officesync postrm: forget the unit on removal. The data dir and the user stay, even on
# purge: the replica may be the only copy of an office's data (remove them by hand).
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f ! -path './etc/*' -printf '%P\0' \
  | sort -z | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control" "$root/DEBIAN/conffiles"

mkdir -p "$out"
deb="$(cd "$out" && pwd)/officesync_${version}_${arch}.deb"
case "$compression" in xz|gzip|zstd) ;; *) die "--compression: xz, gzip or zstd, not $compression" ;; esac
dpkg-deb --root-owner-group "-Z$compression" --build "$root" "$deb" >/dev/null
echo "$deb"
