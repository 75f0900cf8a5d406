"""The CRIU image reader (migration/criuimage.py) on bytes built here, and the target's check of
what an image opens against the offer's file list (migration/imagecheck.py)."""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from pymosix.migration import criuimage as ci
from pymosix.migration.faults import Faults, Rule, parse
from pymosix.migration.imagecheck import access_refusal, check, refusal
from pymosix.migration.images import ImageError
from pymosix.migration.needs import FileNeed, Needs, job_files

# --- a protobuf encoder, just enough to build images ---------------------------------------------


def varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def vfield(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def lfield(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def image(magic: int, *messages: bytes) -> bytes:
    out = struct.pack("<II", ci.IMG_COMMON_MAGIC, magic)
    for m in messages:
        out += struct.pack("<I", len(m)) + m
    return out


def reg(fid: int, name: str, flags: int = os.O_RDONLY) -> bytes:
    fown = vfield(1, 0) + vfield(2, 0)
    return (
        vfield(1, fid)
        + vfield(2, flags)
        + vfield(3, 0)
        + lfield(5, fown)
        + lfield(6, name.encode())
    )


def file_entry(fid: int, name: str, flags: int = os.O_RDONLY) -> bytes:
    return vfield(1, ci.REG) + vfield(2, fid) + lfield(3, reg(fid, name, flags))


def vma_bytes(shmid: int, prot: int, flags: int, status: int, fdflags: int | None = None) -> bytes:
    out = vfield(1, 0x1000) + vfield(2, 0x2000) + vfield(3, 0) + vfield(4, shmid)
    out += vfield(5, prot) + vfield(6, flags) + vfield(7, status) + vfield(8, 1)  # fd: -1 zigzag
    return out + (vfield(10, fdflags) if fdflags is not None else b"")


def mm_bytes(exe: int, *vmas: bytes) -> bytes:
    out = b"".join(vfield(n, 0) for n in range(1, 12)) + vfield(12, exe)
    out += vfield(13, 33) + vfield(13, 0)  # auxv: a repeated field the reader skips
    return out + b"".join(lfield(14, v) for v in vmas)


def ghost_image(uid: int, gid: int, mode: int) -> bytes:
    """A ghost file's image: its entry, then the file's raw contents (not entries)."""
    return (
        image(ci.GHOST_FILE_MAGIC, vfield(1, uid) + vfield(2, gid) + vfield(3, mode)) + b"\xff" * 9
    )


def sample() -> dict[str, bytes]:
    """A job: python's exe, libc mapped, a data file read, a log written, a shared writable
    mapping of a third file, its cwd, a fifo, a pipe, /dev/null and a deleted temp file."""
    files = image(
        ci.FILES_MAGIC,
        file_entry(1, "/usr/bin/python3"),
        file_entry(2, "/usr/lib/libc.so.6"),
        file_entry(3, "/data/in.csv"),
        file_entry(4, "/data/out.log", os.O_WRONLY | os.O_APPEND),
        file_entry(5, "/data/shared.bin"),
        file_entry(6, "/data"),
        file_entry(7, "/"),
        file_entry(8, "/data/queue"),
        vfield(1, ci.FIFO) + vfield(2, 9) + lfield(17, vfield(1, 9) + vfield(2, 77) + vfield(3, 8)),
        vfield(1, ci.PIPE) + vfield(2, 10) + lfield(18, vfield(1, 10) + vfield(2, 5)),
        file_entry(11, "/dev/null", os.O_RDWR),
        file_entry(12, "/tmp/scratch"),
    )
    shared = ci.VMA_FILE_SHARED | 1
    private = ci.VMA_FILE_PRIVATE | 1
    mm = image(
        ci.MM_MAGIC,
        mm_bytes(
            1,
            vma_bytes(1, 5, 2, private),
            vma_bytes(2, 5, 2, private, fdflags=os.O_RDONLY),
            vma_bytes(5, 3, 1, shared),  # PROT_READ|PROT_WRITE, MAP_SHARED, no fdflags
            vma_bytes(0, 3, 0x22, (1 << 9) | 1),  # anonymous: no file
        ),
    )
    fs = image(ci.FS_MAGIC, vfield(1, 6) + vfield(2, 7) + vfield(3, 0o22))
    fdinfo = image(
        ci.FDINFO_MAGIC,
        *(
            vfield(1, fid) + vfield(2, 0) + vfield(3, kind) + vfield(4, fd)
            for fid, kind, fd in ((3, ci.REG, 3), (4, ci.REG, 4), (9, ci.FIFO, 5), (10, ci.PIPE, 0))
        ),
        vfield(1, 11) + vfield(2, 0) + vfield(3, ci.REG) + vfield(4, 6) + lfield(5, b"label"),
        vfield(1, 12) + vfield(2, 0) + vfield(3, ci.REG) + vfield(4, 7),
    )
    remaps = image(ci.REMAP_FPATH_MAGIC, vfield(1, 12) + vfield(2, 1) + vfield(3, ci.GHOST))
    return {
        "ghost-file-1.img": ghost_image(1000, 1000, stat.S_IFREG | 0o600),
        "files.img": files,
        "mm-1.img": mm,
        "fs-1.img": fs,
        "fdinfo-2.img": fdinfo,
        "remap-fpath.img": remaps,
        "core-1.img": b"not read",
    }


def needs(*files: tuple[str, str], uid: int = 1000) -> Needs:
    return Needs(
        tuple(FileNeed(p, how) for p, how in files),
        "alice" if uid else "root",
        uid,
        uid,
        frozenset(),
        "x86_64",
        (4, 2, 1),
        (),
        0,
    )


OFFER = (
    ("/usr/bin/python3", "exe"),
    ("/usr/lib/libc.so.6", "mapped"),
    ("/data/in.csv", "open"),
    ("/data/out.log", "open-rw"),
    ("/data/shared.bin", "open-rw"),
    ("/data", "cwd"),
    ("/data/queue", "open"),
)


# --- the reader -----------------------------------------------------------------------------------


def test_the_reader_lists_each_file_with_its_mode_and_uses() -> None:
    got = {
        (o.path, o.write, tuple(sorted(o.how)), o.remap) for o in ci.opened_files(sample()).values()
    }
    assert got == {
        ("/usr/bin/python3", False, ("exe", "mapped"), None),
        ("/usr/lib/libc.so.6", False, ("mapped",), None),
        ("/data/in.csv", False, ("fd 3",), None),
        ("/data/out.log", True, ("fd 4",), None),
        ("/data/shared.bin", True, ("mapped",), None),
        ("/data", False, ("cwd",), None),
        ("/", False, ("root",), None),
        ("/data/queue", False, ("fifo",), None),
        ("/dev/null", True, ("fd 6",), None),
        ("/tmp/scratch", False, ("fd 7",), ci.GHOST),
    }
    made = {o.path: o.made for o in ci.opened_files(sample()).values()}
    assert made["/tmp/scratch"] == (1000, 1000, stat.S_IFREG | 0o600)
    assert made["/data/in.csv"] is None


def test_the_older_layout_and_fdflags_of_a_mapping() -> None:
    images = {
        "reg-files.img": image(ci.REG_FILES_MAGIC, reg(1, "/a"), reg(2, "/b")),
        "mm-1.img": image(
            ci.MM_MAGIC,
            mm_bytes(1, vma_bytes(2, 1, 1, ci.VMA_FILE_SHARED, fdflags=os.O_RDWR)),
        ),
    }
    got = ci.opened_files(images)
    assert got[1] == ci.Opened("/a", False, frozenset({"exe"}))
    assert got[2] == ci.Opened("/b", True, frozenset({"mapped"}))


def test_a_linked_remap_marks_the_link_too() -> None:
    images = {
        "files.img": image(ci.FILES_MAGIC, file_entry(1, "/w/x"), file_entry(2, "/w/link_remap.2")),
        "remap-fpath.img": image(ci.REMAP_FPATH_MAGIC, vfield(1, 1) + vfield(2, 2)),
    }
    got = ci.opened_files(images)
    assert got[1].remap == got[2].remap == ci.LINKED


def test_fields_reads_every_wire_type() -> None:
    buf = vfield(1, 300) + struct.pack("<B", 2 << 3 | 1) + struct.pack("<Q", 7)
    buf += struct.pack("<B", 3 << 3 | 5) + struct.pack("<I", 9) + lfield(4, b"xy")
    assert list(ci.fields(buf)) == [(1, 300), (2, 7), (3, 9), (4, b"xy")]


MALFORMED = {
    "short": b"\x19\x43",
    "wrong magic": image(ci.MM_MAGIC, file_entry(1, "/a")),
    "entry past the end": image(ci.FILES_MAGIC, file_entry(1, "/a"))[:-3],
    "truncated length": image(ci.FILES_MAGIC) + b"\x01\x00",
    "truncated varint": image(ci.FILES_MAGIC, b"\x08\xff"),
    "endless varint": image(ci.FILES_MAGIC, b"\x08" + b"\xff" * 11 + b"\x01"),
    "group": image(ci.FILES_MAGIC, bytes([1 << 3 | 3])),
    "field 0": image(ci.FILES_MAGIC, b"\x00\x01"),
    "string past its message": image(ci.FILES_MAGIC, lfield(3, b"abc")[:-1]),
    "fixed past its message": image(ci.FILES_MAGIC, bytes([1 << 3 | 1]) + b"\x00" * 3),
    "type as bytes": image(ci.FILES_MAGIC, lfield(1, b"x") + vfield(2, 1)),
    "no type": image(ci.FILES_MAGIC, vfield(2, 1)),
    "reg without entry": image(ci.FILES_MAGIC, vfield(1, ci.REG) + vfield(2, 1)),
    "reg without name": image(
        ci.FILES_MAGIC, vfield(1, ci.REG) + vfield(2, 1) + lfield(3, vfield(1, 1) + vfield(2, 0))
    ),
    "name not utf-8": image(
        ci.FILES_MAGIC,
        vfield(1, ci.REG)
        + vfield(2, 1)
        + lfield(3, vfield(1, 1) + vfield(2, 0) + lfield(6, b"\xff")),
    ),
    "name with NUL": image(ci.FILES_MAGIC, file_entry(1, "/etc/x\0/y")),
    "reg id differs": image(
        ci.FILES_MAGIC, vfield(1, ci.REG) + vfield(2, 2) + lfield(3, reg(1, "/a"))
    ),
    "reg in a pipe": image(
        ci.FILES_MAGIC, vfield(1, ci.PIPE) + vfield(2, 1) + lfield(3, reg(1, "/a"))
    ),
    "one id two files": image(ci.FILES_MAGIC, file_entry(1, "/a"), file_entry(1, "/etc/shadow")),
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_malformed_files_img_is_refused_with_one_line(what: str) -> None:
    with pytest.raises(ci.ImageFormatError) as e:
        ci.opened_files({"files.img": MALFORMED[what]})
    assert str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name", ["mm-1.img", "fs-1.img", "fdinfo-2.img", "remap-fpath.img", "ghost-file-1.img"]
)
def test_malformed_other_images_are_refused(name: str) -> None:
    images = sample()
    images[name] = images[name][:-1] if name != "ghost-file-1.img" else images[name][:14]
    with pytest.raises(ci.ImageFormatError):
        ci.opened_files(images)
    images[name] = image(ci.FILES_MAGIC)  # another file's magic
    with pytest.raises(ci.ImageFormatError, match="magic"):
        ci.opened_files(images)


def test_random_bytes_raise_only_the_format_error() -> None:
    import random

    rnd = random.Random(5)
    base = sample()
    for _ in range(2000):
        name = rnd.choice(sorted(k for k in base if ci.wanted(k)))
        data = bytearray(base[name])
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(8, len(data))] = rnd.randrange(256)
        with contextlib.suppress(ci.ImageFormatError):
            ci.opened_files({**base, name: bytes(data)})


# --- the check ------------------------------------------------------------------------------------


def test_an_image_that_opens_what_the_offer_listed_may_be_restored() -> None:
    assert refusal(ci.opened_files(sample()), needs(*OFFER)) is None


@pytest.mark.parametrize(
    ("path", "flags", "why"),
    [
        (
            "/etc/shadow",
            os.O_RDWR,
            "the image opens /etc/shadow for writing, which the offer did not list",
        ),
        ("/etc/shadow", os.O_RDONLY, "the image opens /etc/shadow, which the offer did not list"),
        (
            "/data/in.csv",
            os.O_WRONLY,
            "the image opens /data/in.csv for writing; the offer listed it as read-only (open)",
        ),
        ("/data/in.csv", os.O_RDONLY | os.O_TRUNC, "for writing; the offer listed it as read-only"),
        (
            "/usr/bin/python3",
            os.O_RDWR,
            "the image opens /usr/bin/python3 for writing; the offer listed it as read-only (exe)",
        ),
        ("/dev/sda", os.O_RDONLY, "the image opens /dev/sda, which a job may not be given"),
        (
            "/dev/mem",
            os.O_RDWR,
            "the image opens /dev/mem for writing, which a job may not be given",
        ),
        ("/proc/sys/kernel/core_pattern", os.O_WRONLY, "which a job may not be given"),
        ("/sys/power/state", os.O_WRONLY, "which a job may not be given"),
        ("/data/../etc/shadow", os.O_RDONLY, "which is not a plain absolute path"),
        ("etc/shadow", os.O_RDONLY, "which is not a plain absolute path"),
        (
            "/dev/shm/other",
            os.O_RDONLY,
            "the image opens /dev/shm/other, which the offer did not list",
        ),
    ],
)
def test_a_file_the_offer_did_not_list_or_listed_read_only_is_refused(
    path: str, flags: int, why: str
) -> None:
    images = sample()
    images["files.img"] += struct.pack("<I", len(e := file_entry(99, path, flags))) + e
    got = refusal(ci.opened_files(images), needs(*OFFER))
    assert got is not None
    assert why in got


@pytest.mark.parametrize(
    "path", ["/dev/zero", "/dev/urandom", "/dev/pts/3", "/proc/self/status", "/sys/kernel/mm/x"]
)
def test_harmless_pseudo_files_need_no_listing(path: str) -> None:
    images = sample()
    flags = os.O_RDWR if path.startswith("/dev/") else os.O_RDONLY
    images["files.img"] += struct.pack("<I", len(e := file_entry(99, path, flags))) + e
    assert refusal(ci.opened_files(images), needs(*OFFER)) is None


def test_a_writable_shared_mapping_of_a_file_listed_as_mapped_is_refused() -> None:
    offer = [f for f in OFFER if f[0] != "/data/shared.bin"] + [("/data/shared.bin", "mapped")]
    got = refusal(ci.opened_files(sample()), needs(*offer))
    assert (
        got
        == "the image opens /data/shared.bin for writing; the offer listed it as read-only (mapped)"
    )


def with_ghost(path: str, made: tuple[int, int, int] | None) -> dict[int, ci.Opened]:
    """sample() and a deleted file at path, remapped to ghost 0x1a (made: its uid, gid, mode)."""
    images = sample()
    images["files.img"] += struct.pack("<I", len(e := file_entry(99, path))) + e
    images["remap-fpath.img"] += (
        struct.pack("<I", len(r := vfield(1, 99) + vfield(2, 26) + vfield(3, ci.GHOST))) + r
    )
    if made is not None:
        images["ghost-file-1a.img"] = ghost_image(*made)
    return ci.opened_files(images)


MINE = (1000, 1000, stat.S_IFREG | 0o644)


def test_a_deleted_file_is_re_created_only_where_the_job_works() -> None:
    for ok in ("/var/tmp/x", "/dev/shm/x", "/data/old.csv", "/data/y"):
        assert refusal(with_ghost(ok, MINE), needs(*OFFER)) is None, ok
    assert refusal(with_ghost("/etc/cron.d/job", MINE), needs(*OFFER)) == (
        "the image re-creates a deleted file /etc/cron.d/job, in a directory the offer did not list"
    )
    # The directory of a system file the job maps is not one it works in.
    assert refusal(with_ghost("/usr/lib/evil.so", MINE), needs(*OFFER)) is not None


@pytest.mark.parametrize(
    ("made", "why"),
    [
        ((1000, 1000, stat.S_IFCHR | 0o666), "as a device or other special file"),
        ((1000, 1000, stat.S_IFBLK | 0o600), "as a device or other special file"),
        ((0, 0, stat.S_IFREG | 0o4755), "set-user-ID or set-group-ID"),
        ((1000, 1000, stat.S_IFREG | 0o2755), "set-user-ID or set-group-ID"),
        ((0, 0, stat.S_IFREG | 0o644), "owned by uid 0 gid 0, not by the job's user"),
        ((1000, 0, stat.S_IFREG | 0o644), "owned by uid 1000 gid 0, not by the job's user"),
    ],
)
def test_a_ghost_file_is_made_only_as_a_plain_file_of_the_jobs_user(
    made: tuple[int, int, int], why: str
) -> None:
    got = refusal(with_ghost("/tmp/x", made), needs(*OFFER))
    assert got is not None
    assert got.startswith("the image re-creates a deleted file /tmp/x ")
    assert why in got


def test_a_ghost_files_owner_may_be_any_of_the_users_groups_and_anyone_for_root() -> None:
    theirs = (1000, 50, stat.S_IFREG | 0o644)
    assert refusal(with_ghost("/tmp/x", theirs), needs(*OFFER)) is not None
    assert refusal(with_ghost("/tmp/x", theirs), needs(*OFFER), frozenset({1000, 50})) is None
    roots = (0, 0, stat.S_IFDIR | 0o755)
    assert refusal(with_ghost("/tmp/x", roots), needs(*OFFER, uid=0)) is None


def test_a_ghost_without_its_image_is_malformed() -> None:
    with pytest.raises(ci.ImageFormatError, match="ghost file 1a has no image"):
        with_ghost("/tmp/x", None)
    images = sample()
    images["ghost-file-1.img"] = image(ci.GHOST_FILE_MAGIC)
    with pytest.raises(ci.ImageFormatError, match="without its entry"):
        ci.opened_files(images)


def test_a_root_other_than_slash_is_refused() -> None:
    images = {
        "files.img": image(ci.FILES_MAGIC, file_entry(6, "/data"), file_entry(7, "/srv")),
        "fs-1.img": image(ci.FS_MAGIC, vfield(1, 6) + vfield(2, 7)),
    }
    assert refusal(ci.opened_files(images), needs(*OFFER)) == (
        "the image sets the job's root directory to /srv, which the offer did not list"
    )


def test_check_reads_a_directory_and_says_one_line(tmp_path: Path) -> None:
    for name, data in sample().items():
        (tmp_path / name).write_bytes(data)
    check(tmp_path, needs(*OFFER, uid=0).to_wire())
    with pytest.raises(
        ImageError, match=r"^the image opens /data/in.csv, which the offer did not list$"
    ):
        check(tmp_path, needs(*(f for f in OFFER if f[0] != "/data/in.csv"), uid=0).to_wire())
    with pytest.raises(ImageError, match=r"^malformed offer"):
        check(tmp_path, {"files": 3})
    (tmp_path / "mm-1.img").write_bytes(b"\x19\x43\x56\x54")
    with pytest.raises(ImageError, match=r"^malformed image: shorter than its magic$"):
        check(tmp_path, needs(*OFFER, uid=0).to_wire())
    # A user's job: the files must also be ones that user may open here (/data is not).
    (tmp_path / "mm-1.img").write_bytes(sample()["mm-1.img"])
    with pytest.raises(ImageError, match=r"^the image opens /data, which this node cannot look up"):
        check(tmp_path, needs(*OFFER).to_wire())
    for p in tmp_path.iterdir():
        p.unlink()
    with pytest.raises(ImageError, match=r"no files\.img"):
        check(tmp_path, needs(*OFFER, uid=0).to_wire())


# --- the fault that makes an offer disagree with its image ---------------------------------------


def test_unlist_rules(tmp_path: Path) -> None:
    assert parse("unlist /a/B once\ndrop DONE\n") == {
        "UNLIST /a/B": Rule(0, "UNLIST /a/B", None, True),
        "DONE": Rule(1, "DONE", None, False),
    }
    path = tmp_path / "faults"
    faults = Faults(path)
    assert not faults.unlisted("/x")
    path.write_text("unlist /x once\nunlist /y\n")
    assert [faults.unlisted(p) for p in ("/x", "/x", "/y", "/y", "/z")] == [
        True,
        False,
        True,
        True,
        False,
    ]


def test_a_shared_writable_mapping_is_offered_as_open_for_writing(tmp_path: Path) -> None:
    """needs.py lists it as CRIU will open it: a read-only mapping stays `mapped`."""
    proc = tmp_path / "proc"
    (proc / "7" / "task" / "7").mkdir(parents=True)
    (proc / "7" / "task" / "7" / "children").write_text("")
    (proc / "7" / "maps").write_text(
        "7f0000000000-7f0000001000 rw-s 00000000 08:01 12 /data/shared.bin\n"
        "7f0000001000-7f0000002000 r--p 00000000 08:01 13 /usr/lib/libc.so.6\n"
        "7f0000002000-7f0000003000 rw-p 00000000 08:01 14 /data/private.bin\n"
    )
    assert job_files(7, proc) == {
        "/data/shared.bin": "open-rw",
        "/usr/lib/libc.so.6": "mapped",
        "/data/private.bin": "mapped",
    }


# --- the job's user may open what the image opens ------------------------------------------------


def fake_stat(table: dict[str, tuple[int, int, int]]) -> Callable[[str], os.stat_result]:
    """path -> (mode, uid, gid); a path not in the table does not exist."""

    def lookup(path: str) -> os.stat_result:
        if path not in table:
            raise FileNotFoundError(2, "No such file or directory")
        mode, uid, gid = table[path]
        return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))

    return lookup


