"""The CRIU driver's pure parts: argv as research/criu.md says, and the telling line of a log."""

from __future__ import annotations

from pathlib import Path

from pymosix.migration.criu import dump_args, last_error, make_images_dir, restore_args

LOG = """\
(00.024540) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.065942) cg: Dumping cgroups for thread 18651
(00.066019) Warn  (compel/src/lib/infect.c:133): Unable to interrupt task: 999999 (No such process)
(00.066040) Error (compel/src/lib/infect.c:418): Unable to detach from 999999: No such process
(00.066045) Error (criu/cr-dump.c:2111): Dumping FAILED.
"""


def test_last_error_skips_harmless_and_summary_lines() -> None:
    assert last_error(LOG) == (
        "Error (compel/src/lib/infect.c:418): Unable to detach from 999999: No such process"
    )
    assert last_error("(00.1) Error (criu/cr-dump.c:2111): Dumping FAILED.\n").endswith("FAILED.")
    assert last_error("(00.1) sockets: Can't get 1:16 opt\n(00.2) done\n") == (
        "sockets: Can't get 1:16 opt"
    )
    assert last_error("") == "criu failed without a log"


def test_dump_args_leave_stopped_and_log() -> None:
    args = dump_args(42, Path("/dev/shm/i"), Path("/dev/shm/i/dump.log"))
    assert args[:5] == ["dump", "-t", "42", "-D", "/dev/shm/i"]
    assert "-s" in args
    assert args[-3:] == ["-v4", "-o", "/dev/shm/i/dump.log"]
    assert "-s" not in dump_args(42, Path("i"), Path("l"), leave_stopped=False)


def test_restore_args_sibling_netns_and_inherited_pipes() -> None:
    args = restore_args(
        Path("/dev/shm/i"),
        Path("r.log"),
        Path("p"),
        {5: "pipe:[39502]", 8: "pipe:[39503]"},
        "/run/netns/pmx-x",
    )
    assert args[:5] == ["restore", "-D", "/dev/shm/i", "-d", "-S"]
    joined = " ".join(args)
    assert "--pidfile p" in joined
    assert "--join-ns net:/run/netns/pmx-x" in joined
    assert "--inherit-fd fd[5]:pipe:[39502] --inherit-fd fd[8]:pipe:[39503]" in joined
    assert args[-3:] == ["-v4", "-o", "r.log"]
    assert "--join-ns" not in restore_args(Path("i"), Path("l"), Path("p"), {})


def test_images_dir_is_private(tmp_path: Path) -> None:
    d = make_images_dir(root=tmp_path)
    assert d.parent == tmp_path
    assert d.stat().st_mode & 0o777 == 0o700
