"""The target's last look before `criu restore`: the files the received image will open are the
ones the offer listed (issue 14, item 5).

The offer (needs.py) lists every file the job has open or mapped, and the target checked those
before anything froze. The image that follows is what CRIU, run as root, actually opens; nothing
tied the two together, so a malicious or buggy source could have the restore open a file it never
offered (/etc/shadow for writing, say). Here the image's file entries (criuimage.py) are compared
with the offer: every regular file must be listed, and one listed read-only must not be opened for
writing. Pseudo files (needs.py does not list them) are taken read-only from /proc and /sys, and
from /dev only the harmless devices a job's stdio or terminal uses. A file the job had deleted is
re-created by CRIU beside its old path, so that directory must be one the job works in. And
since the offer comes from the same source, each file must also be one the job's user may open
that way here (mode bits, as the kernel reads them): root's restore opens it for them.
Any disagreement refuses the restore with one line; the source then resumes the job.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymosix.errors import DecodeError
from pymosix.migration.criuimage import GHOST, LINKED, ImageFormatError, Opened, opened_files
from pymosix.migration.criuimage import wanted as _wanted
from pymosix.migration.images import ImageError, ImageReceiver
from pymosix.migration.link import Frame
from pymosix.migration.needs import SYSTEM_PREFIXES, Needs

if TYPE_CHECKING:
    from pymosix.migration.channel import Channel

#: Devices a restore may open in any mode: they hand the job nothing of the machine's.
HARMLESS_DEVICES = frozenset(
    ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx")
)
#: Read-only pseudo files: the job's own /proc (its PID namespace) and /sys.
_READ_ONLY_PSEUDO = ("/proc/", "/sys/")
#: Where a job's deleted temporary files may be re-created.
_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _under(path: str, dirs: tuple[str, ...] | frozenset[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _pseudo(path: str) -> bool:
    return (
        path.startswith(("/proc/", "/sys/", "/dev/")) or path in ("/proc", "/sys", "/dev")
    ) and (not path.startswith("/dev/shm/"))


def _why(
    o: Opened,
    listed: Mapping[str, str],
    workdirs: frozenset[str],
    job: tuple[int, frozenset[int]],
) -> str | None:
    """Why the restore must not open `o`; None if it may."""
    path = o.path
    mode = " for writing" if o.write else ""
    if not path.startswith("/") or posixpath.normpath(path) != path:
        return f"the image opens {path!r}, which is not a plain absolute path"
    if o.how == frozenset({"root"}):
        if path == "/" and not o.write:
            return None
        return f"the image sets the job's root directory to {path}, which the offer did not list"
    if o.remap in (GHOST, LINKED):
        # A file the job had deleted: CRIU makes it (or a link to it) anew beside the old path.
        where = posixpath.dirname(path)
        if not (_under(where, _TEMP_DIRS) or where in workdirs):
            return (
                f"the image re-creates a deleted file {path}, in a directory the offer did not list"
            )
        if o.made is None:
            return None
        uid, gid, made = o.made
        what = f"the image re-creates a deleted file {path}"
        if stat.S_IFMT(made) not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFIFO):
            return f"{what} as a device or other special file, which a job may not be given"
        if made & (stat.S_ISUID | stat.S_ISGID):
            return f"{what} set-user-ID or set-group-ID, which a job may not be given"
        if job[0] != 0 and (uid != job[0] or gid not in job[1]):
            return f"{what} owned by uid {uid} gid {gid}, not by the job's user"
        return None
    if _pseudo(path):
        if path in HARMLESS_DEVICES or path.startswith("/dev/pts/"):
            return None
        if path.startswith(_READ_ONLY_PSEUDO) and not o.write:
            return None
        return f"the image opens {path}{mode}, which a job may not be given"
    how = listed.get(path)
    if how is None:
        return f"the image opens {path}{mode}, which the offer did not list"
    if o.write and how != "open-rw":
        return f"the image opens {path} for writing; the offer listed it as read-only ({how})"
    return None


def refusal(
    opened: Mapping[int, Opened], needs: Needs, groups: frozenset[int] | None = None
) -> str | None:
    """Why the image must not be restored, as one line naming the file; None if it may.
    `groups`: the job's user's groups (its gid alone if not given)."""
    job = (needs.uid, groups if groups is not None else frozenset((needs.gid,)))
    listed = {f.path: f.how for f in needs.files}
    # Where the job works: its cwd and its data files' directories, not the system's.
    workdirs = frozenset(
        f.path if f.how == "cwd" else posixpath.dirname(f.path)
        for f in needs.files
        if f.how == "cwd" or not f.path.startswith(SYSTEM_PREFIXES)
    )
    for o in sorted(opened.values(), key=lambda o: (o.path, o.write)):
        why = _why(o, listed, workdirs, job)
        if why:
            return why
    return None


def _allowed(st: os.stat_result, uid: int, groups: frozenset[int], want: int) -> bool:
    """Whether the mode bits give uid (in groups) the `want` bits (4 read, 2 write, 1 search),
    as the kernel picks them: the owner's, else the group's, else the others'."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def access_refusal(
    opened: Mapping[int, Opened],
    user: str,
    uid: int,
    groups: frozenset[int],
    lookup: Callable[[str], os.stat_result] = os.stat,
) -> str | None:
    """Why the job's user may not open a file the image opens, as CRIU (root) would open it
    for them; None if they may. The offer's word is not enough: a source could list /etc/shadow
    as open for writing. Pseudo files, / and files the job had deleted are judged by `refusal`."""
    if uid == 0:
        return None  # root's job: root may open anything, and the restore runs as root anyway
    who = f"user {user} (uid {uid})"
    for o in sorted(opened.values(), key=lambda o: (o.path, o.write)):
        path = o.path
        if o.how == frozenset({"root"}) or o.remap is not None or _pseudo(path):
            continue
        try:
            parts = path.strip("/").split("/")
            for i in range(len(parts)):
                where = "/" + "/".join(parts[:i])
                if not _allowed(lookup(where), uid, groups, 1):
                    return f"the image opens {path}; {who} may not enter {where} on this node"
            st = lookup(path)
        except OSError as e:
            if not o.write and _dangling_symlink(path):
                continue  # an O_PATH fd on a symlink: it reads nothing through it
            return f"the image opens {path}, which this node cannot look up ({e.strerror})"
        if stat.S_ISDIR(st.st_mode):
            want, verb = 1, "enter"
        elif o.write:
            want, verb = 2, "write"
        elif o.how == frozenset({"exe"}):
            want, verb = 1, "run"
        else:
            want, verb = 4, "read"
        if not _allowed(st, uid, groups, want):
            return f"the image opens {path}; {who} may not {verb} it on this node"
    return None


