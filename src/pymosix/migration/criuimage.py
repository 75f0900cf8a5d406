"""A small reader of CRIU image files: just what says which files a restore will open.

A CRIU image file (v1.1) is two little-endian u32 magics, the common one then the file's own,
then entries, each a u32 length and a protobuf message of that length. Field numbers are those
of CRIU's images/*.proto (fdinfo, regfile, fifo, mm, vma, fs, remap-file-path). Pure: bytes in,
records out; anything malformed raises ImageFormatError with one line.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

IMG_COMMON_MAGIC = 0x54564319
FILES_MAGIC = 0x56303138
REG_FILES_MAGIC = 0x50363636
FDINFO_MAGIC = 0x56213732
MM_MAGIC = 0x57492820
FS_MAGIC = 0x51403912
REMAP_FPATH_MAGIC = 0x59133954
GHOST_FILE_MAGIC = 0x52583605

#: fd_types (fdinfo.proto)
REG, PIPE, FIFO = 1, 2, 3
#: remap_type (remap-file-path.proto)
LINKED, GHOST, PROCFS = 0, 1, 2
#: vma status bits (CRIU's include/image.h)
VMA_FILE_PRIVATE, VMA_FILE_SHARED, VMA_AREA_MEMFD = 1 << 6, 1 << 7, 1 << 14
_PROT_WRITE, _MAP_SHARED = 0x2, 0x1
#: One image file's most entries: far more than any job has files or mappings.
MAX_ENTRIES = 1 << 20


class ImageFormatError(ValueError):
    """A CRIU image file that is not what CRIU writes."""


# --- protobuf wire format ------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ImageFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ImageFormatError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of one message: an int for varint and fixed
    fields, bytes for length-delimited ones. Groups (wire types 3, 4) are refused."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ImageFormatError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise ImageFormatError("truncated fixed field")
            yield number, int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ImageFormatError("length-delimited field runs past its message")
            yield number, bytes(buf[pos : pos + size])
            pos += size
        else:
            raise ImageFormatError(f"wire type {wire}")


def _message(buf: bytes, kinds: Mapping[int, type]) -> dict[int, list[int | bytes]]:
    """Field number -> its values, for the fields in `kinds` (int or bytes), checked."""
    out: dict[int, list[int | bytes]] = {}
    for number, value in fields(buf):
        want = kinds.get(number)
        if want is None:
            continue
        if not isinstance(value, want):
            raise ImageFormatError(f"field {number} has the wrong wire type")
        out.setdefault(number, []).append(value)
    return out


def _int(m: dict[int, list[int | bytes]], n: int, default: int | None = None) -> int:
    v = m.get(n)
    if not v:
        if default is None:
            raise ImageFormatError(f"required field {n} missing")
        return default
    x = v[-1]
    assert isinstance(x, int)
    return x


def _opt(m: dict[int, list[int | bytes]], n: int) -> int | None:
    v = m.get(n)
    if not v:
        return None
    x = v[-1]
    assert isinstance(x, int)
    return x


def _bytes(m: dict[int, list[int | bytes]], n: int) -> bytes | None:
    v = m.get(n)
    if not v:
        return None
    x = v[-1]
    assert isinstance(x, bytes)
    return x


def entries(data: bytes, magic: int, most: int = MAX_ENTRIES) -> list[bytes]:
    """The messages of one image file whose own magic must be `magic` (the first `most` of
    them: a ghost file's entry is followed by the file's raw contents)."""
    if len(data) < 8:
        raise ImageFormatError("shorter than its magic")
    common, own = struct.unpack_from("<II", data)
    if common != IMG_COMMON_MAGIC or own != magic:
        raise ImageFormatError(f"magic {common:#x} {own:#x}, not {IMG_COMMON_MAGIC:#x} {magic:#x}")
    out: list[bytes] = []
    pos = 8
    while pos < len(data) and len(out) < most:
        if pos + 4 > len(data):
            raise ImageFormatError("truncated entry length")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + size > len(data):
            raise ImageFormatError("entry runs past the end of the file")
        if len(out) >= MAX_ENTRIES:
            raise ImageFormatError("too many entries")
        out.append(data[pos : pos + size])
        pos += size
    return out


# --- the records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegFile:
    """reg_file_entry: a path CRIU opens with `flags` (open(2) flags)."""

    id: int
    name: str
    flags: int


@dataclass(frozen=True, slots=True)
class FileRecord:
    """file_entry: one open file of any kind; `reg` for regular files, `regf_id` for fifos."""

    type: int
    id: int
    reg: RegFile | None = None
    regf_id: int | None = None


@dataclass(frozen=True, slots=True)
class Vma:
    shmid: int
    prot: int
    flags: int
    status: int
    fdflags: int | None

    @property
    def file_backed(self) -> bool:
        return bool(self.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)) and not (
            self.status & VMA_AREA_MEMFD
        )

    @property
    def writes(self) -> bool:
        """Whether CRIU opens the mapped file for writing: its saved status flags if the image
        has them, else read-write for a shared writable mapping (as CRIU's open_filemap)."""
        if self.fdflags is not None:
            return _writes(self.fdflags)
        return bool(self.prot & _PROT_WRITE and self.flags & _MAP_SHARED)


@dataclass(frozen=True, slots=True)
class Remap:
    orig_id: int
    remap_id: int
    type: int


def _writes(flags: int) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & (os.O_TRUNC | os.O_CREAT))


