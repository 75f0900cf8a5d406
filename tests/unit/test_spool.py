"""A stopping agent's unsent output on disk (migration/spool.py): kept and taken once; a file
that is not the agent's own, or not a spool, is dropped with one line and nothing is sent."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pymosix.migration import spool


def test_frames_are_kept_root_only_and_taken_once(tmp_path: Path) -> None:
    frames = [(1, 0, b"out"), (2, 5, b"err"), (1, 3, b"\x00" * 10)]
    spool.write(tmp_path, 42, frames)
    assert spool.path(tmp_path, 42).stat().st_mode & 0o777 == 0o600
    assert spool.take(tmp_path, 42) == frames
    assert spool.take(tmp_path, 42) == []
    spool.write(tmp_path, 43, [])  # nothing kept: no file
    assert not spool.path(tmp_path, 43).exists()


@pytest.mark.parametrize(
    ("body", "mode"),
    [
        (b"\xc1 not msgpack", 0o600),
        (b"\x81\xa1v\x01", 0o600),  # no frames
        (b"\x81\xa6frames\x91\x93\x01\x00\xa3str", 0o600),  # data not bytes: frame left out
        (b"", 0o644),  # readable by others: not the agent's own
    ],
)
def test_a_bad_spool_is_dropped_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: bytes, mode: int
) -> None:
    p = spool.path(tmp_path, 7)
    p.write_bytes(body)
    os.chmod(p, mode)
    with caplog.at_level(logging.WARNING):
        assert spool.take(tmp_path, 7) == []
    assert not p.exists()
    if mode == 0o600 and body.startswith(b"\x81\xa6"):
        return  # a well-formed spool whose one frame was refused: nothing to say
    assert len(caplog.records) == 1
    assert "unusable" in caplog.records[0].getMessage()
