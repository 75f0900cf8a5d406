"""The cgroup tree behind one interface, whichever the host mounts: v1 cpuset, or the unified v2.

Three modes, chosen by what is mounted (`detect`), best confinement first:

- ``v2-cpuset``: cgroup v2 with the cpuset controller: ``+cpuset`` is enabled in
  ``cgroup.subtree_control`` down the path, a node's CPUs are its ``cpuset.cpus``;
- ``v1-cpuset``: a cgroup v1 hierarchy with the cpuset controller (this machine);
- ``v2-affinity``: cgroup v2 without a cpuset controller (a stock host without delegation, or the
  private cgroup2 mount the tests use): the cgroup only groups a node's processes, and their CPUs
  are confined by CPU affinity, which children inherit and CRIU does not restore (so a restored
  job takes the affinity of the agent that restores it).

``none`` means no usable hierarchy: nothing can be confined. A node is *confined* when its
process sits in a cgroup below the root whose CPUs are not all the host's: then the node's CPUs and
tasks are that cgroup's, else the host's (an agent installed as a service is a whole host).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pymosix.errors import PymosixError

MODES = ("v2-cpuset", "v1-cpuset", "v2-affinity", "none")
PROC = Path("/proc")
SYS_CPU = Path("/sys/devices/system/cpu")


class CgroupError(PymosixError):
    """A cgroup could not be made or joined; the message says which file and why."""


def parse_cpu_list(text: str) -> list[int]:
    """``0-2,5`` -> [0, 1, 2, 5]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    return out


def format_cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise CgroupError(f"cannot write {text.strip()!r} to {path}: {e.strerror}") from None


def online_cpus(sys_cpu: Path = SYS_CPU) -> list[int]:
    return parse_cpu_list(_read(sys_cpu / "online")) or list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Mount:
    """One cgroup mount from mountinfo: where it is, its root in the hierarchy, v1 options."""

    point: Path
    root: str
    version: int
    options: frozenset[str]


