"""Checkpoint overhead (issue 16 item 7): the work a CPU-bound job loses to checkpoints every
SECONDS (`mosrun -C SECONDS`, migration/checkpoint.py), as a ratio to the same job without,
the two run side by side in the same test bed, per job size (64 MB and 1 GB by default).

Per size: two mosrun jobs at node1 (home), one with -C, one with -C 0, each holding MB of memory
and counting in a tight loop (it prints its own clock and count four times a second); both are
moved to node2 (a job at home is never checkpointed), then measured over the same window of
`--checkpoints` periods (interval + checkpoint), until the last is home. Work done = the
count's increase over the window (from each job's own clock). The two jobs never run quite
alike on a shared machine (each has a CPU, and each CPU its own other load: here the other test
beds' nodes), so lost = 1 - with / (usual x without), where usual is the median ratio of the
two over the 5 s bins of the same window that no checkpoint touches (lost_raw: without it). The
nodes may use both CPUs of the machine (--cpus-per-node 2): each job can have one, so a freeze
of one is not time the other gains, and the agents' checkpoint work (criu, sending, writing
at home) competes with both. Also: the same ratio over the first interval (before any
checkpoint: how far apart two equal jobs run on this machine), each job's CPU seconds, the
freeze of each checkpoint (node2's log) and the CPU seconds both agents and their criu spent.
Usage: python -m bench.checkpoint_overhead [--sizes 64,1024] [--interval 60] [--checkpoints 4]"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import plot, print_table, write_csv
from pymosix.testbed import TestBed

JOB = (
    "import time\n"
    "x = bytearray(b'\\x01') * ({mb} << 20)\n"
    "print('ready', flush=True)\n"
    "i, nxt = 0, 0.0\n"
    "while True:\n"
    "    i += 1\n"
    "    if i & 0xFFFF == 0:\n"
    "        t = time.monotonic()\n"
    "        if t >= nxt:\n"
    "            print(f'{{t:.3f}} {{i}}', flush=True)\n"
    "            nxt = t + 0.25\n"
)
TICK = os.sysconf("SC_CLK_TCK")
SENT = re.compile(
    r"^(\d\d):(\d\d):(\d\d) \S+ job (\d+): checkpoint \w+ sent home "
    r"\(frozen ([\d.]+) s, ([\d.]+) s in all\)",
    re.M,
)
#: Bins of the window: those away from checkpoints give the two jobs' usual work ratio.
BIN_S = 5.0
MARGIN_S = 3.0


@dataclass(eq=False)
class Counting:
    """A mosrun job's (job clock, count) lines, read in the background."""

    proc: subprocess.Popen[bytes]
    points: list[tuple[float, int]] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            if line.strip() == b"ready":
                self.ready.set()
                continue
            with contextlib.suppress(ValueError):
                t, i = line.split()
                self.points.append((float(t), int(i)))

    def count_at(self, t: float) -> float:
        """The count at job-clock time t, interpolated between the lines around it."""
        pts = list(self.points)
        for (t0, i0), (t1, i1) in itertools.pairwise(pts):
            if t0 <= t <= t1:
                return i0 + (i1 - i0) * (t - t0) / (t1 - t0) if t1 > t0 else float(i0)
        raise RuntimeError(f"no count around t={t:.1f} (lines up to {pts[-1][0]:.1f})")

    def work(self, t0: float, t1: float) -> float:
        return self.count_at(t1) - self.count_at(t0)


def cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (and of its reaped children: an agent's criu runs)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / TICK


def guest_pid(bed: TestBed, home_pid: int) -> int:
    rows = bed.call(2, "jobs")["jobs"]
    return int(next(r["pid"] for r in rows if r["home_pid"] == home_pid and r.get("guest")))


@contextlib.contextmanager
def pair(bed: TestBed, mb: int, interval: int) -> Iterator[tuple[Counting, Counting, float]]:
    """The job with checkpoints and the one without, both started at node1, then on node2;
    and when the first arrived there (its checkpoint timer starts then)."""
    jobs: list[Counting] = []
    arrived = []
    try:
        for c in (str(interval), "0"):
            argv = ["mosrun", "-C", c, "python3", "-c", JOB.format(mb=mb)]
            jobs.append(Counting(bed.popen(1, argv, stdout=subprocess.PIPE)))
        for j in jobs:
            if not j.ready.wait(120):
                raise RuntimeError(f"a {mb} MB job did not start")
        for j in jobs:
            r = bed.exec(1, ["migrate", str(j.proc.pid), "0x640c"], timeout_s=600)
            if r.returncode != 0:
                raise RuntimeError(f"migrate: {r.stderr.strip()}")
            arrived.append(time.monotonic())
        yield jobs[0], jobs[1], arrived[0]
    finally:
        for j in jobs:
            j.proc.kill()
            j.proc.wait()
            if j.proc.stdout is not None:
                j.proc.stdout.close()


def sent_lines(log: Path, at: int, home_pid: int) -> list[re.Match[str]]:
    """The "checkpoint sent home" lines of a job in an agent's log, from byte `at` on."""
    with log.open("rb") as f:
        f.seek(at)
        text = f.read().decode(errors="replace")
    return [m for m in SENT.finditer(text) if int(m[4]) == home_pid]


def busy_spans(sent: list[re.Match[str]]) -> list[tuple[float, float]]:
    """Each checkpoint's (start, end) on the monotonic clock, from its log line (the agent's
    wall clock to the second, local time), widened by MARGIN_S each way."""
    now_wall, now_mono = time.time(), time.monotonic()
    day = time.localtime(now_wall)
    spans = []
    for m in sent:
        hms = (int(m[1]), int(m[2]), int(m[3]))
        wall = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, *hms, 0, 0, -1))
        if wall > now_wall + 60:
            wall -= 86400  # the line is from before midnight
        end = wall + 1 - (now_wall - now_mono)  # the second's end: the line came within it
        spans.append((end - 1 - float(m[6]) - MARGIN_S, end + MARGIN_S))
    return spans


