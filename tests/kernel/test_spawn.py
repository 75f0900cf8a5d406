"""Jobs start as CRIU needs them: PID 1 of their own PID namespace, session leader, clean signals,
the user, directory and environment asked for, stdio on our pipes, and our child to reap."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from pymosix.migration.spawn import JobSpec, SpawnError, spawn_job, start_job, stdio_inodes

pytestmark = pytest.mark.kernel

#: Prints what CRIU and the job care about, then waits for stdin to close.
REPORT = (
    '$|=1; open my $f, "<", "/proc/self/status"; my %s = map { /^(\\w+):\\s*(.*)$/ ? ($1, $2) : () } <$f>;'
    'open my $t, "<", "/proc/self/stat"; my $st = <$t>; my $sid = (split / /, (split /\\) /, $st)[1])[3];'
    'print join("|", $s{NSpid}, $sid == (split / /, $st)[0] ? "leader" : "no", $SIG{PIPE} // "", $s{SigIgn},'
    ' $s{SigBlk}, $s{Uid}, $s{Gid}, $s{Groups}, `pwd` =~ s/\\n//r, $ENV{PMX_T} // "-"), "\\n"; <STDIN>;'
)


def run_report(spec: JobSpec, use_async: bool) -> tuple[int, list[str], dict[int, str]]:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        if use_async:
            pid = asyncio.run(start_job(spec, in_r, out_w, out_w))
        else:
            pid = spawn_job(spec, in_r, out_w, out_w)
        keys = stdio_inodes(pid)
        os.close(out_w)
        out_w = -1
        line = b""
        deadline = time.monotonic() + 10
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(out_r, 4096)
            if not chunk:
                break
            line += chunk
        os.close(in_w)  # the job reads EOF and exits
        in_w = -1
        _, status = os.waitpid(pid, 0)  # our child: the agent is its subreaper
        assert os.waitstatus_to_exitcode(status) == 0
        return pid, line.decode().strip().split("|"), keys
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("use_async", [False, True])
def test_job_is_pid1_session_leader_with_clean_signals(use_async: bool) -> None:
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python has it; the job must not
    try:
        spec = JobSpec(["perl", "-e", REPORT], cwd="/tmp", env={"PMX_T": "x y", "PATH": "/usr/bin"})
        _, f, keys = run_report(spec, use_async)
    finally:
        signal.signal(signal.SIGPIPE, old)
    nspid, leader, _, sigign, sigblk, uid, _, _, cwd, env = f
    # The job reads its own /proc, of its own PID namespace: PID 1 there, one level below ours
    # (a /proc of the host's would list the host PID first).
    assert nspid.split() == ["1"], "the job sees a /proc of its own PID namespace"
    assert leader == "leader"
    # Perl itself ignores SIGFPE at start; nothing else may stay ignored (SIGPIPE above all).
    # glibc's own real-time signals (32, 33) are not ours to set: a caller may pass them ignored.
    settable = sum(
        1 << (int(sig) - 1) for sig in signal.valid_signals() if int(sig) != signal.SIGFPE
    )
    assert int(sigign, 16) & settable == 0, "no signal may stay ignored"
    assert int(sigblk, 16) == 0
    assert uid.split()[0] == "0"
    assert (cwd, env) == ("/tmp", "x y")
    assert keys[0].startswith("pipe:[")
    assert keys[1] == keys[2] != keys[0]


def test_job_runs_as_the_user_asked() -> None:
    spec = JobSpec(["perl", "-e", REPORT], uid=65534, gid=65534, groups=[65534], cwd="/")
    _, f, _ = run_report(spec, use_async=False)
    assert f[5].split() == ["65534"] * 4
    assert f[6].split() == ["65534"] * 4
    assert f[7].split() == ["65534"]


def test_exec_failures_are_errors_not_jobs() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(SpawnError, match=r"^/nonexistent/prog: command not found$"):
            spawn_job(JobSpec(["/nonexistent/prog"]), r, w, w)
        with pytest.raises(SpawnError, match=r"^cd /nonexistent: no such directory$"):
            spawn_job(JobSpec(["true"], cwd="/nonexistent"), r, w, w)
        with pytest.raises(SpawnError, match=r"^/etc/passwd: Permission denied$"):
            spawn_job(JobSpec(["/etc/passwd"]), r, w, w)
        with pytest.raises(SpawnError, match="gid"):
            spawn_job(JobSpec(["true"], uid=65534), r, w, w)
        with pytest.raises(SpawnError, match="empty"):
            spawn_job(JobSpec([]), r, w, w)
    finally:
        os.close(r)
        os.close(w)
    assert not Path("/nonexistent").exists()
