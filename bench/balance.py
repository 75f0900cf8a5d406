"""How well pymosix balances, side by side in one run on the test bed (one CPU per node):

a. the seed's scenario with finite work: four loops of a fixed number of iterations started on
   node1; makespan without balancing over makespan with pymosix (ideal 2.0, goal >= 1.9);
b. an uneven workload: a seeded mix of jobs of different lengths arriving over time at node1,
   run three ways: pymosix; GNU parallel --sshlogin to the same nodes (an sshd in each node
   namespace), which places each job once and never moves it; no balancing. Each makespan is
   reported over the lower bound max(total work / CPUs, latest arrival + length).

Usage: python -m bench.balance [--unit-s 2] [--jobs 10] [--seed 1]. GNU parallel needs Debian's
`parallel` and `openssh-server` (apt-get install parallel openssh-server); without them that
column is skipped and says so.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench._common import plot, print_table, write_csv
from pymosix.testbed import TestBed

LOOP = "$i=0; while($i < {n}) {{ $i++; }}"


def calibrate(bed: TestBed, seconds: float, busy: Sequence[int] = ()) -> int:
    """Iterations of the seed's loop that take `seconds` on node1's CPU, with an endless loop in
    each node of `busy` meanwhile. This machine's two vCPUs slow each other down (a loop runs at
    7.4 M iterations/s alone, 4.0 M/s while the other vCPU is busy, each on its own CPU), unlike
    a cluster's separate machines: a bench whose CPUs are all busy throughout calibrates with
    them busy, or its jobs run up to twice as long as its lower bound assumes."""
    hogs = [bed.popen(i, ["perl", "-e", "while(1){}"], start_new_session=True) for i in busy]
    try:
        n = 20_000_000
        t0 = time.monotonic()
        bed.exec(1, ["perl", "-e", LOOP.format(n=n)], timeout_s=300)
        return int(n * seconds / (time.monotonic() - t0))
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def run_mosrun(bed: TestBed, jobs: list[tuple[float, int]]) -> float:
    """Start each (arrival, iterations) job with mosrun at node1 at its time; the makespan."""
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    for arrival, n in jobs:
        time.sleep(max(0.0, t0 + arrival - time.monotonic()))
        procs.append(
            bed.popen(1, ["mosrun", "perl", "-e", LOOP.format(n=n)], stdout=subprocess.DEVNULL)
        )
    for p in procs:
        p.wait(timeout=1800)
    return time.monotonic() - t0


def sshd_ready(bed: TestBed, workdir: Path) -> tuple[Path, list[subprocess.Popen[bytes]]] | None:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if sshd is None or shutil.which("parallel") is None:
        return None
    key = workdir / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "host")], check=True
    )
    (workdir / "authorized_keys").write_text((workdir / "id.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)
    daemons = []
    for node in bed.nodes:
        daemons.append(
            bed.popen(
                node.index,
                [
                    sshd,
                    "-D",
                    "-e",
                    "-h",
                    str(workdir / "host"),
                    "-o",
                    f"ListenAddress={node.address}",
                    "-o",
                    "PermitRootLogin=yes",
                    "-o",
                    f"AuthorizedKeysFile={workdir / 'authorized_keys'}",
                    "-o",
                    "StrictModes=no",
                    "-o",
                    "UsePAM=no",
                    "-o",
                    f"PidFile={workdir / node.name}.pid",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(1)
    return key, daemons


def run_parallel(bed: TestBed, jobs: list[tuple[float, int]], key: Path) -> float:
    ssh = f"ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    logins = ",".join(f"1/root@{n.address}" for n in bed.nodes)
    p = bed.popen(
        1,
        ["parallel", "--will-cite", "--ssh", ssh, "--sshlogin", logins, "--line-buffer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert p.stdin is not None
    t0 = time.monotonic()

    def feed() -> None:
        assert p.stdin is not None
        for arrival, n in jobs:
            time.sleep(max(0.0, t0 + arrival - time.monotonic()))
            p.stdin.write(f"perl -e '{LOOP.format(n=n)}'\n".encode())
            p.stdin.flush()
        p.stdin.close()

    t = threading.Thread(target=feed)
    t.start()
    p.wait(timeout=1800)
    t.join()
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--unit-s", type=float, default=5.0, help="length of one unit of work, seconds")
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rows = []
    off = TestBed.up(nodes=2, name="bbaloff", extra_args=["--set", "balance=false"])
    on = None
    workdir = Path(tempfile.mkdtemp(prefix="pmx-bench-"))
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        off.wait_converged(30)
        per_unit = calibrate(off, args.unit_s)
        seed_jobs = [(0.0, 4 * per_unit)] * 4
        t_off = run_mosrun(off, seed_jobs)
        off.down()
        on = TestBed.up(nodes=2, name="bbalon")
        on.wait_converged(30)
        t_on = run_mosrun(on, seed_jobs)
        rows.append(
            {
                "scenario": "seed, 4 loops",
                "no_balancing_s": t_off,
                "pymosix_s": t_on,
                "gnu_parallel_s": float("nan"),
                "lower_bound_s": 8 * args.unit_s,
                "speedup": t_off / t_on,
            }
        )
        print(
            f"a. seed scenario: no balancing {t_off:.1f} s, pymosix {t_on:.1f} s, speed-up {t_off / t_on:.2f} (ideal 2.0)"
        )

        rng = random.Random(args.seed)
        mix = sorted((rng.uniform(0, 3 * args.unit_s), rng.randint(1, 4)) for _ in range(args.jobs))
        jobs = [(a, units * per_unit) for a, units in mix]
        total = sum(units for _, units in mix) * args.unit_s
        bound = max(total / 2, max(a + u * args.unit_s for a, u in mix))
        t_mix_on = run_mosrun(on, jobs)
        ready = sshd_ready(on, workdir)
        t_par = float("nan")
        if ready is None:
            print(
                "b. GNU parallel skipped: needs 'parallel' and 'openssh-server' (apt-get install parallel openssh-server)"
            )
        else:
            key, daemons = ready
            t_par = run_parallel(on, jobs, key)
        on.down()
        off = TestBed.up(nodes=2, name="bbaloff", extra_args=["--set", "balance=false"])
        off.wait_converged(30)
        t_mix_off = run_mosrun(off, jobs)
        rows.append(
            {
                "scenario": f"uneven mix of {args.jobs}",
                "no_balancing_s": t_mix_off,
                "pymosix_s": t_mix_on,
                "gnu_parallel_s": t_par,
                "lower_bound_s": bound,
                "speedup": t_mix_off / t_mix_on,
            }
        )
        print(
            f"b. uneven mix: over the lower bound {bound:.1f} s: pymosix {t_mix_on / bound:.2f}, "
            f"GNU parallel {t_par / bound:.2f}, no balancing {t_mix_off / bound:.2f}"
        )
    finally:
        for d in daemons:
            d.kill()
            d.wait()
        off.down()
        if on is not None:
            on.down()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    print(f"csv: {write_csv('balance', rows)}")
    labels = [r["scenario"] for r in rows]
    png = plot(
        "balance",
        "Makespan over the lower bound (2 nodes, 1 CPU each)",
        "scenario (0 = seed, 1 = uneven)",
        "makespan / lower bound",
        {
            name: (list(range(len(rows))), [r[col] / r["lower_bound_s"] for r in rows])
            for name, col in (
                ("pymosix", "pymosix_s"),
                ("GNU parallel", "gnu_parallel_s"),
                ("no balancing", "no_balancing_s"),
            )
        },
    )
    print(f"png: {png} ({', '.join(labels)})")


if __name__ == "__main__":
    main()
