"""Soak: many migrations of a checksum-keeping job among three nodes, faults injected at random;
reports jobs lost, copies doubled, checksum errors and leaks (issue 16 item 7, goal 0 each).

The job prints "I HEX" lines, HEX the running sha256 over 1..I kept in its memory: a line out of
order, missing or repeated, or a hash that does not match, is a checksum error (memory or
stdout broken by a move). Faults, one per move, drawn at random: none; the fault hook dropping
or delaying one protocol message (migration/faults.py); the target's agent frozen (SIGSTOP) for
7 s during the move, or killed (kill -9) and started again; "during": the source holds DONE
back 2 s (the hook) and the target is hit after 1 s; 5 % of the packets every node receives
dropped during the move (iptables in each node's namespace); the target's image directory
(its /dev/shm) too small for the job.
Not here: agent kill -9 where the job runs (it needs item 6's checkpoints).
Usage: python -m bench.soak [--moves 500] [--seed 1]."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import print_table, write_csv
from pymosix.testbed import TestBed, kernel

JOB = (
    "import hashlib, sys, time\n"
    "h = hashlib.sha256()\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    h.update(str(i).encode())\n"
    "    print(i, h.hexdigest(), flush=True)\n"
    "    time.sleep(0.05)\n"
)
NODES = {1: 0x640B, 2: 0x640C, 3: 0x640D}
#: (node the rule goes to: "home", "source" or "target"; the rule)
HOOKS = [
    ("source", "drop DONE"),
    ("home", "drop ATTACH"),
    ("home", "delay ATTACH 8"),
    ("home", "drop COMMITTED once"),
    ("target", "drop RESTORED"),
    ("target", "delay RESTORED 8"),
    ("home", "drop VERDICT once"),
]
FAULTS = ["none", "hook", "freeze target", "kill target", "packet loss", "full target"]
LOSS_RULE = ["INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"]


@dataclass
class Tally:
    moves: int = 0
    ok: int = 0
    lost: int = 0
    doubled: int = 0


class Checker:
    """Reads the job's output and checks every line against its own running hash."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.h = hashlib.sha256()
        self.i = 0
        self.errors = 0
        self.lines: queue.Queue[int] = queue.Queue()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            try:
                n, hexd = line.split()
                i = int(n)
            except ValueError:
                self.errors += 1
                continue
            if i != self.i + 1:
                self.errors += 1
                continue
            self.i = i
            self.h.update(str(i).encode())
            if self.h.hexdigest() != hexd.decode():
                self.errors += 1
            self.lines.put(i)

    def advances(self, timeout_s: float = 20.0) -> bool:
        """True once a new line arrived (the job runs on), within timeout_s."""
        while not self.lines.empty():
            self.lines.get_nowait()
        try:
            self.lines.get(timeout=timeout_s)
            return True
        except queue.Empty:
            return False


copies = kernel.copies_of


def where(bed: TestBed, home_pid: int) -> int | None:
    try:
        rows = bed.call(1, "jobs")["jobs"]
    except Exception:
        return None
    row = next((r for r in rows if r["home_pid"] == home_pid), None)
    return None if row is None else int(row["node"])


def leaked_images(bed: TestBed) -> list[str]:
    return [
        p for i in NODES for d in ("in", "out") for p in bed.glob(i, f"/dev/shm/pymosix-*/{d}-*")
    ]


