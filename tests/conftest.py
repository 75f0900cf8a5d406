"""Hygiene for every test: a test that leaks a child process, a test-bed namespace, link or
cgroup fails, and kernel tests are skipped (not failed) where they cannot run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

#: Every kernel object tests make starts with this, so leaks are found by name.
PREFIX = "pmx"
CPUSET = Path("/sys/fs/cgroup/cpuset")


def _netns() -> set[str]:
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return set()
    return {ln.split()[0] for ln in out.stdout.splitlines() if ln.startswith(PREFIX)}


def _links() -> set[str]:
    try:
        return {p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(PREFIX)}
    except OSError:
        return set()


def _cgroups() -> set[str]:
    try:
        return {p.name for p in CPUSET.iterdir() if p.is_dir() and p.name.startswith(PREFIX)}
    except OSError:
        return set()


def _children() -> set[int]:
    try:
        return {c.pid for c in psutil.Process().children(recursive=True) if c.status() != "zombie"}
    except psutil.Error:
        return set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces and CRIU")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves processes, namespaces, links or cgroups behind."""
    kernel = "kernel" in request.keywords
    before = (_netns(), _links(), _cgroups()) if kernel else None
    children = _children()
    yield
    left = []
    # Children get a moment to be reaped by the test's own teardown before they count as leaks.
    for _ in range(50):
        extra = _children() - children
        if not extra:
            break
        psutil.wait_procs([psutil.Process(p) for p in extra if psutil.pid_exists(p)], timeout=0.1)
    else:
        extra = _children() - children
        for pid in extra:
            try:
                proc = psutil.Process(pid)
                left.append(f"process {pid} ({' '.join(proc.cmdline())[:60]})")
                proc.kill()
            except psutil.Error:
                pass
    if before is not None:
        for kind, was, now in zip(
            ("netns", "link", "cgroup"), before, (_netns(), _links(), _cgroups()), strict=True
        ):
            left += [f"{kind} {name}" for name in sorted(now - was)]
    if left:
        pytest.fail("test left behind: " + ", ".join(left), pytrace=False)
