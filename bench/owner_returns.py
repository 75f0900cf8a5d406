"""When nodes get busy with work pymosix does not manage, running jobs must move: pymosix against
GNU parallel --sshlogin (which places each job once) and no balancing, side by side in one run on
a bed of two one-CPU nodes (this machine has two CPUs: one real CPU per node).

a. Owner returns: one job per node (`--unit-s` each, 30 s by default), all started at node1 (the
   user's machine); at a third of a job's length the owner of node2 comes back and runs
   `--owner-tasks` CPU-bound processes there (plain processes exec'd into the node, not mosrun)
   until the batch ends. Reported: each makespan over the lower bound that gives the owner their
   node while they use it (sim.engine.lower_bound), and for pymosix the time from the owner's load
   appearing to the last guest leaving node2. Both nodes run at the reference speed (set, not
   measured: a speed measured once while a neighbour keeps the CPU busy stays low, and a node
   that looks 3x slower rightly gets no work).
b. Arrivals on nodes of different speeds: node2 slowed to half its CPU by a CFS quota (the agents
   measure their speeds at start), a seeded mix of jobs of unknown lengths (1 to 4 units) arriving
   at node1 over time. Reported: makespan over the lower bound, the speeds the agents measured, and
   the share of the work pymosix did on the fast node (busy seconds times measured speed; 2/3
   is what a perfect split of this capacity gives).

Usage: python -m bench.owner_returns [--unit-s 30] [--owner-tasks 4] [--mix-unit-s 4] [--jobs 10]
Needs GNU parallel and an sshd for that column (apt-get install parallel openssh-server).
Writes bench/results/owner_returns.{csv,png}.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import plot, print_table, write_csv
from bench._jobwatch import JobWatch, arrivals_and_works, cpu_share
from bench.balance import calibrate, run_mosrun, run_parallel, sshd_ready
from pymosix.sim.engine import JobSpec, NodeSpec, OwnerLoad, lower_bound
from pymosix.testbed import TestBed
from pymosix.testbed.cpuquota import set_cpu_quota

HOG = ["perl", "-e", "while(1){}"]
NAN = float("nan")


class Owner:
    """At `at_s` after start(), run `tasks` hogs in node2; for pymosix, watch its guests leave."""

    def __init__(self, bed: TestBed, at_s: float, tasks: int, watch: bool) -> None:
        self.bed, self.at_s, self.tasks, self.watch = bed, at_s, tasks, watch
        self.hogs: list[subprocess.Popen[bytes]] = []
        self.guests_left_s = NAN
        self.came = NAN
        self.guests_at_arrival = 0
        self.where_at_arrival: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        if self._stop.wait(self.at_s):
            return
        # Each in its own session: with autogroup scheduling (on here) one session's processes
        # share one CPU share, and the owner would weigh as a single process whatever `tasks`.
        self.hogs = [self.bed.popen(2, HOG, start_new_session=True) for _ in range(self.tasks)]
        came = self.came = time.monotonic()
        node2 = self.bed.node(2).node_id
        at_arrival = [int(j["node"]) for j in self.bed.call(1, "jobs")["jobs"]]
        self.where_at_arrival = [f"{n:#x}" for n in at_arrival]
        self.guests_at_arrival = at_arrival.count(node2)
        while self.watch and not self._stop.is_set() and self.guests_at_arrival:
            jobs = self.bed.call(1, "jobs")["jobs"]
            if jobs and all(int(j["node"]) != node2 for j in jobs):
                self.guests_left_s = time.monotonic() - came
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for h in self.hogs:
            h.kill()
            h.wait()


def with_owner(
    bed: TestBed, args: argparse.Namespace, watch: bool, run: Any
) -> tuple[float, float, float]:
    """(makespan, seconds from the owner's load to the last guest leaving node2 or NaN, when
    (time.monotonic) the owner's load came)."""
    owner = Owner(bed, args.unit_s / 3, args.owner_tasks, watch)
    owner.start()
    try:
        makespan = run()
    finally:
        owner.stop()
    if watch:
        print(f"   when the owner came, node1's jobs ran on {owner.where_at_arrival}")
    return makespan, owner.guests_left_s, owner.came


class WorkMeter:
    """Samples where node1's jobs run: seconds each node was busy with at least one of them."""

    def __init__(self, bed: TestBed) -> None:
        self.bed = bed
        self.busy: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.25):
            now = time.monotonic()
            for n in {int(j["node"]) for j in self.bed.call(1, "jobs")["jobs"]}:
                self.busy[n] = self.busy.get(n, 0.0) + now - last
            last = now

    def stop(self, speed: dict[int, int]) -> dict[int, float]:
        """Work each node did for the batch: busy seconds times its speed (one CPU each)."""
        self._stop.set()
        self._thread.join()
        return {n: t * speed.get(n, 10000) / 10000 for n, t in self.busy.items()}


