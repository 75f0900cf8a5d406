"""Hygiene for every test: a test that leaks a child process, a test-bed namespace, link or
cgroup fails, and kernel tests are skipped (not failed) where they cannot run."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pymosix.migration.engine import orphaned_image_roots

#: Every kernel object tests make starts with this, so leaks are found by name.
PREFIX = "pmx"
#: v1 cpuset, the v2 root of a v2 host, and the v2 hierarchy a hybrid host mounts beside v1 (where
#: beds made in a private cgroup2 mount, tests/kernel/test_cgroup2.py, show their cgroups).
CGROUP_ROOTS = (
    Path("/sys/fs/cgroup/cpuset"),
    Path("/sys/fs/cgroup"),
    Path("/sys/fs/cgroup/unified"),
)


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
    out: set[str] = set()
    for root in CGROUP_ROOTS:
        try:
            out |= {str(p) for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)}
        except OSError:
            continue
    return out


def _children() -> set[int]:
    try:
        return {c.pid for c in psutil.Process().children(recursive=True) if c.status() != "zombie"}
    except psutil.Error:
        return set()


def _foreign_users(paths: list[Path]) -> set[Path]:
    """Those netns/cgroup paths that a process outside this test run lives in."""
    ours = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)}
    want: dict[int, Path] = {}
    for p in paths:
        try:
            if p.is_file():  # a netns: /run/netns/NAME, matched by inode
                want[p.stat().st_ino] = p
        except OSError:
            continue
    out: set[Path] = set()
    for p in paths:  # a cgroup: any member pid that is not ours
        procs = p / "cgroup.procs"
        if procs.exists():
            try:
                if {int(x) for x in procs.read_text().split()} - ours:
                    out.add(p)
            except (OSError, ValueError):
                continue
    if want:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in ours:
                continue
            try:
                ino = (proc / "ns" / "net").stat().st_ino
            except OSError:
                continue
            if ino in want:
                out.add(want[ino])
    return out


def _new_objects(before: tuple[set[str], set[str], set[str]]) -> list[str]:
    """pmx netns, links and cgroups made since `before` that stay: this test's leaks.

    Other engineers' test runs make pmx objects too, at any moment: what vanishes within a
    moment, and netns or cgroups with someone else's processes in them, are not ours. While
    such a foreign run is seen, new links cannot be told apart and are not counted.
    """
    deadline = time.monotonic() + 2.0
    while True:
        now = (_netns(), _links(), _cgroups())
        new = [has - was for was, has in zip(before, now, strict=True)]
        if not any(new) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    netns, links, cgroups = new
    paths = [Path("/run/netns") / n for n in netns] + [Path(c) for c in cgroups]
    foreign = _foreign_users(paths) if paths else set()
    left = [f"netns {n}" for n in sorted(netns) if Path("/run/netns") / n not in foreign]
    left += [f"cgroup {c}" for c in sorted(cgroups) if Path(c) not in foreign]
    if not foreign:
        left += [f"link {name}" for name in sorted(links)]
    return left


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
    images_before = set(orphaned_image_roots()) if kernel else set()
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
                proc.wait(timeout=5)  # reaps our direct children: no zombie is left either
            except psutil.Error:
                pass
    if before is not None:
        left += _new_objects(before)
        left += [
            f"images directory {d}" for d in sorted(set(orphaned_image_roots()) - images_before)
        ]
    if left:
        pytest.fail("test left behind: " + ", ".join(left), pytrace=False)
