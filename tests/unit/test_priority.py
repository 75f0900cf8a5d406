"""The agent's priority (priority.py): a host that refuses a knob is logged, never fatal, and the
root autogroup (an agent whose parent never called setsid, as under some CI runners) is no fault."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from pymosix.priority import run_above_jobs


class _Refusing(type(Path())):  # type: ignore[misc]
    """An autogroup file whose write fails with a given errno."""

    code = errno.EINVAL

    def write_text(self, *_a: object, **_k: object) -> int:
        raise OSError(self.code, os.strerror(self.code))


def test_the_root_autogroup_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pymosix.priority")
    run_above_jobs(os.getpriority(os.PRIO_PROCESS, 0), _Refusing("/proc/self/autogroup"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "root autogroup" in caplog.text


def test_another_refusal_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    refusing = _Refusing("/proc/self/autogroup")
    refusing.code = errno.EPERM
    run_above_jobs(os.getpriority(os.PRIO_PROCESS, 0), refusing)
    assert "could not set the agent's autogroup nice value" in caplog.text


def test_a_kernel_without_autogroups_is_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_above_jobs(os.getpriority(os.PRIO_PROCESS, 0), tmp_path / "none" / "autogroup")
    assert not caplog.records
