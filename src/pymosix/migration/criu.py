"""CriuDriver: the only place that runs criu. Builds argv, runs it, turns failures into one line.

Dump leaves the job stopped (-s) so that a failed migration can resume it with SIGCONT; restore
uses -d -S so that the restored job becomes the caller's own child (research/criu.md §4).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pymosix.config import find_criu
from pymosix.errors import CriuError

#: Lines of a criu log that say what went wrong, best first.
_ERROR_LINE = re.compile(r"\bError\b|\(\d+\.\d+\) Error|Can't|can't|Unable|failed", re.IGNORECASE)


def last_error(log_text: str) -> str:
    """The most telling error line of a criu log, without its timestamp prefix."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln]
    pick = (
        errors[0] if errors else next((ln for ln in reversed(lines) if _ERROR_LINE.search(ln)), "")
    )
    if not pick and lines:
        pick = lines[-1]
    return re.sub(r"^\(\s*\d+\.\d+\)\s*", "", pick)[:300] or "criu failed without a log"


@dataclass(frozen=True, slots=True)
class RestoreResult:
    pid: int
    log: Path


class CriuDriver:
    """Runs one criu binary; every call logs at -v4 into the images directory."""

    def __init__(self, criu: str = "", timeout_s: float = 120.0) -> None:
        found = find_criu(criu)
        if found is None:
            raise CriuError("no criu found: run 'make setup' or set PYMOSIX_CRIU")
        self.criu = found
        self.timeout_s = timeout_s

    async def _run(self, args: Sequence[str], log: Path, pass_fds: Sequence[int] = ()) -> None:
        argv = [self.criu, *args, "-v4", "-o", str(log)]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=tuple(pass_fds),
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CriuError(f"criu {args[0]} took longer than {self.timeout_s:.0f} s") from None
        if proc.returncode != 0:
            try:
                text = log.read_text(errors="replace")
            except OSError:
                text = err.decode(errors="replace")
            raise CriuError(f"criu {args[0]} failed: {last_error(text)}")

    async def check(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.criu, "check", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise CriuError(f"'criu check' fails: {last_error(out.decode(errors='replace'))}")

    async def dump(self, pid: int, images: Path, *, leave_stopped: bool = True) -> Path:
        """Freeze and dump the job whose namespace init is `pid`; returns the log path."""
        images.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = images / "dump.log"
        args = ["dump", "-t", str(pid), "-D", str(images)]
        if leave_stopped:
            args.append("-s")
        await self._run(args, log)
        return log

    async def restore(
        self,
        images: Path,
        inherit_fds: Mapping[int, str],
        *,
        join_netns: str | None = None,
    ) -> RestoreResult:
        """Restore the job as our child; `inherit_fds` maps our fd -> the image's ``pipe:[INO]``."""
        log = images / "restore.log"
        pidfile = images / "restore.pid"
        args = ["restore", "-D", str(images), "-d", "-S", "--pidfile", str(pidfile)]
        # Leave cgroups alone: the job joins the restoring agent's own (its cpuset, in a test bed).
        args += ["--manage-cgroups=ignore"]
        if join_netns:
            args += ["--join-ns", f"net:{join_netns}"]
        for fd, key in inherit_fds.items():
            args += ["--inherit-fd", f"fd[{fd}]:{key}"]
        for fd in inherit_fds:
            os.set_inheritable(fd, True)
        await self._run(args, log, pass_fds=list(inherit_fds))
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            raise CriuError("criu restore did not write the restored PID") from None
        return RestoreResult(pid, log)
