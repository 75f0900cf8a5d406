"""A job's output throughput through mosrun, side by side with a plain pipe, on a 2-node bed.

Four ways of getting `dd if=/dev/zero bs=1M count=MB` to a reader in node1, each run --repeat
times in turn (medians shown):

  pipe      dd | reader                        (the ceiling: a pipe in the same node)
  pipe-1m   the same, the pipe widened to 1 MiB by the reader (as mosrun widens its own output
            pipe: the fair ceiling for what a reader of mosrun gets)
  home      mosrun -h dd | reader              (the job at home: agent and mosrun relay)
  migrated  mosrun -L dd | reader, the job moved to node2 before dd starts (the output crosses
            the agents' encrypted channel, then the home agent and mosrun)

The reader (inside node1, where mosrun runs) counts bytes from the first one to the end: start-up
costs (mosrun's connection, the job's namespaces, the move) are not throughput. The job waits for
a line on stdin before it starts dd, so that the move happens before any output.
Usage: python -m bench.stdio [--mb 200] [--repeat 3] [--cpus-per-node 1]."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from bench._common import print_table, write_csv
from pymosix.testbed import TestBed

#: Counts stdin to its end; prints bytes and seconds from the first byte.
READER = (
    "import fcntl, os, sys, time\n"
    'if sys.argv[1:] == ["pipe-1m"]: fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, 1 << 20)\n'
    "n, t0 = 0, None\n"
    "while (b := os.read(0, 1 << 20)):\n"
    "    t0 = t0 or time.monotonic()\n"
    "    n += len(b)\n"
    "print(n, time.monotonic() - (t0 or time.monotonic()))\n"
)
NODE2 = "0x640c"


def _producer(how: str, mb: int) -> str:
    dd = f"read go; exec dd if=/dev/zero bs=1M count={mb} status=none"
    if how in ("pipe", "pipe-1m"):
        return f"sh -c '{dd}'"
    return f"mosrun {'-h' if how == 'home' else '-L'} sh -c '{dd}'"


def _job_pid(bed: TestBed, seen: set[int]) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = [int(j["home_pid"]) for j in bed.call(1, "jobs")["jobs"]]
        new = [p for p in pids if p not in seen]
        if new:
            seen.add(new[0])
            return new[0]
        time.sleep(0.05)
    raise RuntimeError("the job did not start")


def run_once(bed: TestBed, how: str, mb: int, seen: set[int]) -> float:
    """MB/s the reader saw."""
    p = bed.popen(
        1,
        ["sh", "-c", f"{_producer(how, mb)} | python3 -c '{READER}' {how}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert p.stdin is not None
        if how in ("home", "migrated"):
            pid = _job_pid(bed, seen)
            if how == "migrated":
                r = bed.exec(1, ["migrate", str(pid), NODE2], timeout_s=120)
                if r.returncode != 0:
                    raise RuntimeError(f"migrate failed: {r.stderr.strip()}")
        out, err = p.communicate(b"go\n", timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        raise RuntimeError(f"{how}: exit {p.returncode}: {err.decode().strip()[-300:]}")
    n, seconds = out.decode().split()
    if int(n) != mb << 20:
        raise RuntimeError(
            f"{how}: the reader got {n} bytes, not {mb << 20}: {err.decode().strip()[-300:]}"
        )
    return (int(n) / 1e6) / float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    args = ap.parse_args()
    hows = ["pipe", "pipe-1m", "home", "migrated"]
    runs: dict[str, list[float]] = {h: [] for h in hows}
    bed = TestBed.up(
        nodes=2,
        name="bstdio",
        cpus_per_node=args.cpus_per_node,
        extra_args=["--set", "balance=false"],
    )
    seen: set[int] = set()
    try:
        bed.wait_converged(30)
        run_once(bed, "home", 8, seen)  # warm-up: caches, the first job's start
        for i in range(args.repeat):
            for how in hows[i % len(hows) :] + hows[: i % len(hows)]:
                runs[how].append(run_once(bed, how, args.mb, seen))
            print(
                f"run {i + 1}: " + ", ".join(f"{h} {runs[h][-1]:.0f} MB/s" for h in hows),
                flush=True,
            )
    except RuntimeError:
        for i in (1, 2):
            print(f"--- node{i}'s log, its end:", *bed.node(i).log.read_text().splitlines()[-15:])
        raise
    finally:
        bed.down()
    pipe = statistics.median(runs["pipe"])
    pipe_1m = statistics.median(runs["pipe-1m"])
    rows = [
        {
            "path": how,
            "mb": args.mb,
            "mb_per_s": statistics.median(runs[how]),
            "ratio_to_pipe": statistics.median(runs[how]) / pipe,
            "ratio_to_pipe_1m": statistics.median(runs[how]) / pipe_1m,
            "runs": " ".join(f"{x:.0f}" for x in runs[how]),
        }
        for how in hows
    ]
    print_table(rows)
    print(f"csv: {write_csv('stdio', rows)}")
    print(f"png: {bar_chart(rows)}")


def bar_chart(rows: list[dict[str, object]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench._common import RESULTS

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = ["plain pipe", "pipe, 1 MiB", "mosrun -h", "mosrun,\njob on node2"]
    values = [float(str(r["mb_per_s"])) for r in rows]
    bars = ax.bar(labels, values, color=["#888", "#aaa", "#3a7", "#37a"])
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(
            f"{float(str(r['ratio_to_pipe'])):.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
        )
    ax.set_ylabel("MB/s (median)")
    ax.set_title(f"A job's stdout to its reader, {rows[0]['mb']} MB")
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "stdio.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    main()
