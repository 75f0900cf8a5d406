"""The test bed and the load sampler on cgroup v2. A pure v2 host is imitated in a private mount
namespace whose /sys/fs/cgroup is a cgroup2 mount (DESIGN.md §3), where detection must pick v2;
the bed runs on the cgroup2 hierarchy this host mounts beside v1. Neither has a cpuset controller
here (the controllers stay with v1), so this runs the CPU-affinity path."""

from __future__ import annotations

import json
import os
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
#: Unmount the v1 tree (it has submounts), mount the unified hierarchy alone in its place.
V2_HOST = 'umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"'


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
    name = f"t{secrets.token_hex(3)}"
    yield name
    down(name)  # whatever the script left (down looks in every mounted hierarchy)


def test_mode_in_a_cgroup2_only_mount_is_affinity() -> None:
    if not shutil.which("unshare"):
        pytest.skip("no unshare (util-linux)")
    code = "from pymosix import cgroups; print(cgroups.cgroup_mode())"
    r = in_v2_host([sys.executable, "-c", code], 30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("v2-affinity", "v2-cpuset")


def test_bed_on_cgroup_v2_confines_samples_migrates_and_leaves_nothing(v2_name: str) -> None:
    """The whole bed on the v2 hierarchy this host mounts beside v1 (/sys/fs/cgroup/unified),
    chosen by PYMOSIX_CGROUP_MODE, which the agents inherit: the v2 code paths in full.

    (Not in the private mount namespace above: there, keeping the nodes' own mount namespaces
    by `unshare --mount=FILE` fails with EINVAL whenever the inner unshare runs on another CPU
    than the one the outer namespace was made on, without pymosix too: `taskset -c 0 unshare -m
    sh -c '... taskset -c 1 unshare --mount=FILE true'` fails every time, 0 then 0 never. This
    kernel's loop check compares namespace ids that are not ordered across CPUs.)
    """
    v2 = [t for t in cgroups.hierarchies() if t.mode.startswith("v2")]
    if not v2:
        pytest.skip("no cgroup2 hierarchy is mounted here")
    env = dict(os.environ, **{cgroups.MODE_ENV: v2[0].mode})
    r = subprocess.run(
        [sys.executable, "-m", "tests.kernel.cgroup2_bed", v2_name],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mode"] == v2[0].mode, out
    assert out["root"] == str(v2[0].root), out
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