def _name(raw: bytes | None) -> str:
    if raw is None:
        raise ImageFormatError("a regular file without a name")
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise ImageFormatError("a file name that is not UTF-8") from None
    if "\0" in name:
        raise ImageFormatError("a file name with a NUL")
    return name


def reg_file(buf: bytes) -> RegFile:
    m = _message(buf, {1: int, 2: int, 6: bytes})
    return RegFile(_int(m, 1), _name(_bytes(m, 6)), _int(m, 2))


def file_record(buf: bytes) -> FileRecord:
    m = _message(buf, {1: int, 2: int, 3: bytes, 17: bytes})
    kind, fid = _int(m, 1), _int(m, 2)
    reg = _bytes(m, 3)
    fifo = _bytes(m, 17)
    regf_id = None
    if fifo is not None:
        regf_id = _opt(_message(fifo, {3: int}), 3)
    if kind == REG and reg is None:
        raise ImageFormatError(f"regular file {fid} without its reg entry")
    return FileRecord(kind, fid, reg_file(reg) if reg is not None else None, regf_id)


def vma(buf: bytes) -> Vma:
    m = _message(buf, {4: int, 5: int, 6: int, 7: int, 10: int})
    return Vma(_int(m, 4), _int(m, 5), _int(m, 6), _int(m, 7), _opt(m, 10))


def mm(buf: bytes) -> tuple[int, list[Vma]]:
    """mm_entry: (exe_file_id, vmas)."""
    m = _message(buf, {12: int, 14: bytes})
    return _int(m, 12), [vma(v) for v in m.get(14, []) if isinstance(v, bytes)]


def fs(buf: bytes) -> tuple[int, int]:
    """fs_entry: (cwd_id, root_id)."""
    m = _message(buf, {1: int, 2: int})
    return _int(m, 1), _int(m, 2)


def remap(buf: bytes) -> Remap:
    m = _message(buf, {1: int, 2: int, 3: int})
    return Remap(_int(m, 1), _int(m, 2), _int(m, 3, LINKED))


def ghost(data: bytes) -> tuple[int, int, int]:
    """ghost_file_entry, a ghost-file-N.img's first: (uid, gid, mode) of the file CRIU makes."""
    first = entries(data, GHOST_FILE_MAGIC, most=1)
    if not first:
        raise ImageFormatError("a ghost file image without its entry")
    m = _message(first[0], {1: int, 2: int, 3: int})
    return _int(m, 1), _int(m, 2), _int(m, 3)


def fdinfo(buf: bytes) -> tuple[int, int, int]:
    """fdinfo_entry: (file id, type, fd)."""
    m = _message(buf, {1: int, 3: int, 4: int})
    return _int(m, 1), _int(m, 3), _int(m, 4)


