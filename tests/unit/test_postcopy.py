"""When a move is a post-copy (pure decisions) and the argv it runs criu with."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymosix.config import NodeConfig, config_from_mapping, validate
from pymosix.doctor import Status, check_postcopy
from pymosix.errors import ConfigError
from pymosix.migration.criu import dump_args, restore_args
from pymosix.migration.postcopy import (
    PIPE_NEEDED,
    lazy_daemon_args,
    lazy_dump_args,
    lazy_problem,
    want_postcopy,
)

MIB = 1 << 20


def test_lazy_mode_needs_big_pipes_or_cap_sys_resource_and_criu_4_2() -> None:
    assert lazy_problem(PIPE_NEEDED, False, (4, 2, 1)) is None
    assert lazy_problem(MIB, True, (4, 2, 1)) is None, "CAP_SYS_RESOURCE lifts the limit"
    small = lazy_problem(MIB, False, (4, 2, 1))
    assert small is not None
    assert "fs.pipe-max-size is 1048576" in small
    assert f"sysctl fs.pipe-max-size={PIPE_NEEDED}" in small
    old = lazy_problem(PIPE_NEEDED, True, (4, 1, 1))
    assert old is not None
    assert "CRIU 4.1.1" in old


def test_only_jobs_at_or_above_the_threshold_and_never_with_zero() -> None:
    assert want_postcopy(600 * MIB, 512, None) == (True, None)
    assert want_postcopy(512 * MIB, 512, None) == (True, None)
    assert want_postcopy(511 * MIB, 512, None) == (False, None)
    assert want_postcopy(10_000 * MIB, 0, None) == (False, None), "0 is never"
    # Big enough but the node cannot: stop-and-copy, and the reason to log.
    assert want_postcopy(600 * MIB, 512, "pipes") == (False, "pipes")
    # A small job is not worth a log line about pipes.
    assert want_postcopy(100 * MIB, 512, "pipes") == (False, None)


def test_the_setting_is_documented_bounded_and_on_by_default() -> None:
    assert NodeConfig().postcopy_min_mib == 0, "opt-in: a failed page transfer loses the job"
    assert config_from_mapping({"postcopy_min_mib": 0}).postcopy_min_mib == 0
    with pytest.raises(ConfigError, match="postcopy_min_mib"):
        validate(config_from_mapping({"postcopy_min_mib": -1}))


def test_lazy_dump_and_daemon_argv() -> None:
    base = dump_args(7, Path("/i"), Path("/i/d.log"))
    args = lazy_dump_args(base, 5, 6)
    assert args[args.index("--ps-socket") + 1] == "5"
    assert args[args.index("--status-fd") + 1] == "6"
    assert "--lazy-pages" in args
    assert "--page-server" not in args, "pages are served, not pushed"
    assert args[-3:] == ["-v4", "-o", "/i/d.log"]
    assert "-s" in args, "the original stays stopped: only the agent resumes it"
    d = lazy_daemon_args(Path("/i"), Path("/l"), 3, 4)
    assert d[:3] == ["lazy-pages", "-D", "/i"]
    assert "--page-server" in d
    assert d[d.index("--ps-socket") + 1] == "3"
    r = restore_args(Path("/i"), Path("/l"), Path("/p"), {}, leave_stopped=True, lazy=True)
    assert "--lazy-pages" in r
    assert "--leave-stopped" in r
    assert "--lazy-pages" not in restore_args(Path("/i"), Path("/l"), Path("/p"), {})


def test_doctor_says_whether_postcopy_is_available() -> None:
    ok = check_postcopy(PIPE_NEEDED, False, "4.2.1")
    assert ok.status is Status.OK
    no = check_postcopy(MIB, False, " 4.2.1")
    assert no.status is Status.WARN
    assert no.fix == f"sysctl fs.pipe-max-size={PIPE_NEEDED}"
    assert "stop-and-copy" in no.line()
    old = check_postcopy(PIPE_NEEDED, True, "4.1.1")
    assert old.status is Status.WARN
    assert "CRIU 4.2" in old.fix
