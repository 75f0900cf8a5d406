"""A real agent as systemd would run it: sd_notify READY, WATCHDOG and STOPPING on the socket
in $NOTIFY_SOCKET; settings from the config and from `mosctl ... --persist` survive a restart."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pymosix.testbed import TestBed
from pymosix.testbed.bed import ROOT

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]


def test_agent_notifies_ready_watchdog_and_stopping(
    make_bed: MakeBed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A path, not an abstract name: those are per network namespace, and the agent is in its node's.
    ROOT.mkdir(parents=True, exist_ok=True)
    path = ROOT / f"notify-{id(monkeypatch):x}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1.0)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
        bed = make_bed(1)
        got: list[bytes] = []

        def until(pred: Callable[[], bool], timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not pred():
                assert time.monotonic() < deadline, got
                try:
                    got.append(sock.recv(4096))
                except TimeoutError:
                    continue

        until(lambda: any(m.startswith(b"READY=1\nSTATUS=node 0x640b") for m in got), 10)
        until(lambda: got.count(b"WATCHDOG=1") >= 3, 5)
        bed.stop_agent(1)
        until(lambda: b"STOPPING=1" in got, 5)
        ready = next(i for i, m in enumerate(got) if m.startswith(b"READY=1"))
        assert got.index(b"WATCHDOG=1") > ready, "READY comes first"
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def flags(bed: TestBed) -> dict[str, object]:
    f: dict[str, object] = bed.call(1, "status")["flags"]
    return f


def test_settings_from_config_and_persist_survive_a_restart(make_bed: MakeBed) -> None:
    bed = make_bed(1, extra_args=["--set", "lstay=true"])
    assert flags(bed)["lstay"] is True
    for argv in (["block", "--persist"], ["setspeed", "15000", "--persist"], ["stay"]):
        r = bed.exec(1, ["mosctl", *argv])
        assert r.returncode == 0, r.stderr
    assert bed.exec(1, ["mosctl", "quiet", "--persist"]).returncode == 1
    assert bed.exec(1, ["mosctl", "getload", "--persist"]).returncode == 1
    bed.stop_agent(1)
    bed.start_agent(1)
    f = flags(bed)
    assert (f["block"], f["speed"], f["lstay"]) == (True, 15000, True)
    assert f["stay"] is False, "set without --persist: gone with the agent"
    kept = Path(bed.node(1).dir) / "state" / "settings.json"
    assert kept.exists()
    # noblock --persist undoes it for the next start too.
    assert bed.exec(1, ["mosctl", "noblock", "--persist"]).returncode == 0
    bed.stop_agent(1)
    bed.start_agent(1)
    assert flags(bed)["block"] is False
