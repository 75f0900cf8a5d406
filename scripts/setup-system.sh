#!/usr/bin/env bash
# System packages pymosix needs on a Debian or Ubuntu host: Python with venv, iproute2 for the
# test bed (iptables for its network faults), perl for the seed's test loop, GNU parallel for the benchmarks' baseline.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v perl >/dev/null || need+=(perl)
command -v parallel >/dev/null || need+=(parallel)
command -v tmux >/dev/null || need+=(tmux)
# Real network faults in the tests: packets dropped inside a bed node's namespace.
command -v iptables >/dev/null || need+=(iptables)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "setup: run as root to install: ${need[*]}" >&2; exit 1; fi
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
