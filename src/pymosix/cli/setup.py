"""``pymosix setup``: provision CRIU on this host (as root) with the script the package ships.

Prefers a CRIU >= 4.2 that passes `criu check`, else 4.1; packages come from the Debian archive in
this host's apt sources. Quick when nothing is missing. From a clone, `make setup` does this too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from pymosix.cli._common import fail, print_json
from pymosix.install import provision, provision_script

PROG = "pymosix setup"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument(
        "--criu-prefix",
        type=Path,
        default=None,
        help="where to unpack CRIU (default: $PYMOSIX_CRIU_PREFIX, else /opt/pymosix/criu)",
    )
    p.add_argument("--print-script", action="store_true", help="print the script's path only")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if args.print_script:
        with provision_script() as script:
            print(script)
        return 0
    if os.geteuid() != 0:
        return fail(PROG, "needs root (it installs CRIU): run 'sudo pymosix setup'")
    code, criu = provision(args.criu_prefix)
    version = ""
    if criu:
        out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=30)
        version = next(
            (ln.split()[-1] for ln in out.stdout.splitlines() if ln.startswith("Version")), ""
        )
    if args.json:
        print_json({"ok": code == 0, "criu": criu, "version": version})
    elif code == 0:
        print(f"criu {version}: {criu}; next: 'pymosix doctor'")
    else:
        return fail(PROG, "CRIU could not be provisioned (see the lines above)", code)
    return code