D, F = stat.S_IFDIR, stat.S_IFREG
TREE = {
    "/": (D | 0o755, 0, 0),
    "/etc": (D | 0o755, 0, 0),
    "/etc/shadow": (F | 0o640, 0, 42),
    "/etc/passwd": (F | 0o644, 0, 0),
    "/home": (D | 0o755, 0, 0),
    "/home/alice": (D | 0o700, 1000, 1000),
    "/home/alice/notes": (F | 0o600, 1000, 1000),
    "/home/alice/ro": (F | 0o460, 1000, 50),
    "/srv": (D | 0o750, 0, 50),
    "/srv/team.log": (F | 0o664, 0, 50),
    "/usr": (D | 0o755, 0, 0),
    "/usr/bin": (D | 0o755, 0, 0),
    "/usr/bin/secret-tool": (F | 0o711, 0, 0),
}


@pytest.mark.parametrize(
    ("path", "write", "how", "why"),
    [
        ("/etc/passwd", False, "fd 3", None),
        (
            "/etc/passwd",
            True,
            "fd 3",
            "the image opens /etc/passwd; user alice (uid 1000) may not write it on this node",
        ),
        ("/etc/shadow", False, "fd 3", "may not read it"),
        ("/home/alice/notes", True, "fd 3", None),
        ("/home/alice", False, "cwd", None),
        # The owner's bits, even where the group's would give more.
        ("/home/alice/ro", True, "fd 3", "may not write it"),
        ("/srv/team.log", True, "fd 3", None),
        ("/usr/bin/secret-tool", False, "exe", None),
        ("/usr/bin/secret-tool", False, "mapped", "may not read it"),
        (
            "/home/bob/x",
            False,
            "fd 3",
            "which this node cannot look up (No such file or directory)",
        ),
    ],
)
def test_the_jobs_user_must_be_allowed_to_open_each_file(
    path: str, write: bool, how: str, why: str | None
) -> None:
    opened = {1: ci.Opened(path, write, frozenset({how}))}
    got = access_refusal(opened, "alice", 1000, frozenset({1000, 50}), fake_stat(TREE))
    if why is None:
        assert got is None
    else:
        assert got is not None
        assert why in got


def test_a_directory_on_the_way_must_be_searchable() -> None:
    opened = {1: ci.Opened("/home/alice/notes", False, frozenset({"fd 3"}))}
    assert access_refusal(opened, "bob", 1001, frozenset({1001}), fake_stat(TREE)) == (
        "the image opens /home/alice/notes; user bob (uid 1001) may not enter /home/alice on this node"
    )
    # root may; pseudo files, / and deleted files are refusal()'s to judge, not looked up here.
    assert access_refusal(opened, "root", 0, frozenset({0}), fake_stat(TREE)) is None
    others = {
        2: ci.Opened("/", False, frozenset({"root"})),
        3: ci.Opened("/proc/self/status", False, frozenset({"fd 4"})),
        4: ci.Opened("/tmp/gone", True, frozenset({"fd 5"}), ci.GHOST),
    }
    assert access_refusal(others, "bob", 1001, frozenset({1001}), fake_stat({})) is None
