"""The cgroup modes (v1 cpuset, v2 cpuset, v2 affinity) and the load sampler over each, on fake
/proc and cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymosix.cgroups import (
    CgroupError,
    Hierarchy,
    NoCgroups,
    V1Cpuset,
    V2Affinity,
    V2Cpuset,
    cgroup_mode,
    detect,
    parse_cpu_list,
    parse_mountinfo,
)
from pymosix.load.sampler import Sampler, running_criu

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / {v1} rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw
"""


def fake_sys(tmp_path: Path, online: str = "0-1") -> Path:
    sys_cpu = tmp_path / "sys_cpu"
    sys_cpu.mkdir(exist_ok=True)
    (sys_cpu / "online").write_text(online + "\n")
    return sys_cpu


def fake_proc(tmp_path: Path, states: dict[int, str], cgroup: str, allowed: str = "1") -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(f"4:memory:/\n{cgroup}\n")
    (proc / "self" / "status").write_text(f"Name:\tx\nCpus_allowed_list:\t{allowed}\n")
    for tid, state in states.items():
        (proc / str(tid)).mkdir()
        (proc / str(tid) / "stat").write_text(f"{tid} (perl x) {state} 1 2 3\n")
    (proc / "stat").write_text(
        "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0\ncpu1 3 0 4 40 0 0 0 0\nprocs_running 4\n"
    )
    return proc


def fake_tree(tmp_path: Path, mode: str) -> tuple[Hierarchy, str]:
    """node1 with threads 101, 102 and a child cgroup with 103; the /proc/self/cgroup line."""
    root = tmp_path / "cg"
    (root / "node1" / "job").mkdir(parents=True)
    sys_cpu = fake_sys(tmp_path)
    tree: Hierarchy
    if mode == "v1-cpuset":
        tree, line, tasks = V1Cpuset(root, "/", sys_cpu), "3:cpuset:/node1", "tasks"
        (root / "cpuset.cpus").write_text("0-1\n")
        (root / "node1" / "cpuset.cpus").write_text("1\n")
    else:
        tasks, line = "cgroup.threads", "0::/node1"
        if mode == "v2-cpuset":
            tree = V2Cpuset(root, "/", sys_cpu)
            (root / "cpuset.cpus.effective").write_text("0-1\n")
            (root / "node1" / "cpuset.cpus.effective").write_text("1\n")
        else:
            tree = V2Affinity(root, "/", sys_cpu)
    (root / "node1" / tasks).write_text("101\n102\n")
    (root / "node1" / "cgroup.procs").write_text("101\n")
    (root / "node1" / "job" / tasks).write_text("103\n")
    (root / "node1" / "job" / "cgroup.procs").write_text("103\n")
    return tree, line


MODES = ["v1-cpuset", "v2-cpuset", "v2-affinity"]


@pytest.mark.parametrize("mode", MODES)
def test_sampler_counts_runnable_tasks_of_its_cgroup(tmp_path: Path, mode: str) -> None:
    tree, line = fake_tree(tmp_path, mode)
    proc = fake_proc(tmp_path, {101: "R", 102: "S", 103: "R", 999: "R"}, line)
    s = Sampler(proc=proc, tree=tree)
    assert s.cgroup == tree.root / "node1"
    assert s.cpus == [1]
    assert s.runnable() == 2  # 101 and 103 (in a child cgroup); 999 is another node's
    assert s.cpu_times().busy == 7  # cpu1 only
    assert tree.pids(tree.root / "node1") == [101, 103]


@pytest.mark.parametrize("mode", MODES)
def test_a_running_criu_is_a_moves_cost_not_load(tmp_path: Path, mode: str) -> None:
    tree, line = fake_tree(tmp_path, mode)
    proc = fake_proc(tmp_path, {101: "R", 102: "S", 103: "R"}, line)
    (proc / "103" / "stat").write_text("103 (criu) R 1 2 3\n")
    assert Sampler(proc=proc, tree=tree).runnable() == 1


@pytest.mark.parametrize("mode", MODES)
def test_sampler_at_the_root_uses_the_run_queue(tmp_path: Path, mode: str) -> None:
    tree, line = fake_tree(tmp_path, mode)
    proc = fake_proc(tmp_path, {}, line.replace("/node1", "/"))
    assert tree.own(proc) is None
    assert Sampler(proc=proc, tree=tree).runnable() == 3  # procs_running less the agent itself


