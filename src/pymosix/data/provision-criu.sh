#!/usr/bin/env bash
# Provide a criu that passes `criu check` on this host, without touching the system C library.
#
# CRIU >= 4.2 is preferred: 4.1 cannot dump a process holding an inet socket on Linux >= 6.16
# ("Can't get 1:16 opt"). Order of preference (DESIGN.md §3):
#   1. $PYMOSIX_CRIU, if set and it passes `criu check` (the user's choice, whatever its version);
#   2. a criu >= 4.2 already here (the prefix's, then the one on PATH) that passes;
#   3. the distribution's criu package, if its version is >= 4.2 and it passes;
#   4. Debian forky's criu (4.2) and its libraries unpacked into a private prefix, run through that
#      prefix's own dynamic loader (Debian 12's criu 3.17 fails on kernels >= 6.13, CRIU #2532);
#   5. the fallback: a criu 4.1 that passes already here, else Debian trixie's 4.1.1 unpacked so.
# The packages come from the Debian archive named in this host's own apt sources, fetched by
# apt-get with the host's apt configuration (proxies, auth.conf), into a private state directory:
# the system's sources, state and C library are left as they are.
#
# Prints the path of the criu to use on its last line. Idempotent: seconds when nothing is missing;
# a 4.1 prefix is upgraded when 4.2 can be had. Without root, two read-only queries:
#   provision-criu.sh --print-mirror        the Debian archive URI taken from the apt sources
#   provision-criu.sh --print-loader [ARCH]  the dynamic loader's path for dpkg's architecture
# Environment: PYMOSIX_CRIU_PREFIX (default /opt/pymosix/criu), PYMOSIX_CRIU_SUITES (default
# "forky trixie"), PYMOSIX_DEBIAN_MIRROR (a Debian archive URI when the apt sources have none).
set -euo pipefail

PREFIX=${PYMOSIX_CRIU_PREFIX:-/opt/pymosix/criu}
SUITES=${PYMOSIX_CRIU_SUITES:-forky trixie}
WANT=4.2
WRAPPER="$PREFIX/bin/criu"
# "SUITE KERNEL" when the preferred suite's criu failed `criu check`: re-runs on that kernel keep
# the fallback quickly instead of fetching it again.
FIRST=${SUITES%% *}
FAILED="$PREFIX/preferred-failed"
# Debian's release names and aliases: how a Debian archive is known in sources without a Release
# file fetched yet (with one, apt reports Origin and Label "Debian").
DEBIAN_RELEASES="buster bullseye bookworm trixie forky duke sid oldoldstable oldstable stable testing unstable"

say() { echo "provision-criu: $*" >&2; }
version_of() { "$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -1; }
# at_least VERSION MIN: VERSION >= MIN (as sort -V orders them).
at_least() { [ -n "$1" ] && [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
passes() { [ -x "$1" ] && "$1" check >/dev/null 2>&1; }
use() {
  say "using $1 (criu $(version_of "$1"))"
  echo "$1"
  exit 0
}

# The first Debian archive among the host's deb sources (sources.list, sources.list.d/*.list and
# deb822 *.sources alike: apt itself reads them), or $PYMOSIX_DEBIAN_MIRROR.
debian_mirror() {
  if [ -n "${PYMOSIX_DEBIAN_MIRROR:-}" ]; then
    echo "$PYMOSIX_DEBIAN_MIRROR"
    return
  fi
  # Sources with a Release file fetched come first, with its Origin; then all, by suite name.
  {
    apt-get indextargets --format '$(TARGET_OF)|$(REPO_URI)|$(RELEASE)|$(ORIGIN)|$(LABEL)' || true
    apt-get indextargets --no-release-info --format '$(TARGET_OF)|$(REPO_URI)|$(RELEASE)||' || true
  } 2>/dev/null |
    awk -F'|' -v names="$DEBIAN_RELEASES" '
      BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) debian[a[i]] = 1 }
      $1 == "deb" && $2 !~ /^cdrom:/ && (($4 == "Debian" && $5 == "Debian") || ($3 in debian)) {
        print $2; exit
      }'
}

# The dynamic loader of a Debian architecture, relative to the root of its unpacked libc6.
loader_for() {
  case "$1" in
    amd64) echo usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ;;
    arm64) echo usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1 ;;
    *) return 1 ;;
  esac
}

