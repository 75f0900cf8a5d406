"""Post-copy moves: the job runs on the target once its small images arrived; its memory follows.

Source: `criu dump --lazy-pages -s --ps-socket FD --status-fd SFD` writes every image but the
lazily served memory, says so on SFD, then serves pages on FD until the target has them all.
Target: `criu lazy-pages --page-server --ps-socket FD` fetches pages on demand (faults) and
pushes the rest in the background into the job that `criu restore --lazy-pages` made. Each FD
is one end of a local socketpair whose other end an agent relays over the authenticated,
encrypted channel (as pages.py does for stop-and-copy): CRIU never listens on the network.

Exactly one copy (docs/reliability.md, "Post-copy moves"): home's commit point decides, as for
every move. The source queues a SIGSTOP into every process of the job as soon as its images are
ready, so that nothing criu does on a failure (it resumes a dumpee whose lazy transfer failed)
can make the original run: only the agent resumes it, and only on a rollback. Once the move
committed the original stays frozen until the target has every page and is then killed; if the
transfer breaks after the commit the job is lost (never resumed from the frozen original, whose
state is older than what the target's copy already did). The target's agent kills its copy
before it lets go of the page stream (a page that never came would read as zeros once the
lazy-pages daemon is gone); if the daemon fails first, or the agent dies, a watcher outside the
agent kills the copy the moment the daemon exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pymosix.errors import CriuError, MigrationError
from pymosix.migration import cputime, procstate
from pymosix.migration.cantmove import process_owner, tree_pids
from pymosix.migration.channel import RAW, Channel
from pymosix.migration.criu import CAP_SYS_RESOURCE, PRIVATE_FILES, has_capability
from pymosix.migration.imagecheck import receive_rest
from pymosix.migration.link import Frame
from pymosix.migration.needs import tree_rss
from pymosix.migration.pages import PAGES_CHUNK, page_socketpair, relay_pages

if TYPE_CHECKING:
    from pymosix.migration.engine import MigrationEngine
    from pymosix.migration.hosted import HostedJob

log = logging.getLogger(__name__)

#: CRIU's lazy mode grows its page pipes with F_SETPIPE_SZ to this much; without
#: CAP_SYS_RESOURCE the kernel allows at most fs.pipe-max-size (1 MiB by default).
PIPE_NEEDED = 4 << 20
PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
#: The oldest CRIU lazy mode was tried with on this kernel (docs/migration.md).
MIN_CRIU = (4, 2)
#: Seconds the source waits for the dump's images (the freeze, before any page goes).
IMAGES_S = 120.0
#: Seconds without a frame from the peer while pages flow (the target beats, the lazy-pages
#: daemon asks and pushes all the time): then the peer or the link is gone.
PAGES_SILENT_S = 30.0


# --- when (pure) -------------------------------------------------------------------------


def lazy_problem(
    pipe_max: int, has_sys_resource: bool, criu_version: tuple[int, ...]
) -> str | None:
    """Why CRIU's lazy mode cannot work on this node, or None if it can."""
    if criu_version and criu_version < MIN_CRIU:
        have = ".".join(map(str, criu_version))
        return f"CRIU {have} is older than 4.2 (post-copy needs CRIU >= 4.2)"
    if not has_sys_resource and pipe_max < PIPE_NEEDED:
        return (
            f"fs.pipe-max-size is {pipe_max} and the agent lacks CAP_SYS_RESOURCE, so CRIU's "
            f"lazy mode would fail (fix: sysctl fs.pipe-max-size={PIPE_NEEDED})"
        )
    return None


def want_postcopy(rss: int, min_mib: int, problem: str | None) -> tuple[bool, str | None]:
    """(offer post-copy, why not although the job is big enough). Only big jobs pay for the
    lazy transfer (a second round trip per fault); min_mib 0 is never."""
    if min_mib <= 0 or rss < min_mib << 20:
        return False, None
    if problem is not None:
        return False, problem
    return True, None


