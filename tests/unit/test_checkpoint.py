"""Checkpoints (migration/checkpoint.py): the output a restored job writes again is dropped by
offset, home keeps a checkpoint only once whole, and the interval is checked."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymosix.cli.mosrun import parse_args, request
from pymosix.config import NodeConfig
from pymosix.errors import PymosixError
from pymosix.migration.checkpoint import Cursor, InputLog, Store, fresh, interval
from pymosix.migration.lifecycle import JobMeta, Keeper, S
from pymosix.migration.link import Frame

# --- the output a restored job writes again ----------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "pos", "data", "out"),
    [
        (0, 0, b"abc", b"abc"),  # nothing restored: all of it
        (5, 5, b"xy", b"xy"),
        (5, 3, b"defg", b"fg"),  # bytes 3 and 4 mosrun has: dropped
        (5, 3, b"de", b""),  # all of it mosrun has
        (5, 0, b"", b""),
        (9, 3, b"defg", b""),
        (3, 5, b"fg", b"fg"),  # beyond what was sent (never happens: a gap) is passed on
    ],
)
def test_fresh(sent: int, pos: int, data: bytes, out: bytes) -> None:
    assert fresh(sent, pos, data) == out


def test_a_cursor_passes_everything_until_a_restore_then_drops_the_repeat() -> None:
    c = Cursor()
    assert c.take(1, b"1\n2\n") == b"1\n2\n"
    assert c.take(2, b"oops\n") == b"oops\n"
    offsets = dict(c.sent)  # a checkpoint here
    assert c.take(1, b"3\n4\n") == b"3\n4\n"
    c.rewind(offsets)
    assert c.take(1, b"3\n") == b""
    assert c.take(1, b"4\n5\n") == b"5\n"
    assert c.take(2, b"again\n") == b"again\n"
    assert c.sent == {1: 10, 2: 11}


@settings(max_examples=300, deadline=None)
@given(
    stream=st.binary(min_size=0, max_size=200),
    writes=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    rewrites=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    at=st.floats(min_value=0, max_value=1),
    lost=st.floats(min_value=0, max_value=1),
)
def test_mosrun_gets_each_byte_once_in_order_whatever_the_chunks(
    stream: bytes, writes: list[int], rewrites: list[int], at: float, lost: float
) -> None:
    """The job writes `stream` in chunks; a checkpoint is taken after `at` of what home relayed;
    the host dies after relaying more; the restored job writes the rest again from the
    checkpoint in other chunks. mosrun must get `stream` exactly."""

    def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
        out, i = [], 0
        for n in [*sizes, len(data)]:
            if i >= len(data):
                break
            out.append(data[i : i + n])
            i += n
        return out

    c, got = Cursor(), bytearray()
    cut = int(len(stream) * at)
    relayed = cut + int((len(stream) - cut) * lost)
    for chunk in chunks(stream[:cut], writes):
        got += c.take(1, chunk)
    offsets = dict(c.sent)
    for chunk in chunks(stream[cut:relayed], writes):
        got += c.take(1, chunk)
    c.rewind(offsets)
    for chunk in chunks(stream[cut:], rewrites):
        got += c.take(1, chunk)
    assert bytes(got) == stream


def test_the_input_log_keeps_what_a_restored_job_must_read_again() -> None:
    log = InputLog(keep=True, limit=8)
    assert log.add(b"abc") == 0
    assert log.add(b"de") == 3
    assert log.since(1) == b"bcde"
    log.trim(2)  # a checkpoint whose job had read 2 bytes
    assert (log.base, log.since(2), log.since(4)) == (2, b"cde", b"e")
    log.trim(1)  # never back
    assert log.base == 2
    assert log.add(b"fghij") == 5
    assert (log.base, log.since(0)) == (2, b"cdefghij"), "within the limit"
    log.add(b"k")
    assert (log.base, log.total, log.since(2)) == (3, 11, b"defghijk"), "the oldest goes"
    log.trim(99)
    assert (log.base, log.since(11)) == (11, b"")


def test_an_input_log_of_a_job_never_checkpointed_keeps_nothing() -> None:
    log = InputLog()
    assert log.add(b"abc") == 0
    assert log.add(b"d") == 3
    assert (log.base, log.kept, log.since(0)) == (4, bytearray(), b"")


# --- home's store ------------------------------------------------------------------------------

ID_A, ID_B = "a" * 16, "b" * 16


def _mark(ckpt: str) -> dict[str, Any]:
    meta = JobMeta(7, 0x640B, 1000, ["sleep", "9"], 0.0, cpu_s=1.5, checkpoint_s=2.0)
    return {
        "id": ckpt,
        "keys": {"0": "pipe:[1]", "1": "pipe:[2]", "2": "pipe:[3]"},
        "stopped": [3],
        "cpu_used": {"1": 0.25},
        "meta": meta.to_wire(),
        "stdin_at": 12,
    }


def _file(ckpt: str, name: str, data: bytes, first: bool = True) -> dict[str, Any]:
    return {"id": ckpt, "name": name, "data": data, "first": first}


def _whole(store: Store, keeper: Keeper, ckpt: str, sent: dict[int, int]) -> None:
    store.feed(Frame.CKPT_MARK, _mark(ckpt), keeper, sent)
    store.feed(Frame.CKPT_FILE, _file(ckpt, "core-1.img", b"core"), keeper, sent)
    store.feed(Frame.CKPT_FILE, _file(ckpt, "pages-1.img", b"p" * 10), keeper, sent)
    store.feed(Frame.CKPT_FILE, _file(ckpt, "pages-1.img", b"q", first=False), keeper, sent)
    store.feed(Frame.CKPT_DONE, {"id": ckpt, "ok": True}, keeper, sent)


def test_a_checkpoint_is_held_once_whole_root_only_with_the_offsets_of_its_mark(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints" / "7"
    store, keeper = Store(root, 1 << 20), Keeper(0.0)
    sent = {1: 40, 2: 3}
    store.feed(Frame.CKPT_MARK, _mark(ID_A), keeper, sent)
    sent[1] = 50  # what the job wrote after the dump: not part of the offsets
    store.feed(Frame.CKPT_FILE, _file(ID_A, "core-1.img", b"core"), keeper, sent)
    assert store.held is None
    assert keeper.state == S.CHECKPOINTING
    store.feed(Frame.CKPT_DONE, {"id": ID_A, "ok": True}, keeper, sent)
    held = store.held
    assert held is not None
    assert keeper.held == ID_A
    assert held.offsets == {1: 40, 2: 3}
    assert held.keys == {0: "pipe:[1]", 1: "pipe:[2]", 2: "pipe:[3]"}
    assert (held.stopped, held.cpu_used, held.meta.cpu_s, held.stdin_at) == (
        {3},
        {1: 0.25},
        1.5,
        12,
    )
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(held.path.stat().st_mode) == 0o700
    assert (held.path / "core-1.img").read_bytes() == b"core"
    assert stat.S_IMODE((held.path / "core-1.img").stat().st_mode) == 0o600
    store.remove()
    assert not root.exists()


def test_the_previous_checkpoint_goes_only_once_the_next_is_whole(tmp_path: Path) -> None:
    store, keeper = Store(tmp_path / "7", 1 << 20), Keeper(0.0)
    _whole(store, keeper, ID_A, {1: 1})
    first = store.held
    assert first is not None
    store.feed(Frame.CKPT_MARK, _mark(ID_B), keeper, {1: 2})
    store.feed(Frame.CKPT_FILE, _file(ID_B, "core-1.img", b"x"), keeper, {1: 2})
    assert store.held is first
    assert first.path.exists()
    store.feed(Frame.CKPT_DONE, {"id": ID_B, "ok": True}, keeper, {1: 3})
    assert store.held is not None
    assert store.held.id == ID_B
    assert not first.path.exists()
    assert sorted(p.name for p in (tmp_path / "7").iterdir()) == [f"ckpt-{ID_B}"]


@pytest.mark.parametrize(
    "bad",
    [
        _file(ID_B, "../core-1.img", b"x"),
        _file(ID_B, ".hidden", b"x"),
        _file(ID_B, "pages-1.img", b"x" * 2000),  # over the limit
        _file(ID_B, "pages-2.img", b"x", first=False),  # data before its file
    ],
)
def test_a_bad_frame_drops_the_new_checkpoint_and_keeps_the_old(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    store, keeper = Store(tmp_path / "7", 1000), Keeper(0.0)
    _whole(store, keeper, ID_A, {1: 1})
    store.feed(Frame.CKPT_MARK, _mark(ID_B), keeper, {1: 2})
    store.feed(Frame.CKPT_FILE, bad, keeper, {1: 2})
    store.feed(Frame.CKPT_DONE, {"id": ID_B, "ok": True}, keeper, {1: 2})
    assert store.held is not None
    assert store.held.id == ID_A
    assert (keeper.state, keeper.held) == (S.RUNNING, ID_A)
    assert sorted(p.name for p in (tmp_path / "7").iterdir()) == [f"ckpt-{ID_A}"]


@pytest.mark.parametrize(
    "mark",
    [
        _mark("../../etc") | {"id": "../../etc"},
        _mark(ID_B) | {"keys": {"1": "pipe:[2]"}},
        _mark(ID_B) | {"meta": "nope"},
    ],
)
def test_a_bad_mark_starts_no_checkpoint(tmp_path: Path, mark: dict[str, Any]) -> None:
    store, keeper = Store(tmp_path / "7", 1 << 20), Keeper(0.0)
    store.feed(Frame.CKPT_MARK, mark, keeper, {})
    store.feed(Frame.CKPT_DONE, {"id": mark["id"], "ok": True}, keeper, {})
    assert store.held is None
    assert keeper.state == S.RUNNING
    assert not (tmp_path / "etc").exists()


def test_a_checkpoint_its_host_could_not_finish_or_the_job_moved_on_from_is_dropped(
    tmp_path: Path,
) -> None:
    store, keeper = Store(tmp_path / "7", 1 << 20), Keeper(0.0)
    store.feed(Frame.CKPT_MARK, _mark(ID_A), keeper, {})
    store.feed(Frame.CKPT_DONE, {"id": ID_A, "ok": False}, keeper, {})
    assert store.held is None
    assert keeper.state == S.RUNNING
    store.feed(Frame.CKPT_MARK, _mark(ID_B), keeper, {})
    store.abandon(keeper)
    store.feed(Frame.CKPT_DONE, {"id": ID_B, "ok": True}, keeper, {})
    assert store.held is None
    assert keeper.state == S.RUNNING
    assert list((tmp_path / "7").iterdir()) == []


# --- the interval ------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "seconds"), [(None, 5.0), (0, 0.0), (2, 2.0), ("3.5", 3.5)])
def test_interval(asked: object, seconds: float) -> None:
    assert interval(asked, NodeConfig(checkpoint_interval=5)) == seconds


@pytest.mark.parametrize("asked", [-1, 0.5, 86_401, "x", float("nan"), float("inf"), True, [2]])
def test_a_bad_interval_is_one_clear_line(asked: object) -> None:
    with pytest.raises(PymosixError, match="checkpoint interval"):
        interval(asked, NodeConfig())


def test_mosrun_C() -> None:
    assert request(parse_args(["-C", "2", "cmd"]))["checkpoint"] == 2.0
    assert request(parse_args(["-C10", "-L", "cmd", "-C", "3"]))["checkpoint"] == 10.0
    assert request(parse_args(["cmd"]))["checkpoint"] is None
    assert parse_args(["-C", "0", "cmd"]).checkpoint == 0.0
    for bad in (["-C", "x", "cmd"], ["-C", "-1", "cmd"], ["-C"], ["-C0.5", "cmd"]):
        with pytest.raises(PymosixError, match="-C"):
            parse_args(bad)