case "${1:-}" in
  --print-mirror)
    m=$(debian_mirror)
    if [ -z "$m" ]; then
      say "no Debian archive in this host's apt sources: set PYMOSIX_DEBIAN_MIRROR to a Debian mirror's URI"
      exit 1
    fi
    echo "$m"
    exit 0
    ;;
  --print-loader)
    arch=${2:-$(dpkg --print-architecture)}
    loader_for "$arch" || { say "no known loader for architecture $arch (amd64 and arm64 are)"; exit 1; }
    exit 0
    ;;
  "") ;;
  *)
    say "unknown argument $1 (no argument provisions; --print-mirror, --print-loader [ARCH] query)"
    exit 2
    ;;
esac

if [ "$(id -u)" != 0 ]; then
  say "needs root (criu runs as root); run it with sudo"
  exit 1
fi

# 1-2. What is here already.
if [ -n "${PYMOSIX_CRIU:-}" ] && passes "$PYMOSIX_CRIU"; then
  at_least "$(version_of "$PYMOSIX_CRIU")" "$WANT" ||
    say "note: PYMOSIX_CRIU is older than $WANT: jobs holding inet sockets cannot move on Linux >= 6.16"
  use "$PYMOSIX_CRIU"
fi
fallback=""
for c in "$WRAPPER" "$(command -v criu 2>/dev/null || true)"; do
  if [ -n "$c" ] && passes "$c"; then
    at_least "$(version_of "$c")" "$WANT" && use "$c"
    fallback=${fallback:-$c}
  fi
done
if [ -n "$fallback" ] && [ "$(cat "$FAILED" 2>/dev/null)" = "$FIRST $(uname -r)" ]; then
  say "Debian $FIRST's criu failed 'criu check' on kernel $(uname -r) before; keeping $fallback (remove $FAILED to try again)"
  use "$fallback"
fi

have_apt() { command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; }
if ! have_apt; then
  [ -n "$fallback" ] && use "$fallback"
  say "no working criu and no apt-get here: install CRIU >= $WANT by hand and set PYMOSIX_CRIU"
  exit 1
fi

# 3. The distribution's own package, when it is new enough and not already installed and failing.
candidate=$(apt-cache policy criu 2>/dev/null | sed -n 's/^ *Candidate: *//p')
if ! dpkg -s criu >/dev/null 2>&1 && at_least "$candidate" "$WANT"; then
  say "trying the distribution's criu $candidate"
  if apt-get install -y -qq criu >/dev/null 2>&1 && passes "$(command -v criu || echo /nonexistent)"; then
    if [ -e "$WRAPPER" ]; then
      say "removing the older criu in $PREFIX (pymosix would prefer it over PATH)"
      rm -rf "$PREFIX"
    fi
    use "$(command -v criu)"
  fi
  say "the distribution's criu could not be installed or fails 'criu check' on kernel $(uname -r)"
  # Leave no failing criu on the PATH to confuse people.
  apt-get remove -y -qq criu >/dev/null 2>&1 || true
fi

# 4-5. Debian's criu in a private prefix, with a private apt configuration on top of the host's.
ARCH=$(dpkg --print-architecture)
if ! LOADER=$(loader_for "$ARCH"); then
  [ -n "$fallback" ] && use "$fallback"
  say "Debian's criu can be unpacked for amd64 and arm64, not $ARCH: install CRIU >= $WANT and set PYMOSIX_CRIU"
  exit 1
fi
LIBDIR=$(dirname "$LOADER")
MIRROR=$(debian_mirror)
if [ -z "$MIRROR" ]; then
  [ -n "$fallback" ] && use "$fallback"
  say "no Debian archive in this host's apt sources: set PYMOSIX_DEBIAN_MIRROR to a Debian mirror's URI"
  exit 1
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [ ! -r "$KEYRING" ]; then
  apt-get install -y -qq debian-archive-keyring >/dev/null ||
    { say "cannot install debian-archive-keyring (Debian's signing keys): install it and run again"; exit 1; }
fi
work=$(mktemp -d /tmp/pymosix-criu.XXXXXX)
trap 'rm -rf "$work" "$PREFIX.new"' EXIT

