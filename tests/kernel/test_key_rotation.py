"""Key rotation on a real bed: each node has its own copy of the key file, copied one by one as
an admin would; the nodes never lose sight of each other and never drop a datagram."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]


def keygen(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pymosix", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout


def copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".new")
    shutil.copy2(src, tmp)
    tmp.rename(dst)  # atomic, as scp to a temporary name and mv would be


def sees_both(bed: TestBed) -> bool:
    ids = {bed.node(1).node_id, bed.node(2).node_id}
    return all({n["node_id"] for n in bed.call(i, "map")["nodes"]} == ids for i in (1, 2))


class Watch:
    """Samples both maps in the background; records every moment a node was missing."""

    def __init__(self, bed: TestBed) -> None:
        self.bed = bed
        self.gaps: list[float] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not sees_both(self.bed):
                self.gaps.append(time.monotonic())
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def rejected(bed: TestBed, i: int) -> int:
    return int(bed.call(i, "status")["counters"]["rejected_auth"])


def test_rotation_without_downtime(make_bed: MakeBed) -> None:
    bed = make_bed(2, agents=[])
    files = [Path(bed.node(i).dir) / "cluster.key" for i in (1, 2)]
    for f in files:
        copy(bed.key_file, f)
    for i, f in zip((1, 2), files, strict=True):
        bed.extra_args = ["--key-file", str(f)]
        bed.start_agent(i)
    bed.extra_args = []
    wait_until("both nodes see each other", lambda: sees_both(bed), 5.0)
    old = bed.call(1, "status")["signing_key"]
    before = [rejected(bed, 1), rejected(bed, 2)]

    with Watch(bed) as watch:
        keygen("--rotate", "--grace", "4", str(files[0]))
        wait_until(
            "node1 accepts the new key", lambda: len(bed.call(1, "status")["keys"]) == 2, 3.0
        )
        assert bed.call(1, "status")["signing_key"] == old, "not signing with it before the grace"
        time.sleep(1.5)  # the admin is slow to copy: node2 still knows only the old key
        copy(files[0], files[1])
        wait_until(
            "both sign with the new key",
            lambda: (
                {bed.call(i, "status")["signing_key"] for i in (1, 2)} - {old} != set()
                and bed.call(1, "status")["signing_key"] == bed.call(2, "status")["signing_key"]
            ),
            10.0,
        )
        new = bed.call(1, "status")["signing_key"]
        assert new != old
        time.sleep(1.5)  # hellos and load reports under the new key for a while
        assert "retired" in keygen("--retire", str(files[0]))
        copy(files[0], files[1])
        wait_until(
            "both hold only the new key",
            lambda: all(bed.call(i, "status")["keys"] == [new] for i in (1, 2)),
            3.0,
        )
        time.sleep(1.5)
    assert watch.samples > 30
    assert watch.gaps == [], f"a node was missing from a map {len(watch.gaps)} times"
    assert [rejected(bed, 1), rejected(bed, 2)] == before, "a datagram was refused"

    # Control: the same change without rotation, a new key on node1 alone, cuts the two apart.
    keygen("--force", str(files[0]))
    wait_until("the nodes lose each other", lambda: not sees_both(bed), 8.0)