def test_on_a_whole_host_only_the_agents_own_running_criu_is_not_load(tmp_path: Path) -> None:
    """The agent (1000, two threads) runs a dump (1001, criu) and a restore's launcher (1002)
    whose holder (1003) runs criu (1004, sleeping); 2000 is somebody else's criu, running."""
    proc = fake_proc(tmp_path, {}, "0::/")
    kids = {1000: {1000: "1001", 1009: "1002"}, 1002: {1002: "1003"}, 1003: {1003: "1004"}}
    for pid, comm, state in [
        (1001, "criu", "R"),
        (1002, "python3", "S"),
        (1003, "python3", "S"),
        (1004, "criu", "S"),
        (2000, "criu", "R"),
    ]:
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} 1 2 3\n")
    for pid, tasks in kids.items():
        for tid, children in tasks.items():
            (proc / str(pid) / "task" / str(tid)).mkdir(parents=True)
            (proc / str(pid) / "task" / str(tid) / "children").write_text(children + " ")
    assert running_criu(1000, proc) == 1
    (proc / "1004" / "stat").write_text("1004 (criu) R 1 2 3\n")
    assert running_criu(1000, proc) == 2
    assert running_criu(1003, proc) == 1


@pytest.mark.parametrize("mode", ["v2-cpuset", "v2-affinity"])
def test_a_v2_cgroup_with_all_the_hosts_cpus_is_a_whole_host(tmp_path: Path, mode: str) -> None:
    """An agent run as a service sits in its unit's cgroup: that is no node of a test bed."""
    tree, _ = fake_tree(tmp_path, mode)
    (tree.root / "node1" / "cpuset.cpus.effective").write_text("0-1\n")
    proc = fake_proc(tmp_path, {}, "0::/node1", allowed="0-1")
    assert tree.own(proc) is None


def test_detect_prefers_a_real_cpuset_and_falls_back_to_affinity(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "cpuset", tmp_path / "unified"
    v1.mkdir()
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("hugetlb\n")
    hybrid = HYBRID.format(v1=v1, v2=v2)
    assert [m.version for m in parse_mountinfo(hybrid)] == [1, 1, 2]
    assert cgroup_mode(hybrid) == "v1-cpuset"
    assert detect(hybrid).root == v1
    only_v2 = "\n".join(ln for ln in hybrid.splitlines() if "cpuset" not in ln)
    assert cgroup_mode(only_v2) == "v2-affinity"
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cgroup_mode(hybrid) == "v2-cpuset"
    assert cgroup_mode("") == "none"
    assert isinstance(detect(""), NoCgroups)


def test_v2_cpuset_create_delegates_down_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    for f, text in [
        ("cgroup.subtree_control", ""),
        ("cpuset.mems.effective", "0\n"),
    ]:
        (root / f).write_text(text)
    tree = V2Cpuset(root, "/", fake_sys(tmp_path))
    path = tree.create("pmx-bed/node1", [1])
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset"
    assert (root / "pmx-bed" / "cgroup.subtree_control").read_text() == "+cpuset"
    assert (path / "cpuset.cpus").read_text() == "1"
    assert (path / "cpuset.mems").read_text() == "0"
    assert tree.join_script(path, [1]) == f"echo $$ > {path}/cgroup.procs"


def test_join_scripts_move_the_shell_and_confine_it(tmp_path: Path) -> None:
    sys_cpu = fake_sys(tmp_path)
    v1 = V1Cpuset(tmp_path, "/", sys_cpu)
    assert v1.join_script(tmp_path / "n", [0]) == f"echo $$ > {tmp_path}/n/tasks"
    aff = V2Affinity(tmp_path, "/", sys_cpu)
    assert aff.join_script(tmp_path / "n", [0, 1]) == (
        f"echo $$ > {tmp_path}/n/cgroup.procs && taskset -cp 0,1 $$ >/dev/null"
    )
    aff.create("pmx-x-node1", [1])
    assert aff.find("pmx-x-node") == [tmp_path / "pmx-x-node1"]


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-2,5\n") == [0, 1, 2, 5]
    assert parse_cpu_list("") == []


def test_a_mode_can_be_asked_for(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "cpuset", tmp_path / "unified"
    v1.mkdir()
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("hugetlb\n")
    hybrid = HYBRID.format(v1=v1, v2=v2)
    assert detect(hybrid, want="v2-affinity").root == v2
    assert detect(hybrid, want="").mode == "v1-cpuset"
    assert detect(hybrid, want="none").mode == "none"
    with pytest.raises(CgroupError, match="no such hierarchy"):
        detect(hybrid, want="v2-cpuset")
    with pytest.raises(CgroupError, match="not a mode"):
        detect(hybrid, want="v3")