# unpack SUITE: Debian SUITE's criu with its dependencies into $PREFIX.new; prints its version.
unpack() {
  local suite=$1 w="$work/$1" version
  mkdir -p "$w"/{etc/sources.list.d,etc/preferences.d,state/lists/partial,cache/archives/partial,debs}
  touch "$w/state/status"
  echo "deb [signed-by=$KEYRING] $MIRROR $suite main" >"$w/etc/sources.list"
  local o=(-o "Dir::Etc::SourceList=$w/etc/sources.list" -o "Dir::Etc::SourceParts=$w/etc/sources.list.d"
    -o "Dir::State=$w/state" -o "Dir::State::status=$w/state/status" -o "Dir::Cache=$w/cache"
    -o "Dir::Etc::Preferences=$w/etc/preferences" -o "Dir::Etc::PreferencesParts=$w/etc/preferences.d"
    -o "APT::Architecture=$ARCH" -o "APT::Architectures=$ARCH" -o "APT::Sandbox::User=root" -qq)
  say "fetching the package index of Debian $suite from $MIRROR"
  apt-get "${o[@]}" update >/dev/null || return 1
  local pkgs
  mapfile -t pkgs < <(apt-cache "${o[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -v '^ ' | grep -v '^<' | sort -u)
  say "downloading ${#pkgs[@]} packages: ${pkgs[*]}"
  (cd "$w/debs" && apt-get "${o[@]}" download "${pkgs[@]}" >/dev/null) || return 1
  rm -rf "$PREFIX.new"
  mkdir -p "$PREFIX.new/root" "$PREFIX.new/bin"
  for deb in "$w"/debs/*.deb; do dpkg-deb -x "$deb" "$PREFIX.new/root"; done
  version=$(dpkg-deb -f "$w"/debs/criu_*.deb Version)
  local loader=$LOADER # where a usr-merged libc6 has it; before usr-merge (Debian 12), in /lib
  [ -e "$PREFIX.new/root/$loader" ] || loader=${LOADER#usr/}
  if [ ! -e "$PREFIX.new/root/$loader" ]; then
    say "Debian $suite's libc6 has no $LOADER"
    return 1
  fi
  # The wrapper finds its root beside itself, so the prefix can be checked before it is moved.
  # sh -p: the agent may run criu with a user's real uid and root's effective one (see
  # migration/criu.py owner_prefix); without -p, dash would drop the effective uid.
  cat >"$PREFIX.new/bin/criu" <<WRAP
#!/bin/sh -p
# Debian $suite's criu $version ($ARCH) with its own C library, run through that library's loader.
P=\$(dirname "\$(dirname "\$(readlink -f "\$0")")")/root
exec "\$P/$loader" --library-path "\$P/$LIBDIR:\$P/${LIBDIR#usr/}" "\$P/usr/sbin/criu" "\$@"
WRAP
  chmod 755 "$PREFIX.new/bin/criu"
  echo "$version"
}

for suite in $SUITES; do
  if [ -n "$fallback" ] && [ "$suite" != "$FIRST" ]; then
    break # only the preferred suite is worth replacing a working criu for
  fi
  if ! version=$(unpack "$suite"); then
    say "Debian $suite's criu could not be had from $MIRROR (above)"
    continue
  fi
  if ! passes "$PREFIX.new/bin/criu"; then
    say "Debian $suite's criu $version fails 'criu check' on kernel $(uname -r):"
    "$PREFIX.new/bin/criu" check 2>&1 | tail -3 >&2 || true
    [ "$suite" = "$FIRST" ] && echo "$FIRST $(uname -r)" >"$work/failed"
    continue
  fi
  rm -rf "$PREFIX.old"
  [ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
  mv "$PREFIX.new" "$PREFIX"
  rm -rf "$PREFIX.old"
  [ ! -e "$work/failed" ] || cp "$work/failed" "$FAILED"
  use "$WRAPPER"
done
if [ -n "$fallback" ]; then
  [ ! -e "$work/failed" ] || { mkdir -p "$PREFIX" && cp "$work/failed" "$FAILED"; }
  say "no criu >= $WANT works here; keeping $fallback: jobs holding inet sockets cannot move on Linux >= 6.16"
  use "$fallback"
fi
say "no criu that passes 'criu check' could be provided (tried Debian $SUITES from $MIRROR)"
exit 1
