"""CriuDriver: the only place that runs criu. Builds argv, runs it, turns failures into one line.

Dump leaves the job stopped (-s) so that a failed migration can resume it with SIGCONT; restore
uses -d -S so that the restored job becomes the caller's own child (research/criu.md §4). Always
-v4 -o LOG; a failure raises CriuError with the log's telling line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pymosix.config import find_criu
from pymosix.errors import CriuError
from pymosix.install import setup_fix
from pymosix.migration import procstate
from pymosix.migration.cantmove import tree_pids

#: Lines of a criu log that say what went wrong, best first.
_ERROR_LINE = re.compile(r"\bError\b|\(\d+\.\d+\) Error|Can't|can't|Unable|failed", re.IGNORECASE)


#: Error lines that are not the cause: a harmless one without CAP_SYS_RESOURCE, and the summary.
_NOT_THE_CAUSE = ("Can't setup RLIMIT_NOFILE", "Dumping FAILED.", "Restoring FAILED.")


def last_error(log_text: str) -> str:
    """The most telling error line of a criu log, without its timestamp prefix.

    The first real "Error" line, since criu's later ones are consequences; the summary line only
    when nothing better was logged.
    """
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln]
    causes = [ln for ln in errors if not any(n in ln for n in _NOT_THE_CAUSE)]
    pick = next(iter(causes), "") or next(
        (ln for ln in reversed(lines) if _ERROR_LINE.search(ln)), ""
    )
    if not pick and lines:
        pick = lines[-1]
    return re.sub(r"^\(\s*\d+\.\d+\)\s*", "", pick)[:300] or "criu failed without a log"


#: CAP_SYS_RESOURCE's bit in /proc/PID/status CapEff.
CAP_SYS_RESOURCE = 24
#: criu's cache of kernel features; read before anything else when it exists (criu/kerndat.c).
KDAT_CACHE = Path("/run/criu.kdat")
#: The boot the cache above was made in, when we made it (it outlives reboots off tmpfs).
KDAT_BOOT = Path("/run/pymosix-criu-kdat.boot")


def has_capability(cap: int, status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process has `cap` in its effective set."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


#: criu runs under umask 077: the images it writes (the job's whole memory) are root's alone.
PRIVATE_FILES = ("sh", "-c", 'umask 077 && exec "$@"', "sh")


def owner_prefix(uid: int, gid: int) -> list[str]:
    """argv prefix that runs criu with the job owner's real uid and gid, root's effective ones.

    Without CAP_SYS_RESOURCE (some containers and sandboxes drop it from the bounding set) root
    may not read another user's rlimits, and criu's dump fails with "Can't get rlimit 0". The
    kernel allows prlimit() on a process whose ids all equal the caller's real ones, so criu
    runs with the owner's real ids and keeps every capability through its effective uid 0.
    """
    return ["setpriv", f"--ruid={uid}", f"--rgid={gid}", "--keep-groups", "--"]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    pid: int
    log: Path


#: Where images go: tmpfs, so a dump is a memory copy and nothing is left on disk.
IMAGE_ROOTS = (Path("/dev/shm"), Path("/run"))


def make_images_dir(prefix: str = "pmx-img-", root: Path | None = None) -> Path:
    """A fresh 0700 directory on tmpfs for one dump: images hold the job's whole memory."""
    base = root or next((r for r in IMAGE_ROOTS if r.is_dir()), Path(tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


#: TCP connections are dumped and restored (in repair mode): cantmove lets through only those
#: with both ends in the job, over loopback. Always given: without connections they change
#: nothing, and the target cannot tell beforehand whether an image holds any.
TCP_ARGS = ("--tcp-established",)


def dump_args(
    pid: int, images: Path, log: Path, leave_stopped: bool = True, page_socket: int | None = None
) -> list[str]:
    """criu arguments to freeze and dump the tree whose namespace init is `pid`.

    With page_socket the pages go to a page server over that connected socket, not into images.
    No network lock (``--network-lock skip``, recorded in the image for the restore too): both
    ends of every connection are in the dump and frozen, so nothing can change a connection
    while it is dumped; criu's default lock needs iptables in the node's namespace, and after a
    dump with -s criu leaves the lock in place (it unlocks only for a job that goes on).
    """
    # The job's own mount namespace (spawn.py) goes in the image; every mount in it is a copy
    # of one of the agent's, so all are external: the target binds its own at the same paths.
    args = ["dump", "-t", str(pid), "-D", str(images), "--external", "mnt[]", *TCP_ARGS]
    args += ["--network-lock", "skip"]
    if leave_stopped:
        args.append("-s")
    if page_socket is not None:
        args += ["--page-server", "--ps-socket", str(page_socket)]
    return [*args, "-v4", "-o", str(log)]


def page_server_args(images: Path, log: Path, socket_fd: int) -> list[str]:
    """criu arguments to take one dump's pages from a connected socket into images."""
    return ["page-server", "-D", str(images), "--ps-socket", str(socket_fd), "-v4", "-o", str(log)]


def restore_args(
    images: Path,
    log: Path,
    pidfile: Path,
    inherit_fds: Mapping[int, str],
    join_netns: str | None = None,
    leave_stopped: bool = False,
    lazy: bool = False,
) -> list[str]:
    """criu arguments to restore as the caller's child (-d -S), stdio re-bound to our fds;
    with leave_stopped every task is left SIGSTOPped (a move resumes it once committed); with
    lazy its memory comes later, from a `criu lazy-pages` daemon (migration/postcopy.py)."""
    args = ["restore", "-D", str(images), "-d", "-S", "--pidfile", str(pidfile), "--auto-dedup"]
    if leave_stopped:
        args.append("--leave-stopped")
    if lazy:
        args.append("--lazy-pages")
    # The job's mount namespace is rebuilt on the target's root, from the target's own mounts.
    args += ["--root", "/", "--external", "mnt[]"]
    # Leave cgroups alone: the job joins the restoring agent's own (its cpuset, in a test bed).
    args.append("--manage-cgroups=ignore")
    args += TCP_ARGS
    if join_netns:
        args += ["--join-ns", f"net:{join_netns}"]
    for fd, key in inherit_fds.items():
        args += ["--inherit-fd", f"fd[{fd}]:{key}"]
    return [*args, "-v4", "-o", str(log)]


def parse_version(text: str) -> tuple[int, ...]:
    """(4, 2, 1) from `criu --version`'s "Version: 4.2.1" line; () if there is none."""
    for line in text.splitlines():
        if line.startswith("Version:"):
            nums = []
            for part in line.split(":", 1)[1].strip().split("."):
                digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
                if not digits:
                    break
                nums.append(int(digits))
            return tuple(nums)
    return ()


#: setsockopt level and option that put a TCP socket in and out of repair mode (linux/tcp.h).
_SOL_TCP, _TCP_REPAIR, _TCP_REPAIR_OFF = 6, 19, 0
_SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified table)
_libc = ctypes.CDLL(None, use_errno=True)


def end_tcp_repair(pid: int) -> int:
    """Take the job's TCP sockets out of repair mode; returns how many were in it.

    criu dump --tcp-established puts each connection in repair mode and, after a dump with -s,
    leaves it so (it expects the job to be killed): a job resumed after a failed move would
    find its connections dead. The sockets are fetched with pidfd_getfd(2) and switched back,
    which also sends the window probe that restarts a stalled flow.
    """
    fixed = 0
    for p in tree_pids(pid):
        try:
            pidfd = os.pidfd_open(p)
        except OSError:
            continue
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    if not os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:["):
                        continue
                    ours = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd), 0)
                    if ours < 0:
                        continue
                    with socket.socket(fileno=ours) as sk:
                        if sk.type != socket.SOCK_STREAM or sk.family not in (
                            socket.AF_INET,
                            socket.AF_INET6,
                        ):
                            continue
                        if sk.getsockopt(_SOL_TCP, _TCP_REPAIR):
                            sk.setsockopt(_SOL_TCP, _TCP_REPAIR, _TCP_REPAIR_OFF)
                            fixed += 1
        except OSError:
            pass
        finally:
            os.close(pidfd)
    return fixed


