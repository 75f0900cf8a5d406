"""Where this pymosix runs from, and the steps that set it up there.

A clone is set up with `make setup`; an installed wheel with `pymosix setup` (the CRIU the
package ships a script for) and `pymosix install-tools` (its commands on the PATH). Every message
that names a setup step asks `setup_fix()`, so it names one that exists where the code runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from pymosix.errors import PymosixError

PACKAGE_DIR = Path(__file__).resolve().parent


def source_tree(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The clone this package is imported from (src/pymosix beside a Makefile), else None."""
    root = package_dir.parent.parent
    if package_dir.parent.name == "src" and (root / "Makefile").is_file():
        return root if (root / "pyproject.toml").is_file() else None
    return None


def setup_fix(package_dir: Path = PACKAGE_DIR) -> str:
    """The step that provisions CRIU and the rest, as it is spelled where this code runs."""
    tree = source_tree(package_dir)
    return f"run 'make setup' in {tree}" if tree else "run 'sudo pymosix setup'"


def reinstall_fix(package_dir: Path = PACKAGE_DIR) -> str:
    """The step that brings back missing Python dependencies."""
    if source_tree(package_dir):
        return setup_fix(package_dir)
    return f"reinstall the pymosix wheel with {sys.prefix}/bin/pip"


def provision_script() -> AbstractContextManager[Path]:
    """The shipped provision-criu.sh as a file (it is one unless the package is zipped)."""
    return resources.as_file(resources.files("pymosix") / "data" / "provision-criu.sh")


def provision(criu_prefix: Path | None = None) -> tuple[int, str]:
    """Run provision-criu.sh (its progress goes to stderr); (exit status, the criu it chose)."""
    env = dict(os.environ)
    if criu_prefix is not None:
        env["PYMOSIX_CRIU_PREFIX"] = str(criu_prefix)
    with provision_script() as script:
        r = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    lines = r.stdout.splitlines()
    return r.returncode, lines[-1] if r.returncode == 0 and lines else ""


def console_scripts() -> list[str]:
    """The commands this distribution installs (pymosix, mosrun, migrate, ...)."""
    eps = metadata.distribution("pymosix").entry_points
    return sorted(ep.name for ep in eps if ep.group == "console_scripts")


def scripts_dir() -> Path:
    """Where the installer put those commands: the venv's bin."""
    return Path(sysconfig.get_path("scripts"))


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    path: str
    target: str
    #: "linked", "relinked" (it pointed elsewhere), "present", "removed", "absent"
    action: str


def link_tools(bin_dir: Path, source: Path, names: list[str], force: bool = False) -> list[Link]:
    """Symlink each command in `source` into `bin_dir`; idempotent. A file there that is not a
    symlink is someone else's: refused unless force. All are checked before any is made."""
    missing = [n for n in names if not (source / n).exists()]
    if missing:
        raise PymosixError(f"no {', '.join(missing)} in {source}: reinstall pymosix there")
    foreign = [
        str(bin_dir / n)
        for n in names
        if (bin_dir / n).exists() and not (bin_dir / n).is_symlink() and not force
    ]
    if foreign:
        raise PymosixError(f"{', '.join(foreign)} exist and are not links: remove them or --force")
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PymosixError(f"cannot make {bin_dir}: {e.strerror} (run as root?)") from None
    out = []
    for n in names:
        link, target = bin_dir / n, source / n
        if link.is_symlink() and Path(os.readlink(link)) == target:
            out.append(Link(n, str(link), str(target), "present"))
            continue
        action = "relinked" if link.exists() or link.is_symlink() else "linked"
        tmp = bin_dir / f".{n}.pymosix-new"
        try:
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)  # atomic: the command is never missing
        except OSError as e:
            raise PymosixError(f"cannot link {link}: {e.strerror} (run as root?)") from None
        out.append(Link(n, str(link), str(target), action))
    return out


def unlink_tools(bin_dir: Path, source: Path, names: list[str]) -> list[Link]:
    """Remove those links in `bin_dir` that point into `source`; anything else stays."""
    out = []
    for n in names:
        link, target = bin_dir / n, source / n
        if link.is_symlink() and Path(os.readlink(link)) == target:
            try:
                link.unlink()
            except OSError as e:
                raise PymosixError(f"cannot remove {link}: {e.strerror} (run as root?)") from None
            out.append(Link(n, str(link), str(target), "removed"))
        else:
            out.append(Link(n, str(link), str(target), "absent"))
    return out
