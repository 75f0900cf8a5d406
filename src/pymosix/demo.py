"""``pymosix demo``: the seed's section 5 replayed on a test bed, every step checked.

Each command is printed as a user would type it at a node's prompt, followed by what it shows.
Each step waits (with a deadline) for the state the seed describes; if it does not come, the demo
stops, names the step, and exits non-zero.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pymosix.errors import PymosixError
from pymosix.testbed import TestBed

#: The seed's perl loop (section 5.3), word for word.
OMTEST = "#!/usr/bin/perl\n$i=1;\nwhile($i) {\n    $i++;\n}\n"


class StepFailed(PymosixError):
    """A step did not reach the state it should."""


@dataclass
class DemoOptions:
    nodes: int = 2
    interactive: bool = False
    keep: bool = False
    name: str = "demo"
    #: How long a step may wait for the cluster to get where the seed says it gets.
    step_timeout_s: float = 30.0
    agent_args: Sequence[str] = ()
    out: Callable[[str], None] = field(default=print)


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with suppress(PymosixError, OSError, ValueError, KeyError, subprocess.SubprocessError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise StepFailed(f"no {what} within {timeout_s:.0f} s")
        time.sleep(0.2)


class Demo:
    """The walk-through; `run()` returns the exit status."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.step = "set up the test bed"
        self.bed: TestBed | None = None
        self.jobs: list[subprocess.Popen[bytes]] = []
        #: Written on node1 only, in its private /tmp, as the seed does on its first machine.
        self.script = Path("/tmp/omtest.sh")

    # --- plumbing ------------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        self.opts.out(text)

    def begin(self, step: str, narration: str) -> None:
        if self.opts.interactive and sys.stdin.isatty() and self.step != "set up the test bed":
            input("\n  [Enter for the next step] ")
        self.step = step
        self.say(f"\n== {step} ==")
        for line in narration.splitlines():
            self.say(f"   {line}")
        self.say()

    @property
    def b(self) -> TestBed:
        assert self.bed is not None
        return self.bed

    def on(self, node: int, *argv: str, show: bool = True) -> str:
        """A command at node N's prompt; its output shown as the user would see it."""
        if show:
            self.say(f"[root@node{node} root]# {shlex.join(argv)}")
        r = self.b.exec(node, argv, timeout_s=60)
        if show:
            for line in (r.stdout + r.stderr).rstrip("\n").splitlines():
                self.say(line)
        if r.returncode != 0:
            raise StepFailed(
                f"'{shlex.join(argv)}' on node{node} exited {r.returncode}: {r.stderr.strip()}"
            )
        return r.stdout

    def ask(self, node: int, op: str) -> Any:
        """What the node's agent says, asked from outside the node: checks add no load there."""
        return self.b.call(node, op)

    def map_ids(self, node: int) -> list[int]:
        return [int(n["node_id"]) for n in self.ask(node, "map")["nodes"]]

    def has_nodes(self, node: int, n: int) -> bool:
        return len(self.map_ids(node)) == n

    def start_agent(self, node: int) -> None:
        try:
            self.b.start_agent(node, timeout_s=self.opts.step_timeout_s)
        except PymosixError as e:
            raise StepFailed(str(e)) from None

    # --- the walk-through ----------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.walk()
        except (StepFailed, PymosixError) as e:
            self.say(f"\ndemo: step '{self.step}' failed: {e}")
            return 1
        except KeyboardInterrupt:
            self.say(f"\ndemo: interrupted at step '{self.step}'")
            return 130
        finally:
            self.teardown()
        self.say("\ndemo: every step reached the state the seed describes.")
        return 0

    def walk(self) -> None:
        o = self.opts
        n = o.nodes
        self.say(f"pymosix demo: the 'Instant openMosix' walk-through (section 5) on {n} nodes.")
        # One machine's CPUs are one speed: the seed's nodes were alike. Measured at start, two
        # nodes could read apart when something else runs on one CPU, and the split be 3+1.
        self.bed = TestBed.up(
            nodes=n, name=o.name, agents=[], extra_args=["--set", "speed=10000", *o.agent_args]
        )
        self.say(
            f"Test bed '{o.name}': each node is a network namespace with its own CPU, on one bridge."
        )
        for node in self.b.nodes:
            self.say(f"   {node.name}  {node.address}  CPU {','.join(map(str, node.cpus))}")

        self.begin(
            "5.2 boot node1 alone", "Boot the first node and look at its map: one node, itself."
        )
        self.start_agent(1)
        wait_for("map on node1", lambda: self.map_ids(1) == [0x640B], o.step_timeout_s)
        self.on(1, "showmap")

        self.begin(
            "5.2 boot node2 alone", "Shut down node1, boot node2: again one node, the local node."
        )
        self.b.stop_agent(1)
        self.start_agent(2)
        wait_for("map on node2", lambda: self.map_ids(2) == [0x640C], o.step_timeout_s)
        self.on(2, "showmap")

        self.begin(
            "5.2 both nodes up",
            "Boot node1 again, leaving node2 alone: they find each other by themselves.\n"
            "node2's console shows the change in the seed's words.",
        )
        for i in [1, *range(3, n + 1)]:
            self.start_agent(i)
        for i in range(1, n + 1):
            wait_for(f"{n}-node map on node{i}", partial(self.has_nodes, i, n), o.step_timeout_s)
        self.show_console(2, n)
        self.on(1, "showmap")
        self.say()
        self.on(2, "showmap")
        if self.map_ids(1)[0] != 0x640B or self.map_ids(2)[0] != 0x640C:
            raise StepFailed("showmap does not list the local node first")

        self.begin(
            "5.3 test the cluster",
            "Four copies of the seed's CPU-hungry perl loop, started on node1,\n"
            "spread over the nodes by themselves.",
        )
        self.write_script()
        self.say(f"[root@node1 root]# cat {self.script}")
        self.say(OMTEST.rstrip())
        self.say(f"[root@node1 root]# chmod 755 {self.script}")
        for k in range(1, 5):
            self.say(f"[root@node1 root]# mosrun {self.script} &")
            self.jobs.append(
                self.b.popen(
                    1,
                    ["mosrun", str(self.script)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.say(f"[{k}] {self.jobs[-1].pid}")
        wait_for("four jobs", lambda: len(self.ask(1, "jobs")["jobs"]) == 4, o.step_timeout_s)

        self.begin(
            "5.3 the load spreads",
            "The agents gossip their loads; the busy node sends work to the idle one.",
        )
        want = max(1, 4 // n)

        def spread() -> bool:
            where: dict[int, int] = {}
            for job in self.ask(1, "jobs")["jobs"]:
                where[int(job["node"])] = where.get(int(job["node"]), 0) + 1
            return len(where) == min(n, 4) and max(where.values()) <= want + (1 if 4 % n else 0)

        wait_for("even spread of the four loops", spread, o.step_timeout_s)

        def even() -> bool:
            loads = [float(r["load"]) for r in self.ask(1, "loads")["nodes"] if r.get("up")]
            return len(loads) == n and max(loads) - min(loads) < 0.8

        wait_for("even load in mosmon", even, o.step_timeout_s)
        self.on(1, "mosmon", "--once")
        self.say()
        self.on(1, "mps")
        self.say()
        self.on(2, "mps")

    def show_console(self, node: int, n: int) -> None:
        log = self.b.node(node).log.read_text(errors="replace").splitlines()
        marker = f"(of {n} configured)"
        starts = [i for i, ln in enumerate(log) if "configuration changed" in ln and marker in ln]
        if not starts:
            raise StepFailed(f"node{node} logged no 'configuration changed ... {marker}'")
        self.say(f"node{node}'s console:")
        for ln in log[starts[-1] : starts[-1] + n + 1]:
            self.say("  " + ln.split("] ", 1)[-1])
        self.say()

    def write_script(self) -> None:
        """The seed's loop in node1's /tmp; node2 never has it, as on two machines."""
        r = self.b.exec(
            1, ["sh", "-c", 'cat > "$1" && chmod 755 "$1"', "sh", str(self.script)], input=OMTEST
        )
        if r.returncode != 0:
            raise StepFailed(f"could not write {self.script} on node1: {r.stderr.strip()}")

    def teardown(self) -> None:
        for p in self.jobs:
            with suppress(ProcessLookupError):
                p.kill()
            with suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        if self.bed is None:
            with suppress(PymosixError, OSError):
                TestBed.load(self.opts.name).down()
            return
        if self.opts.keep:
            self.say(
                f"\nThe test bed is still up. Try: pymosix testbed exec --name {self.opts.name} node1 -- mosmon"
            )
            self.say(f"Take it down with: pymosix testbed down --name {self.opts.name}")
            return
        self.say("\n== tear-down ==")
        self.bed.down()
        self.say(
            f"test bed '{self.opts.name}' is down: no namespace, link, cgroup or process is left."
        )
