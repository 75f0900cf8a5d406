"""What a job needs of the node it moves to, and the target's answer before anything freezes.

The source gathers `Needs` from /proc while the job runs (`gather`); they travel with the offer;
the target looks at itself (`look_here`, I/O) and `refusal` (pure) says why it cannot take the
job, or None. Each check is one that CRIU's restore would otherwise fail on, after the job had
been frozen and its whole image sent: the files it has open or mapped (same path, same size;
build-id for executables and libraries; mtime for data files, not for system files, which each
machine installs itself), its working directory, its user (same name, uid and gid), the CPU's
instruction-set features, a CRIU at least as new as the one that dumps, the mount points of its
namespace, and room for its image.
"""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import re
import shutil
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymosix.ids import format_node_id
from pymosix.migration.cantmove import tree_pids

#: Paths a machine installs for itself: compared by size and build-id, never by mtime.
SYSTEM_PREFIXES = ("/usr/", "/lib", "/bin/", "/sbin/", "/etc/", "/opt/pymosix/")
#: Pseudo file systems: not files a node has or lacks.
_VIRTUAL_PREFIXES = ("/proc/", "/sys/", "/dev/")
#: /proc/cpuinfo flags that are instruction-set features user code may use; the rest (kernel
#: and hypervisor details such as constant_tsc) do not change what a process can run.
_ISA_FLAG = re.compile(
    r"^(mmx|sse|sse2|sse3|ssse3|sse4_[12]|sse4a|avx.*|fma4?|f16c|bmi[12]|adx|aes|vaes|pclmulqdq|vpclmulqdq"
    r"|gfni|sha_ni|popcnt|abm|lzcnt|movbe|cx8|cx16|cmov|rdrand|rdseed|xsave|xsaveopt|xsavec"
    r"|xsaves|erms|fsrm|clflushopt|clwb|amx.*|xop|tbm|rdpid|pku|ospke|serialize|movdiri"
    r"|movdir64b|vpopcntdq|avx512.*)$"
)
_O_ACCMODE = 0o3
_NT_GNU_BUILD_ID = 3


@dataclass(frozen=True, slots=True)
class FileNeed:
    """One file the job has: `how` is open, open for writing, mapped, cwd or exe."""

    path: str
    how: str
    size: int | None = None
    mtime_ns: int | None = None
    mode: int | None = None
    build_id: str | None = None


@dataclass(frozen=True, slots=True)
class Needs:
    """Everything the offer tells the target about the job."""

    files: tuple[FileNeed, ...]
    user: str
    uid: int
    gid: int
    cpu_flags: frozenset[str]
    machine: str
    criu_version: tuple[int, ...]
    mounts: tuple[str, ...]
    image_bytes: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "files": [[f.path, f.how, f.size, f.mtime_ns, f.mode, f.build_id] for f in self.files],
            "user": self.user,
            "uid": self.uid,
            "gid": self.gid,
            "cpu_flags": sorted(self.cpu_flags),
            "machine": self.machine,
            "criu_version": list(self.criu_version),
            "mounts": list(self.mounts),
            "image_bytes": self.image_bytes,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Needs:
        """The offer's needs; ValueError/TypeError/KeyError on a malformed one."""

        def opt_int(v: Any) -> int | None:
            return None if v is None else int(v)

        files = []
        for item in d["files"]:
            path, how, size, mtime, mode, build_id = item
            files.append(
                FileNeed(
                    str(path),
                    str(how),
                    opt_int(size),
                    opt_int(mtime),
                    opt_int(mode),
                    None if build_id is None else str(build_id),
                )
            )
        return cls(
            tuple(files),
            str(d["user"]),
            int(d["uid"]),
            int(d["gid"]),
            frozenset(str(f) for f in d["cpu_flags"]),
            str(d["machine"]),
            tuple(int(x) for x in d["criu_version"]),
            tuple(str(m) for m in d["mounts"]),
            int(d["image_bytes"]),
        )


@dataclass(frozen=True, slots=True)
class Here:
    """What the target has, looked up for one offer's needs."""

    node_id: int
    files: Mapping[str, FileNeed | None]
    users_by_name: Mapping[str, tuple[int, int] | None]
    names_by_uid: Mapping[int, str | None]
    cpu_flags: frozenset[str]
    machine: str
    criu_version: tuple[int, ...]
    missing_mounts: tuple[str, ...] = ()
    free_image_bytes: int = 0
    images_dir: str = "/dev/shm"


# --- pure ---------------------------------------------------------------------------------------


def isa_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(f for f in value.split() if _ISA_FLAG.match(f))
    return frozenset()