def _dangling_symlink(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _groups(user: str, gid: int) -> frozenset[int]:
    try:
        return frozenset(os.getgrouplist(user, gid))
    except (KeyError, OSError):
        return frozenset((gid,))


def read(images: Path) -> dict[int, Opened]:
    """What a restore of the image in `images` opens (ImageError if it is malformed)."""
    data: dict[str, bytes] = {}
    for p in images.iterdir():
        if _wanted(p.name) and p.is_file() and not p.is_symlink():
            data[p.name] = p.read_bytes()
    if "files.img" not in data and "reg-files.img" not in data:
        raise ImageError("malformed image: it has no files.img")
    try:
        return opened_files(data)
    except ImageFormatError as e:
        raise ImageError(f"malformed image: {e}") from None


def check(images: Path, needs_wire: Any) -> None:
    """Raise ImageError with the reason unless the image opens only what the offer listed."""
    try:
        needs = Needs.from_wire(needs_wire)
    except (KeyError, TypeError, ValueError) as e:
        raise ImageError(f"malformed offer: {e or type(e).__name__}") from None
    opened = read(images)
    groups = _groups(needs.user, needs.gid)
    why = refusal(opened, needs, groups) or access_refusal(opened, needs.user, needs.uid, groups)
    if why:
        raise ImageError(why)


async def receive_rest(ch: Channel, images: Path, limit: int, needs_wire: Any) -> dict[str, Any]:
    """The target's side of a move after the pages: write the image files that follow
    (images.py checks each), then check what the image opens against the offer; the DONE
    frame's payload. ImageError if the image may not be restored."""
    already = sum(f.stat().st_size for f in images.iterdir())
    receiver = ImageReceiver(images, limit, already)
    try:
        while True:
            kind, p = await asyncio.wait_for(ch.recv(), 60)
            if kind == Frame.DONE:
                break
            if kind != Frame.FILE:
                raise DecodeError(f"unexpected frame {kind} in an image")
            receiver.feed(p)
    finally:
        receiver.close()
    await asyncio.to_thread(check, images, needs_wire)
    return p
