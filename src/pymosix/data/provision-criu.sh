#!/usr/bin/env bash
# Provide a criu that passes `criu check` on this host, without touching the system C library.
#
# Order of preference (DESIGN.md §3):
#   1. a criu already on the system (or at $PYMOSIX_CRIU) that passes `criu check`;
#   2. the distribution's criu package, if it passes;
#   3. Debian 13's criu 4.x and its libraries unpacked into a private prefix, run through that
#      prefix's own dynamic loader (Debian 12's criu 3.17 fails on kernels >= 6.13, CRIU #2532).
# Prints the path of the criu to use on its last line. Idempotent: seconds when nothing is missing.
set -euo pipefail

PREFIX=${PYMOSIX_CRIU_PREFIX:-/opt/pymosix/criu}
SUITE=${PYMOSIX_CRIU_SUITE:-trixie}
WRAPPER="$PREFIX/bin/criu"

say() { echo "provision-criu: $*" >&2; }
passes() { [ -x "$1" ] && "$1" check >/dev/null 2>&1; }

if [ "$(id -u)" != 0 ]; then
  say "needs root (criu runs as root); run it with sudo"
  exit 1
fi

for c in "${PYMOSIX_CRIU:-}" "$WRAPPER" "$(command -v criu 2>/dev/null || true)"; do
  if [ -n "$c" ] && passes "$c"; then
    say "using $c ($("$c" --version | head -1))"
    echo "$c"
    exit 0
  fi
done

have_apt() { command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; }
if ! have_apt; then
  say "no working criu and no apt-get here: install CRIU >= 4.1 by hand and set PYMOSIX_CRIU"
  exit 1
fi

# 2. The distribution's own package, only if it is not already installed and failing.
if ! dpkg -s criu >/dev/null 2>&1; then
  say "trying the distribution's criu package"
  if apt-get install -y -qq criu >/dev/null 2>&1 && passes "$(command -v criu || echo /nonexistent)"; then
    c=$(command -v criu)
    say "using $c ($("$c" --version | head -1))"
    echo "$c"
    exit 0
  fi
  say "the distribution's criu does not pass 'criu check' on kernel $(uname -r); using Debian $SUITE's"
  # Leave no failing criu on the PATH to confuse people.
  apt-get remove -y -qq criu >/dev/null 2>&1 || true
fi

# 3. Debian 13's criu in a private prefix, with a private apt configuration: the system's apt
#    sources, state and C library are left as they are.
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [ ! -r "$KEYRING" ]; then
  apt-get install -y -qq debian-archive-keyring >/dev/null
fi
work=$(mktemp -d /tmp/pymosix-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{etc/sources.list.d,etc/preferences.d,state/lists/partial,cache/archives/partial,debs}
touch "$work/state/status"
echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian $SUITE main" >"$work/etc/sources.list"
APTO=(-o "Dir::Etc::SourceList=$work/etc/sources.list" -o "Dir::Etc::SourceParts=$work/etc/sources.list.d"
      -o "Dir::State=$work/state" -o "Dir::State::status=$work/state/status" -o "Dir::Cache=$work/cache"
      -o "Dir::Etc::Preferences=$work/etc/preferences" -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
      -o "APT::Architecture=amd64" -o "APT::Sandbox::User=root" -qq)
say "fetching the package index of Debian $SUITE"
apt-get "${APTO[@]}" update >/dev/null
mapfile -t pkgs < <(apt-cache "${APTO[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances criu | grep -v '^ ' | grep -v '^<' | sort -u)
say "downloading ${#pkgs[@]} packages: ${pkgs[*]}"
(cd "$work/debs" && apt-get "${APTO[@]}" download "${pkgs[@]}" >/dev/null)
stage="$PREFIX.new"
rm -rf "$stage"
mkdir -p "$stage/root" "$stage/bin"
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$stage/root"; done
version=$(dpkg-deb -f "$work"/debs/criu_*.deb Version)
cat >"$stage/bin/criu" <<WRAP
#!/bin/sh
# Debian $SUITE's criu $version with its own C library, run through that library's own loader.
P=$PREFIX/root
exec "\$P/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$P/usr/lib/x86_64-linux-gnu" "\$P/usr/sbin/criu" "\$@"
WRAP
chmod 755 "$stage/bin/criu"
rm -rf "$PREFIX"
mv "$stage" "$PREFIX"
if ! passes "$WRAPPER"; then
  say "Debian $SUITE's criu was unpacked to $PREFIX but 'criu check' fails there:"
  "$WRAPPER" check >&2 || true
  exit 1
fi
say "using $WRAPPER ($("$WRAPPER" --version | head -1))"
echo "$WRAPPER"
