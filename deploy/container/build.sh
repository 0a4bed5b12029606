#!/usr/bin/env bash
# Builds the officesyncd container image FROM scratch out of already-built binaries: no base
# image, no registry, no compiler inside Docker.
#
#   deploy/container/build.sh [--bin-dir DIR] [--tag NAME:TAG] [--context DIR]
#
#   --bin-dir DIR   where officesyncd and officesync are (default: target/release)
#   --tag NAME:TAG  image name (default: officesync:VERSION, VERSION from `officesyncd --version`)
#   --context DIR   only write the build context into DIR (for `docker build DIR` on another
#                   machine); do not build
#
# The context holds rootfs/ (the two binaries with their debug info stripped, every shared
# library `ldd` lists for them plus the dynamic loader, and a minimal /etc), data/ (the empty
# data dir) and the Dockerfile. A statically linked binary needs no libraries. The libraries
# come from this machine, so the image runs wherever Docker runs on x86_64 Linux.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir=target/release
tag=
context=

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "build.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bin_dir=$2; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs NAME:TAG"; tag=$2; shift 2 ;;
    --context) [ $# -ge 2 ] || die "--context needs a directory"; context=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

for bin in officesyncd officesync; do
  [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin is missing: run \`cargo build --release --bins\` or pass --bin-dir"
done
command -v ldd >/dev/null || die "ldd is missing (it comes with the C library: apt-get install libc-bin)"

if [ -z "$tag" ]; then
  version="$("$bin_dir/officesyncd" --version | awk '{print $2}')"
  tag="officesync:${version:-latest}"
fi

if [ -n "$context" ]; then
  mkdir -p "$context"
  [ -z "$(ls -A "$context")" ] || die "--context $context is not empty"
  ctx="$context"
else
  command -v docker >/dev/null || die "docker is missing"
  ctx="$(mktemp -d "${TMPDIR:-/tmp}/officesync-image.XXXXXX")"
  trap 'rm -rf "$ctx"' EXIT
fi

root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/officesync" "$root/tmp" "$ctx/data"
chmod 1777 "$root/tmp"
chmod 0700 "$ctx/data"

for bin in officesyncd officesync; do
  install -m 0755 "$bin_dir/$bin" "$root/usr/local/bin/$bin"
  # Debug info only (function names stay for backtraces); a debug build shrinks ~8x.
  if command -v strip >/dev/null; then strip --strip-debug "$root/usr/local/bin/$bin"; fi
done

# Shared libraries and the loader, at the paths the binaries look for them. `ldd` prints
# "name => /path (addr)" for libraries and "/path (addr)" for the loader.
for bin in officesyncd officesync; do
  ldd "$bin_dir/$bin" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' || true
done | sort -u | while read -r lib; do
  [ -e "$lib" ] || die "ldd lists $lib, which does not exist"
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/sbin/nologin
officesync:x:10001:10001:officesync daemon:/var/lib/officesync:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
officesync:x:10001:
GROUP
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
cp "$here/Dockerfile" "$ctx/Dockerfile"

if [ -n "$context" ]; then
  echo "wrote the build context to $context; build it with: docker build -t $tag $context"
  exit 0
fi
echo "building $tag from $bin_dir ($(du -sh "$root" | cut -f1) root filesystem)"
docker build --quiet --tag "$tag" "$ctx" >/dev/null
echo "built $tag"