def resume_dumped(pid: int, keep_stopped: set[int] | None = None) -> None:
    """Let a job that was dumped with -s go on here (the rollback of a failed move): its TCP
    sockets out of repair mode, then every process of it continued (dump -s stopped each), but
    those the job itself had stopped (by their PIDs in its namespace: migration/procstate.py)."""
    end_tcp_repair(pid)
    procstate.resume(pid, keep_stopped or set())


class CriuDriver:
    """Runs one criu binary; every call logs at -v4 (into the images directory by default).

    criu runs as a direct child of this process (asyncio's fork-exec), so with -d -S the
    restored job is this process's child too: the agent waitpid()s it like a job it spawned.
    """

    def __init__(self, criu: str = "", timeout_s: float = 120.0) -> None:
        found = find_criu(criu)
        if found is None:
            raise CriuError(f"no criu found: {setup_fix()}, or set PYMOSIX_CRIU")
        self.criu = found
        self.timeout_s = timeout_s
        self._version: tuple[int, ...] | None = None

    async def version(self) -> tuple[int, ...]:
        """criu's version as numbers, (4, 2, 1); () if it does not say. Asked once."""
        if self._version is None:
            proc = await asyncio.create_subprocess_exec(
                self.criu,
                "--version",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            self._version = parse_version(out.decode(errors="replace"))
        return self._version

    async def _run(
        self,
        args: Sequence[str],
        log: Path,
        pass_fds: Sequence[int] = (),
        hand_over: socket.socket | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """Run criu to its end. hand_over is a socket criu gets and we close once it runs, so
        that its peer sees the end of the stream when criu exits."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *PRIVATE_FILES,
                *prefix,
                self.criu,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=tuple(pass_fds),
            )
        except OSError as e:
            raise CriuError(f"cannot run {self.criu}: {e.strerror or e}") from None
        finally:
            if hand_over is not None:
                hand_over.close()
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except BaseException as e:
            # Timed out or cancelled: never leave a criu behind holding the job frozen.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(e, TimeoutError):
                raise CriuError(f"criu {args[0]} took longer than {self.timeout_s:.0f} s") from None
            raise
        if proc.returncode != 0:
            try:
                text = log.read_text(errors="replace")
            except OSError:
                text = err.decode(errors="replace")
            raise CriuError(f"criu {args[0]} failed: {last_error(text)} (log: {log})")

    async def check(self) -> str:
        """criu's version line if `criu check` passes; CriuError with its complaint if not."""
        version = ""
        for what in ("--version", "check"):
            proc = await asyncio.create_subprocess_exec(
                self.criu,
                what,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            text = out.decode(errors="replace")
            if proc.returncode != 0:
                raise CriuError(f"'{self.criu} {what}' fails: {last_error(text)}")
            if what == "--version":
                version = next((ln for ln in text.splitlines() if ln.startswith("Version")), "")
                self._version = parse_version(text)
        return f"{self.criu} {version.replace('Version: ', 'version ').strip()}"

    async def dump(
        self,
        pid: int,
        images: Path,
        *,
        leave_stopped: bool = True,
        log: Path | None = None,
        page_socket: socket.socket | None = None,
        owner: tuple[int, int] | None = None,
    ) -> Path:
        """Freeze and dump the job whose namespace init is `pid`; returns the log path.

        With leave_stopped the job stays SIGSTOPped after the dump: SIGCONT is the rollback.
        With page_socket (closed here once criu runs) the pages go to the page server at its
        other end instead of into images. owner is the job's (uid, gid), for `owner_prefix`.
        """
        images.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(images, 0o700)
        log = log or images / "dump.log"
        fd = None if page_socket is None else page_socket.fileno()
        args = dump_args(pid, images, log, leave_stopped, fd)
        prefix: list[str] = []
        if owner is not None and owner[0] != 0 and not self.can_read_rlimits:
            # Made just before: a criu of another version that finds it stale removes it.
            await self.ensure_kdat_cache()
            prefix = owner_prefix(*owner)
        await self._run(
            args, log, pass_fds=() if fd is None else (fd,), hand_over=page_socket, prefix=prefix
        )
        return log
        await self.ensure_kdat_cache()
        try:
            await self._run(
                args,
                log,
                pass_fds=() if fd is None else (fd,),
                hand_over=page_socket,
                prefix=owner_prefix(*owner),
            )
        except CriuError as e:
            # Another criu (another version) found the cache stale and removed it between our
            # check and this run: criu failed before touching the job. Make it again, once.
            if "kerndat" not in str(e) or page_socket is not None:
                raise
            KDAT_BOOT.unlink(missing_ok=True)
            await self.ensure_kdat_cache()
            await self._run(args, log, prefix=owner_prefix(*owner))
        return log

    @property
    def can_read_rlimits(self) -> bool:
        """Whether root's criu may read other users' rlimits (it has CAP_SYS_RESOURCE)."""
        return has_capability(CAP_SYS_RESOURCE)

    async def ensure_kdat_cache(self) -> None:
        """Make criu's kernel-feature cache if it is missing or from an earlier boot.

        A criu whose real uid is not root (see `owner_prefix`) cannot probe the kernel itself:
        libnftables refuses to run with real and effective uids apart. With the cache it does
        not probe. criu saves the cache only on a tmpfs /run; where /run is not one, the probe
        runs in a private mount namespace with a tmpfs there, and the cache is copied out.
        """
        boot = _boot_id()
        with contextlib.suppress(OSError):
            if KDAT_CACHE.exists() and KDAT_BOOT.read_text().strip() == boot:
                return
        with tempfile.TemporaryDirectory(prefix="pymosix-kdat-") as real_run:
            script = (
                'mount --bind /run "$1" && mount -t tmpfs pymosix-kdat /run && '
                '"$2" check >/dev/null 2>&1; cp /run/criu.kdat "$1/criu.kdat.new"'
            )
            proc = await asyncio.create_subprocess_exec(
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                real_run,
                self.criu,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
        new = KDAT_CACHE.with_name("criu.kdat.new")
        if proc.returncode != 0 or not new.exists():
            raise CriuError(
                f"could not make criu's kernel-feature cache {KDAT_CACHE}: "
                f"{err.decode(errors='replace').strip()[-200:] or 'criu check failed'}"
            )
        new.replace(KDAT_CACHE)
        KDAT_BOOT.write_text(boot + "\n")

    async def page_server(self, images: Path, sock: socket.socket, log: Path | None = None) -> Path:
        """Take one dump's pages from the dumper at the other end of sock (closed here once
        criu runs) into images; returns when the dumper is done. Returns the log path."""
        log = log or images / "page-server.log"
        fd = sock.fileno()
        await self._run(page_server_args(images, log, fd), log, pass_fds=(fd,), hand_over=sock)
        return log

    async def restore(
        self,
        images: Path,
        inherit_fds: Mapping[int, str],
        *,
        pidfile: Path | None = None,
        join_netns: str | None = None,
        log: Path | None = None,
        leave_stopped: bool = False,
        lazy: bool = False,
        launcher: Sequence[str] = (),
        extra_fds: Sequence[int] = (),
    ) -> RestoreResult:
        """Restore the job as our child; `inherit_fds` maps our fd -> the image's ``pipe:[INO]``.

        join_netns is a netns file (``/run/netns/NAME``) the job is restored into. With a
        `launcher` (argv run before criu's, given `extra_fds` too), the job is the child of the
        process criu runs under: its holder (migration/heldrestore.py).
        """
        log = log or images / "restore.log"
        pidfile = pidfile or images / "restore.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        for fd in inherit_fds:
            os.set_inheritable(fd, True)
        args = restore_args(images, log, pidfile, inherit_fds, join_netns, leave_stopped, lazy)
        await self._run(args, log, pass_fds=[*inherit_fds, *extra_fds], prefix=launcher)
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            raise CriuError("criu restore did not write the restored PID") from None
        return RestoreResult(pid, log)