# --- a whole image -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """A path a restore of the image opens: for writing or not, and how the job holds it
    (fd N, mapped, exe, cwd, root, fifo). `remap`: GHOST or LINKED for a file the job had
    deleted, PROCFS for a /proc file; a ghost's `made` is the (uid, gid, mode) CRIU gives the
    file it re-creates."""

    path: str
    write: bool
    how: frozenset[str]
    remap: int | None = None
    made: tuple[int, int, int] | None = None


#: Image files that name files, by name pattern; every other image file is left alone.
WANTED = ("files.img", "reg-files.img", "remap-fpath.img")
WANTED_PREFIXES = ("mm-", "fs-", "fdinfo-", "ghost-file-")


def wanted(name: str) -> bool:
    return name in WANTED or (name.startswith(WANTED_PREFIXES) and name.endswith(".img"))


def opened_files(images: Mapping[str, bytes]) -> dict[int, Opened]:
    """Reg file id -> what a restore opens, from an image's files (name -> bytes)."""
    regs: dict[int, RegFile] = {}
    how: dict[int, set[str]] = {}
    write: dict[int, bool] = {}

    def add(reg: RegFile) -> None:
        if reg.id in regs and regs[reg.id] != reg:
            raise ImageFormatError(f"regular file id {reg.id} given twice")
        regs[reg.id] = reg

    def use(fid: int, what: str, writes: bool = False) -> None:
        how.setdefault(fid, set()).add(what)
        write[fid] = write.get(fid, False) or writes

    fifos: list[int] = []
    for name in sorted(images):
        data = images[name]
        if name == "files.img":
            for e in entries(data, FILES_MAGIC):
                rec = file_record(e)
                if rec.reg is not None:
                    if rec.type != REG:
                        raise ImageFormatError(f"file {rec.id} of type {rec.type} has a reg entry")
                    add(rec.reg)
                    if rec.reg.id != rec.id:
                        raise ImageFormatError(f"file {rec.id} holds reg entry {rec.reg.id}")
                if rec.type == FIFO and rec.regf_id is not None:
                    fifos.append(rec.regf_id)
        elif name == "reg-files.img":
            for e in entries(data, REG_FILES_MAGIC):
                add(reg_file(e))
    remaps: dict[int, Remap] = {}
    for name in sorted(images):
        data = images[name]
        if name.startswith("mm-"):
            for e in entries(data, MM_MAGIC):
                exe, vmas = mm(e)
                use(exe, "exe")
                for v in vmas:
                    if v.file_backed:
                        use(v.shmid, "mapped", v.writes)
        elif name.startswith("fs-"):
            for e in entries(data, FS_MAGIC):
                cwd, root = fs(e)
                use(cwd, "cwd")
                use(root, "root")
        elif name.startswith("fdinfo-"):
            for e in entries(data, FDINFO_MAGIC):
                fid, kind, fd = fdinfo(e)
                if kind == REG:
                    use(fid, f"fd {fd}")
        elif name == "remap-fpath.img":
            for e in entries(data, REMAP_FPATH_MAGIC):
                r = remap(e)
                remaps[r.orig_id] = r
    for fid in fifos:
        use(fid, "fifo")
    for r in list(remaps.values()):
        if r.type == LINKED:
            # The hard link CRIU made beside a deleted file is a reg entry of its own.
            remaps.setdefault(r.remap_id, r)
    out: dict[int, Opened] = {}
    for fid, reg in regs.items():
        remapped = remaps.get(fid)
        made = None
        if remapped is not None and remapped.type == GHOST:
            # CRIU names a ghost's image by its id in hex.
            ghost_data = images.get(f"ghost-file-{remapped.remap_id:x}.img")
            if ghost_data is None:
                raise ImageFormatError(f"ghost file {remapped.remap_id:x} has no image")
            made = ghost(ghost_data)
        out[fid] = Opened(
            reg.name,
            _writes(reg.flags) or write.get(fid, False),
            frozenset(how.get(fid, ())),
            None if remapped is None else remapped.type,
            made,
        )
    return out