def parse_version(text: str) -> tuple[int, ...]:
    """``Version: 4.2.1`` (or ``4.2``) -> (4, 2, 1); () if there is none."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def refusal(needs: Needs, here: Here) -> str | None:
    """Why this node cannot take the job, as one line naming the fix; None if it can."""
    node = f"node {format_node_id(here.node_id)}"
    if needs.machine != here.machine:
        return f"the job runs on {needs.machine}; {node} is {here.machine}"
    want = here.users_by_name.get(needs.user)
    owner = here.names_by_uid.get(needs.uid)
    if want is None:
        return (
            f"user {needs.user} (uid {needs.uid}) does not exist on {node} "
            "(create it there with the same uid and gid)"
        )
    if want[0] != needs.uid:
        return (
            f"user {needs.user} is uid {needs.uid} here but uid {want[0]} on {node} "
            "(give every user the same uid on all nodes)"
        )
    if want[1] != needs.gid:
        return (
            f"user {needs.user} has gid {needs.gid} here but gid {want[1]} on {node} "
            "(give every user the same gid on all nodes)"
        )
    if owner is not None and owner != needs.user:
        return f"uid {needs.uid} is {needs.user} here but {owner} on {node}"
    lacking = sorted(needs.cpu_flags - here.cpu_flags)
    if lacking:
        return (
            f"{node}'s CPU lacks {', '.join(lacking[:6])}{' ...' if len(lacking) > 6 else ''}, "
            "which the job may use (keep such jobs on like CPUs: mosrun -j)"
        )
    if here.criu_version and needs.criu_version > here.criu_version:
        return (
            f"{node} has CRIU {'.'.join(map(str, here.criu_version))}, older than the "
            f"{'.'.join(map(str, needs.criu_version))} that dumps the job (pymosix setup there)"
        )
    if here.missing_mounts:
        return (
            f"the job's namespace has a mount at {here.missing_mounts[0]}; {node} has no such "
            "path (mount the same file systems on every node)"
        )
    for need in needs.files:
        why = _file_refusal(need, here.files.get(need.path), node)
        if why:
            return why
    if needs.image_bytes > here.free_image_bytes:
        return (
            f"{node} has {_mib(here.free_image_bytes)} free in {here.images_dir} for a "
            f"{_mib(needs.image_bytes)} image"
        )
    return None


def _file_refusal(need: FileNeed, have: FileNeed | None, node: str) -> str | None:
    what = {
        "cwd": f"the job's working directory is {need.path}",
        "exe": f"the job runs {need.path}",
        "mapped": f"the job maps {need.path}",
    }.get(need.how, f"the job has {need.path} open")
    system = need.path.startswith(SYSTEM_PREFIXES)
    fix = (
        "install the same packages on every node"
        if system
        else "use a shared file system for job data"
    )
    if have is None:
        return f"{what}; {node} has no such file ({fix})"
    if (
        need.mode is not None
        and have.mode is not None
        and stat.S_IFMT(need.mode) != stat.S_IFMT(have.mode)
    ):
        return f"{what}; on {node} it is another kind of file ({fix})"
    if need.build_id and have.build_id and need.build_id != have.build_id:
        return (
            f"{what}; {node} has a different build of it (build-id {need.build_id[:12]} here, "
            f"{have.build_id[:12]} there: {fix})"
        )
    if need.size is not None and have.size is not None and need.size != have.size:
        return (
            f"{what}; {node} has a different one ({need.size} bytes here, {have.size} there: {fix})"
        )
    if (
        not system
        and need.mtime_ns is not None
        and have.mtime_ns is not None
        and need.mtime_ns != have.mtime_ns
    ):
        return f"{what}; {node} has a different one (modified at another time: {fix})"
    return None


# --- I/O ----------------------------------------------------------------------------------------


def elf_build_id(path: str) -> str | None:
    """The GNU build-id note of an ELF file (hex), or None (not ELF, no note, unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                return None
            is64, little = head[4] == 2, head[5] == 1
            e = "<" if little else ">"
            if is64:
                phoff, phentsize, phnum = (
                    struct.unpack_from(e + "Q", head, 32)[0],
                    *struct.unpack_from(e + "HH", head, 54),
                )
            else:
                phoff, phentsize, phnum = (
                    struct.unpack_from(e + "I", head, 28)[0],
                    *struct.unpack_from(e + "HH", head, 42),
                )
            for i in range(min(phnum, 64)):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                if is64:
                    p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(e + "IIQQQQ", ph)
                else:
                    p_type, p_offset, _, _, p_filesz = struct.unpack_from(e + "IIIII", ph)
                if p_type != 4:  # PT_NOTE
                    continue
                f.seek(p_offset)
                notes = f.read(min(p_filesz, 1 << 16))
                off = 0
                while off + 12 <= len(notes):
                    namesz, descsz, ntype = struct.unpack_from(e + "III", notes, off)
                    off += 12
                    name = notes[off : off + namesz]
                    off += (namesz + 3) & ~3
                    desc = notes[off : off + descsz]
                    off += (descsz + 3) & ~3
                    if ntype == _NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU":
                        return desc.hex()
    except (OSError, ValueError, OverflowError, struct.error):
        return None
    return None


def describe(path: str, how: str) -> FileNeed | None:
    """What this node has at `path`, as a FileNeed to compare; None if nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)  # a dangling symlink, held by an O_PATH fd: it is there too
        except OSError:
            return None
    regular = stat.S_ISREG(st.st_mode)
    writing = how == "open-rw"
    return FileNeed(
        path,
        how,
        size=st.st_size if regular and not writing else None,
        mtime_ns=st.st_mtime_ns if regular and not writing else None,
        mode=st.st_mode,
        build_id=elf_build_id(path) if regular and how in ("mapped", "exe") else None,
    )


def _fd_writable(proc: Path, pid: int, fd: str) -> bool:
    try:
        for line in (proc / str(pid) / "fdinfo" / fd).read_text().splitlines():
            if line.startswith("flags:"):
                return int(line.split()[1], 8) & _O_ACCMODE != os.O_RDONLY
    except (OSError, ValueError, IndexError):
        pass
    return False


def _wants(path: str) -> bool:
    """A path a node has or lacks: not a pseudo file, not deleted (CRIU carries those)."""
    if not path.startswith("/") or " (deleted)" in path:
        return False
    return path.startswith("/dev/shm/") or not path.startswith(_VIRTUAL_PREFIXES)


def job_files(pid: int, proc: Path = Path("/proc")) -> dict[str, str]:
    """path -> how the job's tree holds it: open, open-rw, mapped, cwd or exe."""
    out: dict[str, str] = {}
    rank = {"open-rw": 4, "exe": 3, "mapped": 2, "open": 1, "cwd": 0}

    def note(path: str, how: str) -> None:
        if _wants(path) and rank[how] > rank.get(out.get(path, ""), -1):
            out[path] = how

    for p in tree_pids(pid, proc):
        base = proc / str(p)
        for link, how in (("cwd", "cwd"), ("exe", "exe")):
            with contextlib.suppress(OSError):
                note(os.readlink(base / link), how)
        try:
            fds = os.listdir(base / "fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                target = os.readlink(base / "fd" / fd)
            except OSError:
                continue
            note(target, "open-rw" if _fd_writable(proc, p, fd) else "open")
        try:
            maps = (base / "maps").read_text().splitlines()
        except OSError:
            maps = []
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) == 6:
                # A shared writable mapping: CRIU's restore opens its file for writing.
                shared_rw = parts[1][1:2] == "w" and parts[1][3:4] == "s"
                note(parts[5].strip(), "open-rw" if shared_rw else "mapped")
    return out


def job_mounts(pid: int, proc: Path = Path("/proc")) -> tuple[str, ...]:
    """The mount points of the job's namespace (its own /proc left out: it is made anew)."""
    try:
        lines = (proc / str(pid) / "mountinfo").read_text().splitlines()
    except OSError:
        return ()
    points = {ln.split()[4] for ln in lines if len(ln.split()) > 4}
    return tuple(sorted(p for p in points if p != "/proc" and not p.startswith("/proc/")))


def tree_rss(pid: int, proc: Path = Path("/proc")) -> int:
    """Resident bytes of the job's tree: what its image will take, about."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for p in tree_pids(pid, proc):
        try:
            total += int((proc / str(p) / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def read_isa_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        return isa_flags(cpuinfo.read_text())
    except OSError:
        return frozenset()


def gather(
    pid: int, uid: int, gid: int, criu_version: tuple[int, ...], proc: Path = Path("/proc")
) -> Needs:
    """The needs of the running job rooted at `pid` (its owner's uid and gid given)."""
    files = tuple(
        need
        for path, how in sorted(job_files(pid, proc).items())
        if (need := describe(path, how)) is not None
    )
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Needs(
        files,
        user,
        uid,
        gid,
        read_isa_flags(),
        platform.machine(),
        criu_version,
        job_mounts(pid, proc),
        tree_rss(pid, proc),
    )


def _user(name: str) -> tuple[int, int] | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def look_here(needs: Needs, node_id: int, criu_version: tuple[int, ...], images_dir: Path) -> Here:
    """This node's side of the comparison, for the needs of one offer."""
    return Here(
        node_id,
        {f.path: describe(f.path, f.how) for f in needs.files},
        {needs.user: _user(needs.user)},
        {needs.uid: _name(needs.uid)},
        read_isa_flags(),
        platform.machine(),
        criu_version,
        tuple(m for m in needs.mounts if not os.path.lexists(m)),
        shutil.disk_usage(images_dir).free if images_dir.exists() else 0,
        str(images_dir),
    )
