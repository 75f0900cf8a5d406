"""`pymosix demo` runs the seed's walk-through to the end, and names the step that breaks."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from pymosix.testbed import bed_names

pytestmark = pytest.mark.kernel


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    name = f"d{secrets.token_hex(3)}"
    r = subprocess.run(
        [sys.executable, "-m", "pymosix", "demo", "--name", name, *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert name not in bed_names(), "the demo left its test bed behind"
    return r


def test_demo_runs_to_the_end() -> None:
    r = run_demo()
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert (
        "My Node-Id: 0x640b\n\nBase Node-Id Address          Count\n------------ ---------------- -----\n0x640b       192.168.100.11   1\n"
        in out
    )
    assert "pymosix configuration changed: This is pymosix #25612 (of 2 configured)" in out
    assert "[root@node1 root]# mosrun /tmp/omtest" in out
    assert "pymosix mosmon: load, 2 node(s)" in out
    assert "guest(25611)" in out
    assert out.rstrip().endswith("demo: every step reached the state the seed describes.")


def test_broken_step_exits_non_zero_naming_it() -> None:
    # An agent that cannot start (a setting it refuses) breaks the first boot.
    r = run_demo("--timeout", "5", "--agent-arg=--set", "--agent-arg=mcast_port=not-a-port")
    assert r.returncode == 1
    assert "demo: step '5.2 boot node1 alone' failed" in r.stdout
