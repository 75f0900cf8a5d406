"""Fixtures for real-kernel tests: test beds with a unique name per test, always taken down."""

from __future__ import annotations

import contextlib
import pwd
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from pymosix.testbed import TestBed

if TYPE_CHECKING:
    from tests.kernel.jobs import Job


@pytest.fixture
def make_bed() -> Iterator[Callable[..., TestBed]]:
    """make_bed(nodes=2, **kw) -> a running bed; every bed made is taken down after the test."""
    beds: list[TestBed] = []

    def make(
        nodes: int = 2, converge: bool = True, measure_speed: bool = False, **kw: object
    ) -> TestBed:
        # The reference speed unless a test measures it: loads then read in runnable tasks, and a
        # busy machine's slower measurement cannot move them.
        if not measure_speed:
            kw["extra_args"] = ["--set", "speed=10000", *kw.get("extra_args", ())]  # type: ignore[misc]
        bed = TestBed.up(nodes=nodes, name=f"t{secrets.token_hex(3)}", **kw)  # type: ignore[arg-type]
        beds.append(bed)
        if converge and "agents" not in kw:
            bed.wait_converged()
        return bed

    try:
        yield make
    finally:
        for bed in beds:
            bed.down()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Background processes a test starts (append them); killed and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()
            p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()


def wait_until(
    what: str, predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05
) -> float:
    """Poll predicate until it holds; return the seconds it took, or fail naming `what`."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:
            pass
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what}", pytrace=False)
        time.sleep(poll_s)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """A list to put started Jobs in; each is killed and reaped after the test."""
    started: list[Job] = []
    try:
        yield started
    finally:
        for j in started:
            j.finish()


def _userdel(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, timeout=10, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(["userdel", "-r", name], capture_output=True, timeout=30, check=False)
        if r.returncode in (0, 6):  # 6: no such user
            return
        time.sleep(0.1)  # 8: still logged in, while its last processes die
    pytest.fail(f"could not remove the test user {name}", pytrace=False)


@pytest.fixture
def make_user() -> Iterator[Callable[..., str]]:
    """make_user(uid=None) -> the name of a new unprivileged user, removed after the test.

    Fails at once, naming the cause, if the user cannot run this venv's Python (an interpreter
    under root's 0700 home, as pyenv's is): every tool would fail as that user.
    """
    made: list[str] = []

    def make(uid: int | None = None) -> str:
        name = f"pmxu{secrets.token_hex(3)}"
        argv = ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name]
        if uid is not None:
            argv[1:1] = ["--uid", str(uid)]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        made.append(name)
        pw = pwd.getpwnam(name)
        become = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
        r = subprocess.run(
            [*become, sys.executable, "-c", "import pymosix"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if r.returncode != 0:
            pytest.fail(
                f"user {name} cannot run {sys.executable} ({r.stderr.strip()[-200:]}): "
                "make the venv with the system's Python (make setup does)",
                pytrace=False,
            )
        return name

    try:
        yield make
    finally:
        for name in made:
            with contextlib.suppress(subprocess.SubprocessError):
                _userdel(name)


@pytest.fixture
def user(make_user: Callable[..., str]) -> str:
    """One unprivileged user for the test."""
    return make_user()
