"""The test bed and the load sampler on a unified cgroup v2 host, imitated in a private mount
namespace whose /sys/fs/cgroup is a cgroup2 mount (DESIGN.md §3). That hierarchy has no cpuset
controller here (the controllers stay with v1), so this runs the CPU-affinity path."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymosix import cgroups
from pymosix.testbed import down

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
#: Unmount the v1 tree (it has submounts), mount the unified hierarchy alone in its place; and a
#: /run/netns of its own, so that other test runs on this machine never see this bed's namespace
#: names without the namespaces (which live in this mount namespace only).
V2_HOST = (
    "umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup"
    " && mkdir -p /run/netns && mount -t tmpfs pmx-netns /run/netns"
    ' && exec "$@"'
)


def in_v2_host(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", V2_HOST, "sh", *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )


@pytest.fixture
def v2_name() -> Iterator[str]:
    if not shutil.which("unshare"):
        pytest.skip("no unshare (util-linux)")
    name = f"t{secrets.token_hex(3)}"
    yield name
    # Whatever the script left: taken down from inside a v2 mount, as it was made.
    in_v2_host([sys.executable, "-c", f"from pymosix.testbed import down; down({name!r})"], 60)
    down(name)


def test_mode_in_a_cgroup2_only_mount_is_affinity(v2_name: str) -> None:
    r = in_v2_host(
        [sys.executable, "-c", "from pymosix import cgroups; print(cgroups.cgroup_mode())"], 30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("v2-affinity", "v2-cpuset")


def test_bed_on_cgroup_v2_confines_samples_migrates_and_leaves_nothing(v2_name: str) -> None:
    r = in_v2_host([sys.executable, "-m", "tests.kernel.cgroup2_bed", v2_name], 240)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # Affinity here; a host whose cgroup2 has the cpuset controller runs the same checks on it.
    assert out["mode"] in ("v2-affinity", "v2-cpuset"), out
    assert out["root"] == "/sys/fs/cgroup", out
    for name, node in out["nodes"].items():
        # Every process of the node is in its own cgroup and confined to its CPUs.
        assert node["agent_in_cgroup"], (name, node)
        assert node["cgroups"] == [f"/pmx-{v2_name}-{name}"], node
        assert node["affinities"] == [node["cpus"]], node
    if len({c for n in out["nodes"].values() for c in n["cpus"]}) >= 2:
        assert out["nodes"]["node1"]["cpus"] != out["nodes"]["node2"]["cpus"]
    # The sampler counts per node: the loop is node1's, not node2's.
    assert out["load_seen"]["node1"] > 0.6, out
    assert out["load_seen"]["node2"] < 0.4, out
    assert out["migrate"]["rc"] == 0, out["migrate"]
    # The restored job takes the restoring agent's cgroup and CPUs; node2 now carries the load.
    assert out["guest"]["cgroup"] == f"/pmx-{v2_name}-node2", out
    assert out["guest"]["affinity"] == out["nodes"]["node2"]["cpus"], out
    assert out["load_after"]["node2"] > 0.6, out
    assert out["left"] == [], out
    # The private cgroup2 mount shows the same kernel cgroups as any cgroup2 mount out here.
    host_v2 = [t for t in cgroups.hierarchies() if t.mode.startswith("v2")]
    assert [str(p) for t in host_v2 for p in t.find(f"pmx-{v2_name}-")] == []
