"""pymosix as a user of the wheel gets it: built from this tree, installed into a fresh venv of
the system's Python outside the tree, and run from there: doctor names the fixes that exist
there, `pymosix setup` provisions CRIU with the shipped script, install-tools links the commands,
and the demo runs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymosix.testbed import bed_names

REPO = Path(__file__).parents[2]

NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(900)]


def system_python() -> str:
    """The distribution's python3, not the one of this tree's venv."""
    if Path("/usr/bin/python3").exists():
        return "/usr/bin/python3"
    found = shutil.which("python3", path=os.defpath)
    if found is None:
        pytest.skip("no system python3")
    return found


def run(cmd: list[str], cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYMOSIX_CRIU", "PYTHONPATH")}
    clean["PATH"] = os.defpath  # nothing of this tree's venv on the PATH
    return subprocess.run(
        cmd, cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def install_root() -> Iterator[Path]:
    """A directory outside the tree, like /opt on a user's machine (not under /tmp, which bed
    nodes have of their own: the bed keeps pymosix's own directory visible, but a user's install
    does not live there)."""
    root = Path("/var/lib") / f"pymosix-wheel-test-{secrets.token_hex(3)}"
    root.mkdir(mode=0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_sets_itself_up_in_a_venv_outside_the_tree(install_root: Path) -> None:
    tmp_path = install_root
    assert not tmp_path.is_relative_to(REPO)
    dist, venv, prefix, tools = (tmp_path / d for d in ("dist", "venv", "criu", "tools"))
    try:
        # Built from a copy: setuptools leaves build/ in the tree it builds, and reuses it.
        tree = tmp_path / "tree"
        shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(*NOT_SOURCES))
        built = run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(tree), "-w", str(dist)],
            tmp_path,
            300,
        )
        assert built.returncode == 0, built.stderr[-2000:]
        [wheel] = dist.glob("pymosix-*.whl")
        # The man pages were made from the tools' parsers when the wheel was built.
        with zipfile.ZipFile(wheel) as zf:
            man = {n.rsplit("/", 1)[-1] for n in zf.namelist() if "/man/man1/" in n}
            assert {"mosrun.1", "migrate.1", "mps.1", "mosctl.1", "showmap.1"} <= man, man
            assert b"\\-\\-all" in zf.read("pymosix/man/man1/mps.1")
        made = run([system_python(), "-m", "venv", str(venv)], tmp_path, 120)
        assert made.returncode == 0, made.stderr
        pip = run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, 600)
        assert pip.returncode == 0, pip.stderr[-2000:]
        bin_ = venv / "bin"
        where = run(
            [str(bin_ / "python"), "-c", "import pymosix; print(pymosix.__file__)"], tmp_path, 60
        )
        assert Path(where.stdout.strip()).is_relative_to(venv), "imported from the venv"

        # The doctor's fixes exist here: no clone, so no make.
        doctor = run(
            [str(bin_ / "pymosix"), "doctor", "--json", "--criu", str(tmp_path / "no" / "criu")],
            tmp_path,
            120,
        )
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["criu"]["status"] == "FAIL"
        assert "pymosix setup" in checks["criu"]["fix"]
        assert not [c for c in checks.values() if "make" in c["fix"]]

        # The shipped script provisions CRIU >= 4.2 into the prefix asked for.
        setup = run(
            [str(bin_ / "pymosix"), "setup", "--json"],
            tmp_path,
            600,
            PYMOSIX_CRIU_PREFIX=str(prefix),
        )
        assert setup.returncode == 0, setup.stderr[-2000:]
        result = json.loads(setup.stdout)
        assert result["criu"] == str(prefix / "bin" / "criu")
        assert tuple(int(x) for x in result["version"].split(".")[:2]) >= (4, 2)
        ok = run(
            [str(bin_ / "pymosix"), "doctor", "--json", "--criu", result["criu"]], tmp_path, 120
        )
        criu = next(c for c in json.loads(ok.stdout)["checks"] if c["name"] == "criu")
        assert criu["detail"].startswith(f"{result['version']}: jobs with sockets can move")

        # The commands, linked where users look for them; a second run changes nothing.
        for action in ("linked", "present"):
            linked = run(
                [str(bin_ / "pymosix"), "install-tools", "--prefix", str(tools), "--json"],
                tmp_path,
                60,
            )
            assert linked.returncode == 0, linked.stderr
            links = {ln["name"]: ln for ln in json.loads(linked.stdout)}
            assert {ln["action"] for ln in links.values()} == {action}
        assert {"pymosix", "mosrun", "migrate", "mps", "mosctl", "showmap"} <= set(links)
        assert Path(os.readlink(tools / "bin" / "mosrun")) == bin_ / "mosrun"
        assert {"mosrun.1", "mps.1"} <= set(links), "and the man pages beside them"
        assert (tools / "share" / "man" / "man1" / "mosrun.1").read_text().startswith(".TH MOSRUN")
        version = run([str(tools / "bin" / "pymosix"), "--version"], tmp_path, 60)
        assert version.stdout.startswith("pymosix "), version.stderr

        # And the seed's walk-through runs from there, with the CRIU it provisioned.
        name = f"w{secrets.token_hex(3)}"
        demo = run(
            [str(bin_ / "pymosix"), "demo", "--name", name],
            tmp_path,
            300,
            PYMOSIX_CRIU=result["criu"],
        )
        assert name not in bed_names(), "the demo left its test bed behind"
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-2000:]
        assert "every step reached the state the seed describes" in demo.stdout
    finally:
        for d in (venv, prefix, tools, dist, tmp_path / "tree"):
            shutil.rmtree(d, ignore_errors=True)