def local_problem(criu_version: tuple[int, ...]) -> str | None:
    """lazy_problem() of this node as it is now (pipe-max-size can change at any time)."""
    try:
        pipe_max = int(PIPE_MAX_SIZE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pipe_max = 0
    return lazy_problem(pipe_max, has_capability(CAP_SYS_RESOURCE), criu_version)


# --- criu argv ------------------------------------------------------------------------------


def lazy_dump_args(base: list[str], ps_fd: int, status_fd: int) -> list[str]:
    """A `dump_args` argv (without a page socket) turned into a lazy dump that serves its
    memory on ps_fd and says on status_fd when every other image is written."""
    i = base.index("-v4")
    return [
        *base[:i],
        "--lazy-pages",
        "--ps-socket",
        str(ps_fd),
        "--status-fd",
        str(status_fd),
        *base[i:],
    ]


def lazy_daemon_args(images: Path, log_path: Path, ps_fd: int, status_fd: int) -> list[str]:
    return [
        "lazy-pages",
        "-D",
        str(images),
        "--page-server",
        "--ps-socket",
        str(ps_fd),
        "--status-fd",
        str(status_fd),
        "-v4",
        "-o",
        str(log_path),
    ]


#: Runs the lazy-pages daemon; if it fails (its page stream broke: the source, the link or
#: this agent died) the restored job is killed before it could run on memory never filled.
WATCHER = (
    "sh",
    "-c",
    'pidfile=$1; shift; "$@"; rc=$?; '
    'if [ $rc -ne 0 ] && [ -s "$pidfile" ]; then kill -9 "$(cat "$pidfile")" 2>/dev/null; fi; '
    "exit $rc",
    "watch",
)


async def _wait_status(fd: int, proc: asyncio.subprocess.Process, what: str) -> None:
    """Wait until criu writes to its --status-fd (or exits without doing so)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        exited = asyncio.ensure_future(proc.wait())
        await asyncio.wait({ready, exited}, timeout=IMAGES_S, return_when="FIRST_COMPLETED")
        if not ready.done():
            exited.cancel()
            raise CriuError(f"criu {what} did not get ready")
        exited.cancel()
        try:
            got = os.read(fd, 1)
        except BlockingIOError:
            got = b""
        if not got:
            raise CriuError(f"criu {what} exited before it was ready")
    finally:
        loop.remove_reader(fd)


async def _criu(
    driver_criu: str, args: list[str], pass_fds: tuple[int, ...], prefix: list[str]
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *PRIVATE_FILES,
        *prefix,
        driver_criu,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        pass_fds=pass_fds,
    )


def _criu_failure(log_path: Path, what: str) -> str:
    from pymosix.migration.criu import last_error

    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    return f"criu {what} failed: {last_error(text)} (log: {log_path})"


async def source_offer(job: HostedJob) -> bool:
    """Whether the source offers post-copy for this job (big enough, and lazy mode works
    here); a job that would pay but cannot gets a log line saying why and the fix."""
    version = await job.engine.criu.version()
    # Its size now: the periodic figure may predate what a young job has just allocated.
    rss = max(job.rss, tree_rss(job.pid))
    wanted, why_not = want_postcopy(rss, job.engine.postcopy_min_mib, local_problem(version))
    if why_not:
        log.warning("job %d moves by stop-and-copy, not post-copy: %s", job.meta.home_pid, why_not)
    return wanted


async def target_takes(engine: MigrationEngine, p: dict[str, Any], home_pid: int) -> bool:
    """Whether the target takes an offered post-copy (its own CRIU and limits allow it)."""
    if not p.get("postcopy"):
        return False
    why_not = local_problem(await engine.criu.version())
    if why_not:
        log.warning("job %d comes by stop-and-copy, not post-copy: %s", home_pid, why_not)
    return why_not is None


# --- the source -----------------------------------------------------------------------------


@dataclass
class LazySource:
    """A lazy dump in progress: its criu, the relay of its pages, and the channel the move's
    other frames come out of (`channel`, which looks like a Channel to hosted.py)."""

    ch: Channel
    proc: asyncio.subprocess.Process
    sock: socket.socket
    log_path: Path
    frozen_at: float
    others: asyncio.Queue[tuple[int, dict[str, Any]] | BaseException] = field(
        default_factory=asyncio.Queue
    )
    pages_out: int = 0
    relay: asyncio.Task[None] | None = None

    @property
    def channel(self) -> Channel:
        return cast(Channel, _Demuxed(self))

    def start_relay(self) -> None:
        self.relay = asyncio.ensure_future(self._relay())

    async def _relay(self) -> None:
        """criu's page server <-> the channel; every other frame goes to `others`."""
        loop = asyncio.get_running_loop()

        async def outbound() -> None:
            frame = bytearray(1 + PAGES_CHUNK)
            frame[0] = Frame.PAGES | RAW
            view = memoryview(frame)
            while True:
                n = await loop.sock_recv_into(self.sock, view[1:])
                if not n:
                    await self.ch.send(Frame.PAGES_END, {})
                    return
                self.pages_out += n
                await self.ch.send_plaintext(view[: 1 + n])

        out = asyncio.ensure_future(outbound())
        try:
            while True:
                kind, p = await asyncio.wait_for(self.ch.recv(), PAGES_SILENT_S)
                if kind == Frame.PAGES:
                    with contextlib.suppress(OSError):
                        await loop.sock_sendall(self.sock, p.get("data") or b"")
                elif kind == Frame.PAGES_END:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_WR)
                    await out
                    return
                else:
                    self.others.put_nowait((kind, p))
        except BaseException as e:
            self.others.put_nowait(e if isinstance(e, Exception) else EOFError())
            raise
        finally:
            out.cancel()
            await asyncio.gather(out, return_exceptions=True)

    async def stop(self) -> None:
        """End the dump here (a rollback, or the target is gone): criu's page socket closes,
        criu ends, and the job stays stopped (the SIGSTOP queued at the freeze)."""
        if self.relay is not None:
            self.relay.cancel()
            await asyncio.gather(self.relay, return_exceptions=True)
        self.sock.close()
        await self._reap_criu(5.0)

    async def _reap_criu(self, timeout_s: float) -> int | None:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            # Killing criu detaches it from the job, which then takes the queued SIGSTOP.
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
            return None

    async def last_page(self, job_id: int) -> float:
        """Wait until the target has every page (criu's dump ends); seconds since the freeze
        when it did. MigrationError if the transfer broke."""
        assert self.relay is not None
        try:
            await self.relay
        except (OSError, EOFError, TimeoutError, MigrationError) as e:
            self.sock.close()
            await self._reap_criu(5.0)
            raise MigrationError(f"the page transfer broke: {e or type(e).__name__}") from None
        rc = await self._reap_criu(30.0)
        self.sock.close()
        if rc != 0:
            raise MigrationError(_criu_failure(self.log_path, "dump (lazy pages)"))
        took = time.monotonic() - self.frozen_at
        self.log_path.unlink(missing_ok=True)
        log.info("job %d: the target has every page, %.3f s after the freeze", job_id, took)
        return took