def fresh(workdir: Path) -> Path:
    """A new directory for one bed's sshd keys (sshd_ready makes its keys there)."""
    return Path(tempfile.mkdtemp(dir=workdir))


def speeds(bed: TestBed, timeout_s: float = 15.0) -> dict[int, int]:
    """The speeds the agents measured, as node1 heard them (waits until it heard every node)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = bed.call(1, "loads")["nodes"]
        got = {int(r["node_id"]): int(r["speed"]) for r in rows if r.get("speed")}
        if len(got) == len(bed.nodes) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def slowed_bed(name: str, balance: bool) -> TestBed:
    extra = [] if balance else ["--set", "balance=false"]
    bed = TestBed.up(nodes=2, name=name, agents=[], extra_args=extra)
    set_cpu_quota(bed.node(2), 0.5)
    for i in (1, 2):
        bed.start_agent(i)
    bed.wait_converged(30)
    return bed


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--unit-s", type=float, default=30.0, help="length of a job in (a), seconds")
    ap.add_argument("--owner-tasks", type=int, default=4)
    ap.add_argument("--mix-unit-s", type=float, default=4.0, help="one unit of work in (b)")
    ap.add_argument("--jobs", type=int, default=10, help="jobs in (b)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="pmx-bench-"))
    daemons: list[subprocess.Popen[bytes]] = []
    beds: list[TestBed] = []
    try:
        # --- a. owner returns -----------------------------------------------------------------
        # Identical nodes, and (a) is not about speeds: the reference speed, so that a speed
        # measured while a neighbour happened to be busy cannot keep the balancer off node2.
        ref = ["--set", "speed=10000"]
        off = TestBed.up(nodes=2, name="bowoff", extra_args=[*ref, "--set", "balance=false"])
        beds.append(off)
        off.wait_converged(30)
        # The fastest of three: other load on a shared machine only ever slows a calibration.
        per_s = max(calibrate(off, 1.0) for _ in range(3))
        jobs = [(0.0, int(args.unit_s * per_s))] * 2
        t_off, _, _ = with_owner(off, args, False, lambda: run_mosrun(off, jobs))
        off.down()
        on = TestBed.up(nodes=2, name="bowon", extra_args=ref)
        beds.append(on)
        on.wait_converged(30)
        print(f"   speeds measured: {speeds(on)}")
        watch = JobWatch(on)
        watch.start()
        t_on, left, came = with_owner(on, args, True, lambda: run_mosrun(on, jobs))
        watch.stop()
        sim_in = arrivals_and_works(watch.rows, 2)
        # Once the guest has left, both jobs run on node1's one CPU.
        cpu_got = cpu_share(watch.rows, came - watch.t0 + left, 2, 1.0) if left == left else NAN
        ready = sshd_ready(on, fresh(workdir))
        t_par = NAN
        if ready is None:
            print("GNU parallel skipped: apt-get install parallel openssh-server")
        else:
            key, daemons = ready
            t_par, _, _ = with_owner(on, args, False, lambda: run_parallel(on, jobs, key))
        bound = lower_bound(
            [NodeSpec(), NodeSpec()],
            [JobSpec(0, args.unit_s)] * 2,
            [OwnerLoad(1, args.unit_s / 3)],
        )
        # For the simulator (bench.sim_calibration): the pymosix run's jobs as they ran (see
        # bench._jobwatch) and its makespan over the bound of the work they did.
        arrivals, works = sim_in if sim_in is not None else ([], [])
        bound_work = (
            lower_bound(
                [NodeSpec(), NodeSpec()],
                [JobSpec(0, w) for w in works],
                [OwnerLoad(1, args.unit_s / 3)],
            )
            if works
            else NAN
        )
        rows.append(
            {
                "scenario": "owner returns",
                "lower_bound_s": bound,
                "no_balancing": t_off / bound,
                "gnu_parallel": t_par / bound,
                "pymosix": t_on / bound,
                "pymosix_vs_parallel": t_par / t_on,
                "guests_left_s": left,
                "speeds": "",
                "fast_node_share": NAN,
                "bound_work_s": bound_work,
                "pymosix_work": t_on / bound_work,
                "arrivals_s": " ".join(f"{a:.2f}" for a in arrivals),
                "works_s": " ".join(f"{w:.2f}" for w in works),
                "cpu_share": cpu_got,
            }
        )
        print(
            f"a. owner returns: over the bound {bound:.1f} s: no balancing {t_off / bound:.2f}, "
            f"GNU parallel {t_par / bound:.2f}, pymosix {t_on / bound:.2f} "
            f"(pymosix {t_par / t_on:.2f}x faster than GNU parallel); last guest left "
            f"{left:.2f} s after the owner came"
        )
        for d in daemons:
            d.kill()
            d.wait()
        daemons = []
        on.down()

        # --- b. arrivals, node2 at half speed --------------------------------------------------
        rng = random.Random(args.seed)
        mix = sorted(
            (rng.uniform(0, 3 * args.mix_unit_s), rng.randint(1, 4)) for _ in range(args.jobs)
        )
        work = [(a, int(u * args.mix_unit_s * per_s)) for a, u in mix]
        bound = lower_bound(
            [NodeSpec(10000), NodeSpec(5000)],
            [JobSpec(0, u * args.mix_unit_s, arrival_s=a) for a, u in mix],
        )
        on = slowed_bed("bowson", balance=True)
        beds.append(on)
        measured = speeds(on)
        meter = WorkMeter(on)
        t_on = run_mosrun(on, work)
        share = meter.stop(measured)
        ready = sshd_ready(on, fresh(workdir))
        t_par = NAN
        if ready is not None:
            key, daemons = ready
            t_par = run_parallel(on, work, key)
            for d in daemons:
                d.kill()
                d.wait()
            daemons = []
        on.down()
        off = slowed_bed("bowsoff", balance=False)
        beds.append(off)
        t_off = run_mosrun(off, work)
        off.down()
        fast = on.node(1).node_id
        fast_share = share.get(fast, 0.0) / max(sum(share.values()), 1e-9)
        rows.append(
            {
                "scenario": "arrivals, node2 at half speed",
                "lower_bound_s": bound,
                "no_balancing": t_off / bound,
                "gnu_parallel": t_par / bound,
                "pymosix": t_on / bound,
                "pymosix_vs_parallel": t_par / t_on,
                "guests_left_s": NAN,
                "speeds": " ".join(f"{n:#x}={s}" for n, s in sorted(measured.items())),
                "fast_node_share": fast_share,
                "bound_work_s": NAN,
                "pymosix_work": NAN,
                "arrivals_s": "",
                "works_s": "",
                "cpu_share": NAN,
            }
        )
        print(
            f"b. arrivals at different speeds (measured {measured}): over the bound {bound:.1f} s: "
            f"no balancing {t_off / bound:.2f}, GNU parallel {t_par / bound:.2f}, pymosix "
            f"{t_on / bound:.2f}; pymosix did {fast_share:.0%} of the work on the fast node"
        )
    finally:
        for d in daemons:
            d.kill()
            d.wait()
        for b in beds:
            b.down()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    print(f"csv: {write_csv('owner_returns', rows)}")
    xs = list(range(len(rows)))
    png = plot(
        "owner_returns",
        "Makespan over the lower bound (2 nodes, 1 CPU each)",
        "scenario (0 = owner returns, 1 = arrivals, node2 at half speed)",
        "makespan / lower bound",
        {
            name: (xs, [r[name] for r in rows])
            for name in ("pymosix", "gnu_parallel", "no_balancing")
        },
    )
    print(f"png: {png}")


if __name__ == "__main__":
    main()
