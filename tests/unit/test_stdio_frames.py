"""The stdio frames between mosrun and the agent (migration/stdio.py): any split of the stream
gives the same frames; oversize, unknown and malformed frames are refused with one line."""

from __future__ import annotations

import json
import random

import pytest

from pymosix import malloc
from pymosix.migration.stdio import (
    CTRL,
    DATA,
    HEAD,
    MAX_CTRL,
    MAX_DATA,
    TO_AGENT,
    TO_MOSRUN,
    FrameReader,
    StdioError,
    ctrl_frame,
    data_head,
    parse_ctrl,
)


def stream() -> tuple[bytes, list[tuple[int, int, bytes]]]:
    rng = random.Random(7)
    frames: list[tuple[int, int, bytes]] = []
    for i in range(40):
        if i % 7 == 3:
            body = ctrl_frame({"t": "moved", "node": i})
            frames.append((CTRL, 0, body[HEAD.size :]))
        else:
            size = rng.choice([1, 5, 6, 7, 4096, 65536, 300_000, MAX_DATA])
            frames.append((DATA, 1 + i % 2, rng.randbytes(size)))
    wire = b"".join(
        (data_head(fd, len(p)) + p) if k == DATA else ctrl_frame(json.loads(p))
        for k, fd, p in frames
    )
    return wire, frames


@pytest.mark.parametrize("seed", range(6))
def test_any_split_of_the_stream_gives_the_same_frames(seed: int) -> None:
    wire, frames = stream()
    rng = random.Random(seed)
    reader = FrameReader(TO_MOSRUN)
    got: list[tuple[int, int, bytes]] = []
    at = 0
    while at < len(wire):
        # Pieces from one byte to past a whole frame, head splits included.
        n = rng.choice([1, 2, 5, 6, 7, 1000, 70_000, 2 * MAX_DATA])
        got += reader.feed(wire[at : at + n])
        at += n
    assert got == frames
    assert not reader.partial


def test_a_frame_cut_short_is_partial() -> None:
    reader = FrameReader(TO_MOSRUN)
    frame = data_head(1, 10) + b"x" * 10
    assert reader.feed(frame[:8]) == []
    assert reader.partial
    assert reader.feed(frame[8:]) == [(DATA, 1, b"x" * 10)]
    assert not reader.partial


def test_payloads_are_views_into_the_buffer_not_copies() -> None:
    reader = FrameReader(TO_MOSRUN)
    frame = data_head(2, 3) + b"abc"
    space = reader.space()
    space[: len(frame)] = frame
    reader.filled(len(frame))
    [(kind, fd, payload)] = reader.frames()
    assert (kind, fd, bytes(payload)) == (DATA, 2, b"abc")
    assert isinstance(payload, memoryview)


@pytest.mark.parametrize(
    ("head", "fds", "why"),
    [
        (HEAD.pack(DATA, 1, MAX_DATA + 1), TO_MOSRUN, "data frame of"),
        (HEAD.pack(DATA, 1, 0), TO_MOSRUN, "data frame of 0 bytes"),
        (HEAD.pack(DATA, 255, 0xFFFFFFFF), TO_MOSRUN, "fd 255"),
        (HEAD.pack(DATA, 1, 10), TO_AGENT, "fd 1"),  # mosrun may only send stdin
        (HEAD.pack(DATA, 0, 10), TO_MOSRUN, "fd 0"),
        (HEAD.pack(CTRL, 0, MAX_CTRL + 1), TO_AGENT, "control frame of"),
        (HEAD.pack(CTRL, 3, 2), TO_AGENT, "fd 3"),
        (HEAD.pack(9, 0, 2), TO_AGENT, "unknown stdio frame kind 9"),
        (b'{"t":"in","d":"eA=="}\n'[: HEAD.size], TO_AGENT, "unknown stdio frame kind 123"),
    ],
)
def test_bad_heads_are_refused_before_their_payload(
    head: bytes, fds: frozenset[int], why: str
) -> None:
    reader = FrameReader(fds)
    with pytest.raises(StdioError, match=why) as e:
        reader.feed(head)  # the payload never needs to arrive: the head says enough
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"n": 1}', "JSON object"),
        (b'{"t": 5}', "JSON object"),
        (b'{"t": "sig", "n": NaN}', "not valid JSON"),
        (b'{"t": "x", "a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested too deeply"),
        (b"[" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_malformed_control_messages_are_refused(payload: bytes, why: str) -> None:
    with pytest.raises(StdioError, match=why) as e:
        parse_ctrl(payload)
    assert "\n" not in str(e.value)


def test_control_messages_round_trip_and_are_bounded() -> None:
    reader = FrameReader(TO_AGENT)
    [(kind, fd, payload)] = reader.feed(ctrl_frame({"t": "sig", "n": 15}))
    assert (kind, fd) == (CTRL, 0)
    assert parse_ctrl(payload) == {"t": "sig", "n": 15}
    with pytest.raises(ValueError, match="control message of"):
        ctrl_frame({"t": "error", "message": "x" * MAX_CTRL})
    with pytest.raises(ValueError, match="DATA frame holds"):
        data_head(1, MAX_DATA + 1)
    with pytest.raises(ValueError, match="DATA frame holds"):
        data_head(1, 0)


def test_the_agents_heap_keeps_megabyte_buffers() -> None:
    """glibc (this machine's C library) takes the thresholds: relayed megabytes are not mapped
    and faulted in afresh each time (pymosix/malloc.py)."""
    assert malloc.tune() is True