class _Demuxed:
    """The move's channel for hosted.py while pages flow on it: sends go out as they are,
    receives come from what the page relay set aside."""

    def __init__(self, src: LazySource) -> None:
        self._src = src

    async def send(self, kind: int, payload: dict[str, Any]) -> None:
        await self._src.ch.send(kind, payload)

    async def recv(self) -> tuple[int, dict[str, Any]]:
        got = await self._src.others.get()
        if isinstance(got, BaseException):
            self._src.others.put_nowait(got)  # every later recv fails the same way
            raise EOFError(str(got) or type(got).__name__)
        return got


class _Silent:
    """A channel whose receive fails after PAGES_SILENT_S without a frame."""

    def __init__(self, ch: Channel) -> None:
        self._ch = ch

    async def send(self, kind: int, payload: dict[str, Any]) -> None:
        await self._ch.send(kind, payload)

    async def send_plaintext(self, plaintext: Any) -> None:
        await self._ch.send_plaintext(plaintext)

    async def recv(self) -> tuple[int, dict[str, Any]]:
        return await asyncio.wait_for(self._ch.recv(), PAGES_SILENT_S)


async def dump_lazy(job: HostedJob, ch: Channel, images: Path) -> LazySource:
    """Freeze the job and write its images but the memory; return once they are written, with
    a SIGSTOP queued in every process of the job (so only this agent ever resumes it)."""
    driver = job.engine.criu
    images.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = Path(job.engine.image_root) / f"dump-{job.meta.home_pid}.log"
    criu_end, ours = page_socketpair()
    status_r, status_w = os.pipe()
    from pymosix.migration.criu import dump_args, owner_prefix

    base = dump_args(job.pid, images, log_path, leave_stopped=True)
    args = lazy_dump_args(base, criu_end.fileno(), status_w)
    owner = process_owner(job.pid)
    prefix: list[str] = []
    if owner is not None and owner[0] != 0 and not driver.can_read_rlimits:
        await driver.ensure_kdat_cache()
        prefix = owner_prefix(*owner)
    job.meta.freezes += 1
    frozen_at = time.monotonic()
    try:
        proc = await _criu(driver.criu, args, (criu_end.fileno(), status_w), prefix)
    except OSError as e:
        for fd in (status_r, status_w):
            os.close(fd)
        criu_end.close()
        ours.close()
        raise CriuError(f"cannot run {driver.criu}: {e.strerror or e}") from None
    os.close(status_w)
    criu_end.close()
    src = LazySource(ch, proc, ours, log_path, frozen_at)
    try:
        os.set_blocking(status_r, False)
        await _wait_status(status_r, proc, "dump")
    except BaseException as e:
        await src.stop()
        if isinstance(e, CriuError):
            raise CriuError(_criu_failure(log_path, "dump")) from None
        raise
    finally:
        os.close(status_r)
    for pid in tree_pids(job.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    src.start_relay()
    return src


# --- the target -----------------------------------------------------------------------------


async def receive(
    engine: MigrationEngine,
    ch: Channel,
    p: dict[str, Any],
    moved: Callable[[BaseException | None], None],
) -> bool:
    """Take a job by post-copy: small images, restore with lazy pages, commit, then its memory.
    READY (with postcopy) is already sent. Always False (the channel closes when it returns)."""
    from pymosix.migration import receive as taking  # it imports this module
    from pymosix.migration.lifecycle import JobMeta

    meta = JobMeta.from_wire(p["meta"])
    images = engine.image_root / f"in-{meta.home_pid}-{secrets.token_hex(4)}"
    images.mkdir(mode=0o700)
    criu_end, ours = page_socketpair()
    status_r, status_w = os.pipe()
    pidfile = images / "restore.pid"
    log_path = engine.image_root / f"lazy-{meta.home_pid}.log"
    daemon: asyncio.subprocess.Process | None = None
    relay: asyncio.Future[int] | None = None
    beats: asyncio.Future[None] | None = None
    hosted = None
    committed = False
    t0 = time.monotonic()
    try:
        done = await receive_rest(ch, images, engine.max_image_bytes, p.get("needs"))
        t_images = time.monotonic()
        keys = {int(k): str(v) for k, v in dict(p["keys"]).items()}
        stint = {int(k): float(v) for k, v in dict(done.get("cpu_used") or {}).items()}
        spent = cputime.account(meta, stint)
        beats = asyncio.ensure_future(taking.beat(ch))
        args = lazy_daemon_args(images, log_path, criu_end.fileno(), status_w)
        daemon = await asyncio.create_subprocess_exec(
            *WATCHER,
            str(pidfile),
            *PRIVATE_FILES,
            engine.criu.criu,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            pass_fds=(criu_end.fileno(), status_w),
            start_new_session=True,  # outlives this agent, to kill the job if the agent dies
        )
        os.close(status_w)
        status_w = -1
        criu_end.close()
        os.set_blocking(status_r, False)
        await _wait_status(status_r, daemon, "lazy-pages")
        watched = cast(Channel, _Silent(ch))
        relay = asyncio.ensure_future(relay_pages(watched, ours, engine.max_image_bytes))
        hosted = await taking.restore_job(
            engine,
            meta,
            images,
            keys,
            bytes(done.get("stdin") or b""),
            bool(done.get("stdin_eof")),
            lazy=True,
        )
        await asyncio.to_thread(cputime.carry_limits, hosted.pid, spent)
        t_restored = time.monotonic()
        error = await taking.commit(engine, hosted, str(p.get("move") or ""))
        if error is not None:
            raise MigrationError(f"restored, but {error}")
        committed = True
        # No move out before its memory is all here: migrate_out waits for this lock.
        await hosted._moving.acquire()
        procstate.resume(hosted.pid, {int(x) for x in done.get("stopped") or []})
        engine.add_hosted(hosted)
        moved(None)
        if await engine.faults.passes("RESTORED"):
            with contextlib.suppress(OSError, EOFError):
                await ch.send(Frame.RESTORED, {"pid": hosted.pid, "image_bytes": 0})
        log.info(
            "job %d arrived from node %d by post-copy (pid %d here): images in %.3f s, "
            "restored in %.3f s, running %.3f s after the offer was taken",
            meta.home_pid,
            ch.peer_id,
            hosted.pid,
            t_images - t0,
            t_restored - t_images,
            time.monotonic() - t0,
        )
        beats.cancel()
        got = await _pages_until_done(relay, daemon, log_path)
        log.info(
            "job %d: every page in (%d MiB), %.3f s after the offer was taken",
            meta.home_pid,
            got >> 20,
            time.monotonic() - t0,
        )
        return False
    except (
        CriuError,
        MigrationError,
        OSError,
        EOFError,
        ValueError,
        TimeoutError,
        KeyError,
    ) as e:
        why = str(e) or type(e).__name__
        if hosted is not None:
            # Killed before the page stream is let go (and before the watcher could kill a
            # reused PID: not reaped yet): a fault must never be answered with a zeroed page.
            _kill_tree(hosted.pid)
        await _end_daemon(daemon)
        if committed and hosted is not None:
            # Its memory stopped coming after it ran here: it cannot go on; home hears it lost.
            log.error("job %d: its memory stopped coming (%s); the job is lost", meta.home_pid, why)
            from pymosix.migration.hosted import reap

            hosted.lose()
            await reap(hosted.pid)
            hosted.finish()
            return False
        log.warning("could not take job %d by post-copy: %s", meta.home_pid, why)
        moved(e)
        if hosted is not None:
            await taking.discard(engine, hosted)
        with contextlib.suppress(OSError, EOFError):
            await ch.send(Frame.FAILED, {"error": why})
        return False
    finally:
        if beats is not None:
            beats.cancel()
        if hosted is not None and daemon is not None and daemon.returncode is None:
            # Cancelled (the agent stops) with pages still to come: the job goes before them.
            _kill_tree(hosted.pid)
        if hosted is not None and hosted._moving.locked():
            hosted._moving.release()
        if relay is not None and not relay.done():
            relay.cancel()
        if relay is not None:
            await asyncio.gather(relay, return_exceptions=True)
        ours.close()
        criu_end.close()
        for fd in (status_r, status_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        await _end_daemon(daemon)
        shutil.rmtree(images, ignore_errors=True)


def _kill_tree(pid: int) -> None:
    """SIGKILL every process of the job at once, not only its init (its children would die
    only once the init has)."""
    for p in tree_pids(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


async def _end_daemon(daemon: asyncio.subprocess.Process | None) -> None:
    if daemon is not None and daemon.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        await daemon.wait()


async def _pages_until_done(
    relay: asyncio.Future[int], daemon: asyncio.subprocess.Process, log_path: Path
) -> int:
    """Bytes of pages received once the lazy-pages daemon has every page; MigrationError if
    the stream broke or the daemon failed."""
    try:
        got = await relay
    except (OSError, EOFError, TimeoutError) as e:
        raise MigrationError(f"the page stream broke: {e or type(e).__name__}") from None
    try:
        rc = await asyncio.wait_for(daemon.wait(), 30)
    except TimeoutError:
        raise MigrationError("criu lazy-pages did not end") from None
    if rc != 0:
        raise MigrationError(_criu_failure(log_path, "lazy-pages"))
    return got