def parse_mountinfo(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 5 or len(r) < 3 or r[0] not in ("cgroup", "cgroup2"):
            continue
        point = Path(f[4].replace("\\040", " "))
        out.append(Mount(point, f[3], 2 if r[0] == "cgroup2" else 1, frozenset(r[2].split(","))))
    return out


class Hierarchy:
    """A mounted hierarchy the bed and the sampler use; subclasses are the modes."""

    mode = "none"
    tasks_file = "cgroup.threads"

    def __init__(self, root: Path, mount_root: str = "/", sys_cpu: Path = SYS_CPU) -> None:
        self.root = root
        self.mount_root = mount_root
        self.sys_cpu = sys_cpu

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # --- this process's own cgroup (the sampler) ------------------------------------------

    def own_path(self, proc: Path = PROC) -> str:
        """This process's cgroup path in the hierarchy from /proc/self/cgroup; "" if unknown."""
        for line in _read(proc / "self" / "cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            if self._is_own_line(controllers):
                return path
        return ""

    def _is_own_line(self, controllers: str) -> bool:
        return controllers == ""  # the v2 line, "0::/path"

    def own(self, proc: Path = PROC) -> Path | None:
        """The cgroup that confines this process (its node's), or None if it is a whole host."""
        path = self.own_path(proc)
        if self.mount_root != "/" and path.startswith(self.mount_root):
            path = path[len(self.mount_root) :]
        if path in ("", "/"):
            return None
        d = self.root / path.lstrip("/")
        if not d.is_dir():
            return None
        return d if set(self.cpus(d, proc)) < set(self.host_cpus()) else None

    # --- what a cgroup holds ----------------------------------------------------------------

    def cpus(self, cgroup: Path, proc: Path = PROC) -> list[int]:
        """The CPUs of a node in this cgroup."""
        raise NotImplementedError

    def host_cpus(self) -> list[int]:
        return online_cpus(self.sys_cpu)

    def tids(self, cgroup: Path) -> set[int]:
        """Every thread in the cgroup and below."""
        return self._ids(cgroup, self.tasks_file)

    def pids(self, cgroup: Path) -> list[int]:
        """Every process in the cgroup and below."""
        return sorted(self._ids(cgroup, "cgroup.procs"))

    @staticmethod
    def _ids(cgroup: Path, name: str) -> set[int]:
        out: set[int] = set()
        for f in cgroup.rglob(name) if cgroup.is_dir() else ():
            try:
                out.update(int(t) for t in f.read_text().split())
            except (OSError, ValueError):
                continue
        return out

    # --- making, joining, listing, removing (the test bed) ---------------------------------

    def path(self, name: str) -> Path:
        return self.root / name

    def create(self, name: str, cpus: list[int]) -> Path:
        """A cgroup for a node with these CPUs (its confinement, if the mode has one)."""
        path = self.path(name)
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot make cgroup {path}: {e.strerror}") from None
        return path

    def join_script(self, cgroup: Path, cpus: list[int]) -> str:
        """Shell commands that move the shell ($$) into the cgroup and confine it to `cpus`;
        what it then execs, and that forks, inherits both."""
        return f"echo $$ > {cgroup / 'cgroup.procs'}"

    def find(self, prefix: str) -> list[Path]:
        try:
            return sorted(p for p in self.root.glob(prefix + "*") if p.is_dir())
        except OSError:
            return []

    def kill(self, cgroup: Path) -> None:
        """Ask the kernel to kill everything in it, where it can (v2's cgroup.kill)."""


class V1Cpuset(Hierarchy):
    mode = "v1-cpuset"
    tasks_file = "tasks"

    def _is_own_line(self, controllers: str) -> bool:
        return "cpuset" in controllers.split(",")

    def own(self, proc: Path = PROC) -> Path | None:
        # A v1 cpuset below the root is a confinement whatever its CPUs (as before v2 support).
        path = self.own_path(proc)
        if path in ("", "/"):
            return None
        d = self.root / path.lstrip("/")
        return d if d.is_dir() else None

    def cpus(self, cgroup: Path, proc: Path = PROC) -> list[int]:
        return parse_cpu_list(_read(cgroup / "cpuset.cpus"))

    def host_cpus(self) -> list[int]:
        return parse_cpu_list(_read(self.root / "cpuset.cpus")) or super().host_cpus()

    def create(self, name: str, cpus: list[int]) -> Path:
        path = super().create(name, cpus)
        _write(path / "cpuset.cpus", format_cpu_list(cpus))
        _write(path / "cpuset.mems", _read(self.root / "cpuset.mems").strip())
        return path

    def join_script(self, cgroup: Path, cpus: list[int]) -> str:
        return f"echo $$ > {cgroup / 'tasks'}"


class V2Cpuset(Hierarchy):
    mode = "v2-cpuset"

    def cpus(self, cgroup: Path, proc: Path = PROC) -> list[int]:
        return parse_cpu_list(_read(cgroup / "cpuset.cpus.effective"))

    def host_cpus(self) -> list[int]:
        return parse_cpu_list(_read(self.root / "cpuset.cpus.effective")) or super().host_cpus()

    def create(self, name: str, cpus: list[int]) -> Path:
        # A controller reaches a cgroup only if every ancestor enables it for its children.
        parent = self.root
        for part in Path(name).parts[:-1]:
            self._delegate(parent)
            parent = parent / part
            parent.mkdir(exist_ok=True)
        self._delegate(parent)
        path = super().create(name, cpus)
        _write(path / "cpuset.cpus", format_cpu_list(cpus))
        _write(path / "cpuset.mems", _read(self.root / "cpuset.mems.effective").strip())
        return path

    @staticmethod
    def _delegate(cgroup: Path) -> None:
        if "cpuset" not in _read(cgroup / "cgroup.subtree_control").split():
            _write(cgroup / "cgroup.subtree_control", "+cpuset")

    def kill(self, cgroup: Path) -> None:
        _kill_v2(cgroup)


class V2Affinity(Hierarchy):
    mode = "v2-affinity"

    def cpus(self, cgroup: Path, proc: Path = PROC) -> list[int]:
        # No cpuset here: the node's CPUs are its processes' affinity (ours, if we are one).
        pids = self.pids(cgroup)
        mine = ["self"] if os.getpid() in pids else []
        for who in [*mine, *map(str, pids), "self"]:
            for line in _read(proc / who / "status").splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    return parse_cpu_list(line.split(":", 1)[1])
        return sorted(os.sched_getaffinity(0))

    def join_script(self, cgroup: Path, cpus: list[int]) -> str:
        return (
            f"{super().join_script(cgroup, cpus)} && "
            f"taskset -cp {format_cpu_list(cpus)} $$ >/dev/null"
        )

    def kill(self, cgroup: Path) -> None:
        _kill_v2(cgroup)


class NoCgroups(Hierarchy):
    mode = "none"

    def own(self, proc: Path = PROC) -> Path | None:
        return None

    def cpus(self, cgroup: Path, proc: Path = PROC) -> list[int]:
        return self.host_cpus()

    def create(self, name: str, cpus: list[int]) -> Path:
        raise CgroupError(
            "no cgroup hierarchy is mounted (mount cgroup2 on /sys/fs/cgroup, or a v1 cpuset)"
        )

    def find(self, prefix: str) -> list[Path]:
        return []


def _kill_v2(cgroup: Path) -> None:
    for d in sorted(cgroup.rglob("cgroup.kill"), key=lambda p: -len(p.parts)):
        try:
            d.write_text("1")
        except OSError:
            continue


def hierarchies(mountinfo: str | None = None, sys_cpu: Path = SYS_CPU) -> list[Hierarchy]:
    """Every usable hierarchy mounted here, the one `detect` picks first."""
    if mountinfo is None:
        mountinfo = _read(PROC / "self" / "mountinfo")
    v2_cpuset: list[Hierarchy] = []
    v1: list[Hierarchy] = []
    v2: list[Hierarchy] = []
    seen: set[Path] = set()
    for m in parse_mountinfo(mountinfo):
        if m.point in seen:
            continue
        seen.add(m.point)
        if m.version == 1 and "cpuset" in m.options:
            v1.append(V1Cpuset(m.point, m.root, sys_cpu))
        elif m.version == 2:
            has = "cpuset" in _read(m.point / "cgroup.controllers").split()
            (v2_cpuset if has else v2).append(
                (V2Cpuset if has else V2Affinity)(m.point, m.root, sys_cpu)
            )

    # The standard place first among mounts of one kind (a hybrid host mounts v2 at .../unified).
    def key(h: Hierarchy) -> bool:
        return h.root != Path("/sys/fs/cgroup")

    return sorted(v2_cpuset, key=key) + sorted(v1, key=key) + sorted(v2, key=key)


#: Names a mode to use instead of the best one mounted (a hybrid host can run the v2 paths).
MODE_ENV = "PYMOSIX_CGROUP_MODE"


def detect(
    mountinfo: str | None = None, sys_cpu: Path = SYS_CPU, want: str | None = None
) -> Hierarchy:
    """The hierarchy to use here: real cpuset confinement first, else v2 with affinity; or the
    mode `want` (default: $PYMOSIX_CGROUP_MODE), which must be mounted."""
    found = hierarchies(mountinfo, sys_cpu)
    want = os.environ.get(MODE_ENV, "") if want is None else want
    if want:
        if want not in MODES:
            raise CgroupError(f"{MODE_ENV}={want}: not a mode (one of {', '.join(MODES)})")
        found = [h for h in found if h.mode == want]
        if not found and want != "none":
            raise CgroupError(f"{MODE_ENV}={want}: no such hierarchy is mounted here")
    return found[0] if found else NoCgroups(Path("/nonexistent"), "/", sys_cpu)


def cgroup_mode(mountinfo: str | None = None) -> str:
    """``v1-cpuset``, ``v2-cpuset``, ``v2-affinity`` or ``none``: what the test bed and the load
    sampler use on this host (for `pymosix doctor`)."""
    return detect(mountinfo).mode