def usual_ratio(
    ckpt: Counting, plain: Counting, t0: float, t1: float, busy: list[tuple[float, float]]
) -> float:
    """Median of with/without over the window's BIN_S bins that no checkpoint touches: how
    the two jobs fare against each other on this machine without checkpoints (each CPU has
    its own other load), side by side over the same minutes."""
    ratios = []
    t = t0
    while t + BIN_S <= t1:
        if not any(a < t + BIN_S and t < b for a, b in busy):
            ratios.append(ckpt.work(t, t + BIN_S) / plain.work(t, t + BIN_S))
        t += BIN_S
    return statistics.median(ratios)


def measure(bed: TestBed, mb: int, interval: int, checkpoints: int) -> dict[str, object]:
    """The window: from 5 s after both arrived to the end of the last of `checkpoints`
    checkpoints (each period is the interval plus the checkpoint: checkpoint.keep sleeps the
    interval after each), so it holds that many whole periods, less 5 s."""
    log = bed.node(2).log
    log_at = log.stat().st_size
    with pair(bed, mb, interval) as (ckpt, plain, arrived):
        pids = {j: guest_pid(bed, j.proc.pid) for j in (ckpt, plain)}
        agents = [bed.node(i).agent_pid for i in (1, 2)]
        t0 = time.monotonic() + 5
        first = arrived + interval - 2  # before the first checkpoint: the control
        if first - t0 < 20:
            raise RuntimeError("the second job took too long to arrive for a control interval")
        time.sleep(max(0.0, t0 - time.monotonic()))
        cpu0 = {j: cpu_s(p) for j, p in pids.items()}
        agents0 = [cpu_s(a, children=True) for a in agents]
        deadline = arrived + checkpoints * (interval + 120)
        while len(sent_lines(log, log_at, ckpt.proc.pid)) < checkpoints:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {checkpoints} checkpoints of the {mb} MB job")
            time.sleep(0.5)
        t1 = time.monotonic()
        cpu1 = {j: cpu_s(p) for j, p in pids.items()}
        agents1 = [cpu_s(a, children=True) for a in agents]
        time.sleep(1.0)  # the lines up to t1 are in
        sent = sent_lines(log, log_at, ckpt.proc.pid)
        w_ckpt, w_plain = ckpt.work(t0, t1), plain.work(t0, t1)
        control = ckpt.work(t0, first) / plain.work(t0, first)
        usual = usual_ratio(ckpt, plain, t0, t1, busy_spans(sent))
    freezes = [float(m[5]) for m in sent]
    return {
        "mb": mb,
        "interval_s": interval,
        "window_s": round(t1 - t0, 1),
        "checkpoints": len(sent),
        "work_with": int(w_ckpt),
        "work_without": int(w_plain),
        "lost": round(1 - w_ckpt / (usual * w_plain), 4),
        "lost_raw": round(1 - w_ckpt / w_plain, 4),
        "usual_ratio": round(usual, 4),
        "ratio_before_first": round(control, 4),
        "cpu_with_s": round(cpu1[ckpt] - cpu0[ckpt], 1),
        "cpu_without_s": round(cpu1[plain] - cpu0[plain], 1),
        "freeze_mean_s": round(sum(freezes) / len(freezes), 3),
        "checkpoint_mean_s": round(sum(float(m[6]) for m in sent) / len(sent), 2),
        "home_agent_cpu_s": round(agents1[0] - agents0[0], 1),
        "host_agent_cpu_s": round(agents1[1] - agents0[1], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="64,1024", help="job sizes in MB")
    ap.add_argument("--interval", type=int, default=60, help="mosrun -C SECONDS")
    ap.add_argument("--checkpoints", type=int, default=4, help="intervals in the window")
    ap.add_argument("--cpus-per-node", type=int, default=2)
    args = ap.parse_args()
    load_before = os.getloadavg()
    bed = TestBed.up(
        nodes=2,
        name="bckpt",
        cpus_per_node=args.cpus_per_node,
        extra_args=["--set", "balance=false"],
    )
    rows = []
    try:
        bed.wait_converged(30)
        for mb in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(bed, mb, args.interval, args.checkpoints))
            print_table(rows[-1:])
    finally:
        bed.down()
    load = " ".join(f"{x:.2f}" for x in load_before), " ".join(f"{x:.2f}" for x in os.getloadavg())
    for r in rows:
        r["load_before"], r["load_after"] = load
    print_table(rows)
    print(f"csv: {write_csv('checkpoint_overhead', rows)}")
    sizes = [float(str(r["mb"])) for r in rows]
    path = plot(
        "checkpoint_overhead",
        f"Work lost to checkpoints every {args.interval} s (side by side, same run)",
        "job size (MB)",
        "work lost vs. the same job without (%)",
        {
            "lost: 1 - with/(usual x without)": (
                sizes,
                [100 * float(str(r["lost"])) for r in rows],
            ),
            "lost_raw: 1 - with/without": (
                sizes,
                [100 * float(str(r["lost_raw"])) for r in rows],
            ),
            "before the first checkpoint (noise)": (
                sizes,
                [100 * (1 - float(str(r["ratio_before_first"]))) for r in rows],
            ),
        },
        logx=True,
    )
    print(f"png: {path}")


if __name__ == "__main__":
    main()