def one_move(bed: TestBed, rng: random.Random, home_pid: int, fault: str) -> tuple[bool, str]:
    """One move to a random other node under `fault`; (migrate's success, what was done)."""
    now = where(bed, home_pid)
    src = next(i for i, n in NODES.items() if n == now)
    # A frozen or killed home would lose the job by design (nothing outlives its home).
    hit = fault in ("freeze target", "kill target")
    tgt = rng.choice([i for i in NODES if i != src and not (hit and i == 1)] or [src % 3 + 1])
    what = fault
    roles = {"home": 1, "source": src, "target": tgt}
    if fault == "hook":
        role, rule = rng.choice(HOOKS)
        bed.set_faults(roles[role], rule + "\n")
        what = f"{rule} at the {role}"
    elif fault in ("freeze target", "kill target"):
        bed.set_faults(src, "delay DONE 2\n")
    elif fault == "packet loss":
        for i in NODES:
            bed.exec(i, ["iptables", "-w", "-A", *LOSS_RULE], check=True)
    elif fault == "full target":
        bed.exec(tgt, ["mount", "-o", "remount,size=1m", "/dev/shm"], check=True)
    move = bed.popen(
        1,
        ["migrate", str(home_pid), f"0x{NODES[tgt]:x}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if fault in ("freeze target", "kill target"):
        # Mid-move: the source holds DONE back 2 s (the hook), the target is hit after 1 s.
        time.sleep(1.0)
        agent = bed.node(tgt).agent_pid
        if fault == "freeze target":
            os.kill(agent, signal.SIGSTOP)
            time.sleep(7)
            os.kill(agent, signal.SIGCONT)
        else:
            bed.kill_agent(tgt)
    try:
        move.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        what += " (migrate HUNG 60 s)"
    finally:
        if move.poll() is None:
            move.kill()
        move.wait()
    for i in NODES:
        bed.set_faults(i, "")
    if fault == "packet loss":
        for i in NODES:
            bed.exec(i, ["iptables", "-w", "-D", *LOSS_RULE], check=True)
    elif fault == "full target":
        bed.exec(tgt, ["mount", "-o", "remount,size=50%", "/dev/shm"], check=True)
    if fault == "kill target":
        bed.start_agent(tgt)
        bed.wait_converged(30)
    return move.returncode == 0, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--moves", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    token = f"pmx-soak-{args.seed}"
    stats = {f: Tally() for f in FAULTS}
    bed = TestBed.up(nodes=3, name="bsoak", extra_args=["--set", "balance=false"])
    proc = None
    leaks = {"processes": 0, "images": 0}
    checker = None
    try:
        bed.wait_converged(30)
        proc = bed.popen(
            1,
            ["mosrun", "python3", "-c", JOB, token],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        checker = Checker(proc)
        assert checker.advances(), "the job did not start"
        for n in range(args.moves):
            fault = rng.choice(FAULTS)
            ok, what = one_move(bed, rng, proc.pid, fault)
            s = stats[fault]
            s.moves += 1
            s.ok += ok
            deadline = time.monotonic() + 20
            while len(copies(token)) > 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            doubled = len(copies(token)) > 1
            lost = proc.poll() is not None or not checker.advances()
            s.doubled += doubled
            s.lost += lost
            print(
                f"move {n + 1}: {what}: {'moved' if ok else 'stayed'}, "
                f"on 0x{where(bed, proc.pid) or 0:x}, errors {checker.errors}"
                + (", LOST" if lost else "")
                + (", DOUBLED" if doubled else ""),
                flush=True,
            )
            if lost:
                break
        # Moves given up end on their own deadlines (at most a minute): then nothing is left.
        deadline = time.monotonic() + 65
        while leaked_images(bed) and time.monotonic() < deadline:
            time.sleep(1)
        left = leaked_images(bed)
        leaks["images"] = len(left)
        if left:
            print("images left:", " ".join(left))
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        deadline = time.monotonic() + 15
        while copies(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        leaks["processes"] = len(copies(token))
        for i in NODES:
            with contextlib.suppress(OSError):
                shutil.copy(bed.node(i).log, Path(tempfile.gettempdir()) / f"soak-node{i}.log")
        bed.down()
    total = Tally()
    for t in stats.values():
        total.moves, total.ok = total.moves + t.moves, total.ok + t.ok
        total.lost, total.doubled = total.lost + t.lost, total.doubled + t.doubled
    rows: list[dict[str, object]] = [
        {"fault": f, **t.__dict__} for f, t in (*stats.items(), ("all", total))
    ]
    print_table(rows)
    print(
        "checksum errors (lines out of order, missing, repeated or wrong):",
        checker.errors if checker else "n/a",
    )
    print("leaked after the run:", json.dumps(leaks))
    print(f"csv: {write_csv('soak', rows)}")


if __name__ == "__main__":
    main()
