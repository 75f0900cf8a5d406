"""TestBed: nodes node1..nodeN at 192.168.100.(10+i)/24, one network namespace each on one
bridge, each with its own CPU(s) through a cgroup (a cpuset, or CPU affinity where cgroup v2
has no cpuset controller: `pymosix.cgroups`), its own mount namespace (private /tmp, /var/tmp and
/dev/shm: see testbed/mounts.py), its own state directory and agent, all sharing
one generated cluster key (DESIGN.md §4).

What separate machines share through NFS, bed nodes share as one file system: every path
outside the private directories is the same on all nodes, and ``shared_dir`` (world-writable,
``/run/pymosix-testbed/BED/shared``) is the place the bed offers for job data, the stand-in for
a cluster's NFS export. Unprivileged users reach every node's control socket (the state
directories can be traversed, not read) and run commands with ``exec(..., user=NAME)``.

Every kernel object is named after the bed (netns ``pmx-BED-nodeI``, links ``pmx<tag>...``,
cpusets ``pmx-BED-nodeI``) so that beds of parallel test runs never meet, and the state lives in
``/run/pymosix-testbed/BED/bed.json`` so that any process can find, use and take down a bed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pymosix import cgroups
from pymosix.control_client import call
from pymosix.errors import PymosixError
from pymosix.keys import write_key
from pymosix.migration.engine import remove_images_of
from pymosix.testbed import cpuquota, kernel, mounts
from pymosix.testbed.kernel import ip

ROOT = Path("/run/pymosix-testbed")
#: Agents this process started, kept so they are reaped (and Popen does not warn) when killed.
_started: dict[int, subprocess.Popen[bytes]] = {}
SUBNET = "192.168.100"
PREFIX = "pmx"


def bed_tag(name: str) -> str:
    """A short tag for link names, which the kernel limits to 15 characters."""
    return hashlib.sha1(name.encode()).hexdigest()[:5]


def check_name(name: str) -> str:
    if not name or len(name) > 24 or not all(c.isalnum() or c in "-_" for c in name):
        raise PymosixError(f"bed name {name!r}: use up to 24 letters, digits, '-' or '_'")
    return name


@dataclass
class BedNode:
    """One node of the bed."""

    index: int
    name: str
    address: str
    netns: str
    veth: str
    cpus: list[int]
    cpuset: str
    dir: str
    agent_pid: int = 0
    #: The nsfs file of the node's mount namespace (testbed/mounts.py).
    mntns: str = ""

    @property
    def socket(self) -> Path:
        return Path(self.dir) / "control.sock"

    @property
    def log(self) -> Path:
        return Path(self.dir) / "agent.log"

    @property
    def node_id(self) -> int:
        return (100 << 8) | (10 + self.index)


class TestBed:
    """A running (or half-made) bed; `up()` makes one, `load()` finds one, `down()` removes it."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        name: str,
        nodes: list[BedNode],
        bridge: str,
        key_file: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.nodes = nodes
        self.bridge = bridge
        self.key_file = key_file
        self.extra_args = list(extra_args)

    # --- making and finding ----------------------------------------------------------------

    @classmethod
    def up(
        cls,
        nodes: int = 2,
        name: str = "pymosix",
        cpus_per_node: int = 1,
        agents: Sequence[int] | None = None,
        extra_args: Sequence[str] = (),
        timeout_s: float = 30.0,
    ) -> TestBed:
        """Make the bed (cleaning leftovers of the same name first) and start the agents."""
        check_name(name)
        if not 1 <= nodes <= 200:
            raise PymosixError("a test bed has 1 to 200 nodes")
        if os.geteuid() != 0:
            raise PymosixError("the test bed needs root (network namespaces, cgroups)")
        # pymosix itself (a venv, a clone) under /tmp stays visible inside the nodes.
        keep = mounts.kept([Path(sys.prefix), Path(__file__).resolve().parents[3]])
        down(name)
        tag = bed_tag(name)
        state = ROOT / name
        # Traversable, not listable: users reach the sockets inside, not the key.
        ROOT.mkdir(mode=0o711, exist_ok=True)
        os.chmod(ROOT, 0o711)
        state.mkdir(mode=0o711)
        (state / "shared").mkdir(mode=0o1777)
        os.chmod(state / "shared", 0o1777)
        key_file = state / "cluster.key"
        write_key(key_file)
        host = kernel.host_cpus()
        bed_nodes = []
        for i in range(1, nodes + 1):
            first = ((i - 1) * cpus_per_node) % len(host)
            cpus = sorted({host[(first + k) % len(host)] for k in range(cpus_per_node)})
            bed_nodes.append(
                BedNode(
                    index=i,
                    name=f"node{i}",
                    address=f"{SUBNET}.{10 + i}",
                    netns=f"{PREFIX}-{name}-node{i}",
                    veth=f"{PREFIX}{tag}n{i}",
                    cpus=cpus,
                    cpuset=f"{PREFIX}-{name}-node{i}",
                    dir=str(state / f"node{i}"),
                    mntns=str(mounts.holder(f"{PREFIX}-{name}-node{i}")),
                )
            )
        bed = cls(name, bed_nodes, f"{PREFIX}b{tag}", key_file, extra_args)
        bed.save()
        try:
            bed._make_network()
            for node in bed.nodes:
                Path(node.dir).mkdir(mode=0o711, exist_ok=True)
                kernel.cgroup_tree().create(node.cpuset, node.cpus)
                mounts.make_mount_ns(Path(node.mntns).name, keep)
            for i in agents if agents is not None else range(1, nodes + 1):
                bed.start_agent(i, wait=False)
            for i in agents if agents is not None else range(1, nodes + 1):
                bed.wait_ready(i, timeout_s)
        except BaseException:
            bed.down()
            raise
        return bed

    @classmethod
    def load(cls, name: str = "pymosix") -> TestBed:
        path = ROOT / check_name(name) / "bed.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PymosixError(
                f"no test bed named {name!r} is up (pymosix testbed up --name {name})"
            ) from None
        except (OSError, ValueError) as e:
            raise PymosixError(
                f"{path}: unreadable bed state ({e}); 'pymosix testbed down --name {name}' cleans up"
            ) from None
        return cls(
            name,
            [BedNode(**n) for n in data["nodes"]],
            data["bridge"],
            Path(data["key_file"]),
            data.get("extra_args", []),
        )

    def save(self) -> None:
        data = {
            "name": self.name,
            "bridge": self.bridge,
            "key_file": str(self.key_file),
            "extra_args": self.extra_args,
            "nodes": [asdict(n) for n in self.nodes],
        }
        path = ROOT / self.name / "bed.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    def __enter__(self) -> TestBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _make_network(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        # Snooping off: with no IGMP querier on the bridge, snooping would drop discovery.
        ip("link", "set", self.bridge, "type", "bridge", "mcast_snooping", "0")
        ip("link", "set", self.bridge, "up")
        for n in self.nodes:
            ip("netns", "add", n.netns)
            ip("link", "add", n.veth, "type", "veth", "peer", "name", n.veth + "p")
            ip("link", "set", n.veth + "p", "netns", n.netns)
            ip("-n", n.netns, "link", "set", n.veth + "p", "name", "eth0")
            ip("link", "set", n.veth, "master", self.bridge)
            ip("link", "set", n.veth, "up")
            ip("-n", n.netns, "addr", "add", f"{n.address}/24", "dev", "eth0")
            ip("-n", n.netns, "link", "set", "lo", "up")
            ip("-n", n.netns, "link", "set", "eth0", "up")
            ip("-n", n.netns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    # --- nodes -----------------------------------------------------------------------------

    def node(self, which: int | str) -> BedNode:
        """A node by index (1-based), by name (``node2``) or by address."""
        for n in self.nodes:
            if which in (n.index, n.name, n.address, str(n.index)):
                return n
        raise PymosixError(
            f"no node {which!r} in test bed {self.name!r} (it has node1..node{len(self.nodes)})"
        )

    @property
    def shared_dir(self) -> Path:
        """The directory every node sees alike: the bed's stand-in for NFS."""
        return ROOT / self.name / "shared"

    def _enter(self, node: BedNode, user: str | None = None, cwd: str | None = None) -> list[str]:
        """argv prefix that runs the rest inside the node: its netns, mount namespace and
        cgroup and CPUs, as `user` if given (root otherwise).

        nsenter rather than `ip netns exec`, which remounts /sys and so hides the cgroup tree that
        the agent's load sampler reads. Entering a mount namespace moves to its root, so the
        working directory is set again: `cwd`, else the caller's, unless the node cannot see it.
        """
        tree = kernel.cgroup_tree()
        join = tree.join_script(tree.path(node.cpuset), node.cpus)
        wd = cwd or os.getcwd()
        if any(wd == d or wd.startswith(d + "/") for d in mounts.PRIVATE_DIRS):
            wd = "/"
        # cd from inside: nsenter's --wd opens the directory before it enters the namespace,
        # which leaves the cwd outside the node's root (getcwd() fails for the command).
        # A node slowed by cpuquota.set_cpu_quota has a cpu cgroup too: join it as well.
        cpu = cpuquota.CPU / node.cpuset
        quota = f"{{ [ ! -d {cpu} ] || echo $$ > {cpu}/tasks; }}"
        script = f'cd {shlex.quote(wd)} 2>/dev/null || cd /; {join} && {quota} && exec "$@"'
        enter = ["nsenter", f"--net=/run/netns/{node.netns}"]
        if node.mntns:
            enter.append(f"--mount={node.mntns}")
        argv = [*enter, "--", "sh", "-c", script, "sh"]
        if user is not None:
            pw = _user(user)
            argv += [
                "setpriv",
                f"--reuid={pw.pw_uid}",
                f"--regid={pw.pw_gid}",
                "--init-groups",
                "--",
            ]
        return argv

    def env(self, node: BedNode, user: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYMOSIX_SOCKET"] = str(node.socket)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/bin:/bin")
        if user is not None:
            pw = _user(user)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
        return env

    def exec_argv(
        self,
        which: int | str,
        argv: Sequence[str],
        user: str | None = None,
        cwd: str | None = None,
    ) -> list[str]:
        return [*self._enter(self.node(which), user, cwd), *argv]

    def exec(
        self,
        which: int | str,
        argv: Sequence[str],
        timeout_s: float = 60.0,
        check: bool = False,
        user: str | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the node (as `user`, if given), with the tools pointed at its agent;
        capture its output."""
        node = self.node(which)
        return subprocess.run(
            self.exec_argv(node.index, argv, user, kw.pop("cwd", None)),
            env=self.env(node, user),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
            **kw,
        )

    def popen(
        self, which: int | str, argv: Sequence[str], user: str | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """Start argv inside the node (as `user`, if given) in the background."""
        node = self.node(which)
        return subprocess.Popen(
            self.exec_argv(node.index, argv, user, kw.pop("cwd", None)),
            env=self.env(node, user),
            **kw,
        )

    def call(self, which: int | str, op: str, **args: Any) -> dict[str, Any]:
        return call(op, path=self.node(which).socket, timeout_s=10, **args)

    # --- agents ----------------------------------------------------------------------------

    def agent_argv(self, node: BedNode) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pymosix",
            "node",
            "--address",
            node.address,
            "--interface",
            "eth0",
            "--key-file",
            str(self.key_file),
            "--state-dir",
            str(Path(node.dir) / "state"),
            "--socket",
            str(node.socket),
            *self.extra_args,
        ]

    def start_agent(self, which: int | str, wait: bool = True, timeout_s: float = 30.0) -> None:
        node = self.node(which)
        if self.agent_alive(node):
            return
        with node.log.open("ab") as logf:
            proc = subprocess.Popen(
                self.exec_argv(node.index, self.agent_argv(node)),
                env=self.env(node),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=logf,
                start_new_session=True,
            )
        node.agent_pid = proc.pid
        _started[proc.pid] = proc
        self.save()
        if wait:
            self.wait_ready(node.index, timeout_s)

    def wait_ready(self, which: int | str, timeout_s: float = 30.0) -> None:
        node = self.node(which)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(PymosixError, OSError):
                self.call(node.index, "status")
                return
            if not self.agent_alive(node):
                tail = (
                    node.log.read_text(errors="replace").strip().splitlines()[-3:]
                    if node.log.exists()
                    else []
                )
                raise PymosixError(
                    f"the agent of {node.name} exited: {' / '.join(tail) or 'no log'}"
                )
            if time.monotonic() > deadline:
                raise PymosixError(
                    f"the agent of {node.name} did not answer within {timeout_s:.0f} s (log: {node.log})"
                )
            time.sleep(0.05)

    def wait_converged(self, timeout_s: float = 10.0) -> None:
        """Until every running agent's map lists every running node."""
        running = [n for n in self.nodes if self.agent_alive(n)]
        want = {n.node_id for n in running}
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(PymosixError, OSError):
                if all(
                    {m["node_id"] for m in self.call(n.index, "map")["nodes"]} == want
                    for n in running
                ):
                    return
            if time.monotonic() > deadline:
                raise PymosixError(f"the maps did not converge within {timeout_s:.0f} s")
            time.sleep(0.05)

    def agent_alive(self, node: BedNode) -> bool:
        if not node.agent_pid:
            return False
        try:
            state = Path(f"/proc/{node.agent_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(node.agent_pid, os.WNOHANG)
            return False
        return True

    def stop_agent(self, which: int | str, timeout_s: float = 10.0) -> None:
        """Clean shutdown (SIGTERM): the agent announces its leave."""
        node = self.node(which)
        if self.agent_alive(node):
            os.kill(node.agent_pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while self.agent_alive(node) and time.monotonic() < deadline:
                time.sleep(0.02)
        self.kill_agent(which)

    def kill_agent(self, which: int | str) -> None:
        """A crash (SIGKILL): no leave is announced."""
        node = self.node(which)
        if node.agent_pid and self.agent_alive(node):
            kernel.kill_pids([node.agent_pid])
            with contextlib.suppress(ChildProcessError):
                os.waitpid(node.agent_pid, os.WNOHANG)
            self._remove_images_of(node, node.agent_pid)
        node.agent_pid = 0
        self.save()
        _reap()

    def set_faults(self, which: int | str, text: str) -> None:
        """Write the node agent's fault hook (migration/faults.py); "" clears it."""
        path = Path(self.node(which).dir) / "state" / "faults"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def glob(self, which: int | str, pattern: str) -> list[str]:
        """Paths matching a shell pattern as the node sees them (its private /tmp, /dev/shm)."""
        node = self.node(which)
        script = 'for p in $1; do [ -e "$p" ] && echo "$p"; done'
        r = subprocess.run(
            ["nsenter", f"--mount={node.mntns}", "--", "sh", "-c", script, "sh", pattern],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return r.stdout.split()

    def _remove_images_of(self, node: BedNode, agent_pid: int) -> None:
        """A killed agent's images directory, in the node's own /dev/shm."""
        if not node.mntns:
            remove_images_of([agent_pid])
            return
        rm = 'rm -rf /dev/shm/pymosix-*-"$1"'
        subprocess.run(
            ["nsenter", f"--mount={node.mntns}", "--", "sh", "-c", rm, "sh", str(agent_pid)],
            capture_output=True,
            timeout=30,
            check=False,
        )

    # --- status and teardown ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        rows = []
        for n in self.nodes:
            answers = False
            with contextlib.suppress(PymosixError, OSError):
                self.call(n.index, "status")
                answers = True
            rows.append(
                {
                    "node": n.name,
                    "address": n.address,
                    "node_id": n.node_id,
                    "netns": n.netns,
                    "cpus": n.cpus,
                    "agent_pid": n.agent_pid if self.agent_alive(n) else None,
                    "answers": answers,
                    "socket": str(n.socket),
                    "log": str(n.log),
                }
            )
        return {"name": self.name, "bridge": self.bridge, "nodes": rows}

    def down(self) -> None:
        down(self.name)


def down(name: str) -> None:
    """Remove everything a bed of this name made, whether or not it came up whole."""
    check_name(name)
    tag = bed_tag(name)
    ns_prefix = f"{PREFIX}-{name}-node"
    namespaces = [ns for ns in kernel.netns_list() if ns.startswith(ns_prefix)]
    # Every mounted hierarchy: the bed may have been made where another one was in use.
    cgs = [(t, p) for t in cgroups.hierarchies() for p in t.find(f"{PREFIX}-{name}-node")]
    # Processes first (agents, jobs, anything exec'd into a node), then the objects they held.
    killed = []
    for ns in namespaces:
        pids = kernel.netns_pids(ns)
        kernel.kill_pids(pids)
        killed += pids
    remove_images_of(killed)
    for tree, cg in cgs:
        kernel.remove_cgroup(tree, cg)
    cpuquota.remove_cpu_cgroups(f"{PREFIX}-{name}-node")
    for ns in namespaces:
        ip("netns", "delete", ns, check=False)
    for mnt in mounts.mount_namespaces(ns_prefix):
        mounts.remove_mount_ns(mnt)
    for link in kernel.links():
        if link.startswith(f"{PREFIX}{tag}n") or link == f"{PREFIX}b{tag}":
            ip("link", "delete", link, check=False)
    shutil.rmtree(ROOT / name, ignore_errors=True)
    _reap()


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PymosixError(f"no user {name!r} on this machine (useradd {name})") from None


def _reap() -> None:
    """Collect agents of ours that have died."""
    for pid, proc in list(_started.items()):
        if proc.poll() is not None:
            del _started[pid]


def bed_names() -> list[str]:
    """Beds with state on this machine, and names of leftovers without state."""
    names = {p.name for p in ROOT.iterdir() if p.is_dir()} if ROOT.exists() else set()
    for ns in kernel.netns_list() + mounts.mount_namespaces(f"{PREFIX}-"):
        if ns.startswith(f"{PREFIX}-") and "-node" in ns:
            names.add(ns[len(PREFIX) + 1 : ns.rindex("-node")])
    return sorted(names)


@contextlib.contextmanager
def running_bed(**kw: Any) -> Iterator[TestBed]:
    bed = TestBed.up(**kw)
    try:
        yield bed
    finally:
        bed.down()
