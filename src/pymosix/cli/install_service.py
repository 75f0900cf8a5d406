"""``pymosix install-service``: install the systemd unit and a default node config."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from pymosix.cli._common import fail


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix install-service", description=__doc__)
    p.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"))
    p.add_argument("--config-dir", type=Path, default=Path("/etc/pymosix"))
    p.add_argument("--no-enable", action="store_true", help="install only; do not enable and start")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        return fail("pymosix install-service", "must run as root (it writes to /etc)")
    exe = shutil.which("pymosix") or str(Path(sys.argv[0]).resolve())
    data = resources.files("pymosix") / "data"
    unit = (data / "pymosix.service").read_text().replace("@PYMOSIX@", exe)
    args.unit_dir.mkdir(parents=True, exist_ok=True)
    unit_path = args.unit_dir / "pymosix.service"
    unit_path.write_text(unit)
    print(f"wrote {unit_path}")
    args.config_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    cfg = args.config_dir / "node.toml"
    if cfg.exists():
        print(f"kept {cfg} (already there)")
    else:
        cfg.write_text((data / "node.toml").read_text())
        print(f"wrote {cfg}: set address/interface there")
    if args.no_enable or not shutil.which("systemctl"):
        print("next: systemctl daemon-reload && systemctl enable --now pymosix")
        return 0
    subprocess.run(["systemctl", "daemon-reload"], check=False)
    r = subprocess.run(["systemctl", "enable", "--now", "pymosix"], check=False)
    return r.returncode
