"""``pymosix install-service``: write the systemd unit and a complete, commented node.toml.

Nothing is started until asked: edit CONFIG_DIR/node.toml (address, key, map), then run again
with --start, or 'systemctl enable --now pymosix'. --print shows the unit and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from pymosix.cli._common import fail
from pymosix.configdoc import render

PROG = "pymosix install-service"


def agent_executable() -> str:
    """The `pymosix` of this installation (its venv's), as an absolute path for ExecStart."""
    sibling = Path(sys.executable).parent / "pymosix"
    if sibling.exists():
        return str(sibling)
    return shutil.which("pymosix") or str(Path(sys.argv[0]).resolve())


def render_unit(exe: str, config_dir: Path) -> str:
    template = (resources.files("pymosix") / "data" / "pymosix.service").read_text()
    return template.replace("@PYMOSIX@", exe).replace("@CONFIG_DIR@", str(config_dir))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"))
    p.add_argument(
        "--config-dir", type=Path, default=Path("/etc/pymosix"), help="where node.toml lives"
    )
    p.add_argument("--print", action="store_true", help="print the unit and write nothing")
    p.add_argument(
        "--start", action="store_true", help="also daemon-reload, enable and start the service"
    )
    args = p.parse_args(argv)
    config_dir = args.config_dir.absolute()
    unit = render_unit(agent_executable(), config_dir)
    if args.print:
        sys.stdout.write(unit)
        return 0
    if os.geteuid() != 0:
        return fail(
            PROG, "must run as root (it writes the unit and /etc/pymosix); --print needs not"
        )
    args.unit_dir.mkdir(parents=True, exist_ok=True)
    unit_path = args.unit_dir / "pymosix.service"
    unit_path.write_text(unit)
    print(f"wrote {unit_path}")
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    cfg = config_dir / "node.toml"
    if cfg.exists():
        print(f"kept {cfg} (already there; 'pymosix node --print-config' shows what it sets)")
    else:
        cfg.write_text(render())
        print(f"wrote {cfg}: every setting, commented out at its default")
    if not args.start:
        print(
            f"nothing started. Next: edit {cfg} (address or interface, key_file, map_file), then\n"
            f"  {PROG} --start    (or: systemctl daemon-reload && systemctl enable --now pymosix)"
        )
        return 0
    if not shutil.which("systemctl"):
        return fail(PROG, "no systemctl here: start 'pymosix node' by other means")
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "pymosix"]):
        r = subprocess.run(cmd, check=False)
        if r.returncode != 0:
            return fail(PROG, f"'{' '.join(cmd)}' failed; see 'systemctl status pymosix'")
    print("started: systemctl status pymosix; journalctl -u pymosix")
    return 0
