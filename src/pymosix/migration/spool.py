"""A stopping agent's unsent output, kept on disk for its next agent (docs/reliability.md).

On SIGTERM (a `systemctl stop` or `restart`) an agent leaves the jobs it cannot send away to
their holders. It stops reading their pipes and writes what it had read and mosrun may not have
yet (outlog.OutLog: the frames sent and not confirmed, and those still queued) to
`STATE_DIR/jobs/out-PID.spool`, root-only. The next agent, adopting the job, takes the file and
sends first what mosrun lacks of it, by position: a restart loses none of the job's output and
repeats none. A kill -9 leaves no spool: what that agent held is lost (and said when known).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import msgpack

log = logging.getLogger(__name__)

Frames = list[tuple[int, int, bytes]]

#: A spool larger than this is not read (what an agent holds of one job is far less).
MAX_BYTES = 256 << 20


def path(root: Path, pid: int) -> Path:
    return root / f"out-{pid}.spool"


def write(root: Path, pid: int, frames: Frames) -> None:
    """Keep `frames` (fd, position, bytes) of job `pid` for the next agent."""
    if not frames:
        return
    body = msgpack.packb({"v": 1, "frames": [[fd, at, data] for fd, at, data in frames]})
    tmp = path(root, pid).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    tmp.replace(path(root, pid))


def take(root: Path, pid: int) -> Frames:
    """The frames a stopped agent kept of job `pid`, and the file gone; [] if none (or a file
    that is not one: said in the log, and dropped)."""
    p = path(root, pid)
    try:
        st = p.lstat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or st.st_size > MAX_BYTES:
            raise ValueError("not this agent's own file")
        wire = msgpack.unpackb(p.read_bytes(), raw=False)
        frames = [
            (int(fd), int(at), bytes(data))
            for fd, at, data in wire["frames"]
            if fd in (1, 2) and at >= 0 and isinstance(data, bytes)
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError, msgpack.ExtraData) as e:
        log.warning("job %d: its output spool %s is unusable (%s); dropped", pid, p, e)
        frames = []
    with contextlib.suppress(OSError):
        p.unlink()
    return frames


def drop(root: Path, pid: int) -> None:
    with contextlib.suppress(OSError):
        path(root, pid).unlink()
