"""load.quota: the share of its CPUs a cgroup quota leaves the node, from fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymosix.load.quota import cpu_capacity


def tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    cg = tmp_path / "self_cgroup"
    cg.write_text(proc)
    return cg, root


@pytest.mark.parametrize(
    ("proc", "files", "ncpus", "want"),
    [
        pytest.param("2:cpuacct:/\n1:cpu:/bed1\n0::/\n",
                     {"cpu/bed1/cpu.cfs_quota_us": "5000\n", "cpu/bed1/cpu.cfs_period_us": "10000\n"},
                     1, 0.5, id="v1-half-cpu"),
        pytest.param("3:cpu,cpuacct:/n\n",
                     {"cpu/n/cpu.cfs_quota_us": "-1\n", "cpu/n/cpu.cfs_period_us": "100000\n"},
                     1, 1.0, id="v1-no-quota"),
        pytest.param("0::/job\n", {"job/cpu.max": "50000 100000\n"}, 2, 0.25, id="v2-half-of-two"),
        pytest.param("0::/job\n", {"job/cpu.max": "max 100000\n"}, 1, 1.0, id="v2-max"),
        pytest.param("0::/job\n", {"job/cpu.max": "300000 100000\n"}, 2, 1.0, id="above-all-cpus"),
        pytest.param("1:cpu:/gone\n", {}, 1, 1.0, id="unreadable"),
    ],
)  # fmt: skip
def test_cpu_capacity(
    tmp_path: Path, proc: str, files: dict[str, str], ncpus: int, want: float
) -> None:
    cg, root = tree(tmp_path, proc, files)
    assert cpu_capacity(ncpus, cg, root) == pytest.approx(want)


def test_no_cgroup_file_means_whole_cpus(tmp_path: Path) -> None:
    assert cpu_capacity(1, tmp_path / "missing", tmp_path) == 1.0
