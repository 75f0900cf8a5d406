"""install-tools' links (made once, replaced when they point elsewhere, never over a stranger's
file) and the setup commands' wiring, on temporary directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pymosix.errors import PymosixError
from pymosix.install import console_scripts, link_tools, scripts_dir, unlink_tools

NAMES = ["migrate", "mosrun", "pymosix"]


def _venv_bin(tmp_path: Path) -> Path:
    src = tmp_path / "venv" / "bin"
    src.mkdir(parents=True)
    for n in NAMES:
        (src / n).write_text("#!/bin/sh\n")
    return src


def test_links_are_made_once_and_repointed(tmp_path: Path) -> None:
    src, bin_dir = _venv_bin(tmp_path), tmp_path / "usr" / "local" / "bin"
    first = link_tools(bin_dir, src, NAMES)
    assert [link.action for link in first] == ["linked"] * 3
    assert all(Path(os.readlink(bin_dir / n)) == src / n for n in NAMES)
    assert [link.action for link in link_tools(bin_dir, src, NAMES)] == ["present"] * 3
    (bin_dir / "mosrun").unlink()
    (bin_dir / "mosrun").symlink_to(tmp_path / "old-venv" / "bin" / "mosrun")  # dangling
    again = {link.name: link.action for link in link_tools(bin_dir, src, NAMES)}
    assert again == {"migrate": "present", "mosrun": "relinked", "pymosix": "present"}
    assert Path(os.readlink(bin_dir / "mosrun")) == src / "mosrun"
    assert sorted(p.name for p in bin_dir.iterdir()) == NAMES, "no temporary link is left"


def test_a_file_that_is_not_a_link_is_left_alone_unless_forced(tmp_path: Path) -> None:
    src, bin_dir = _venv_bin(tmp_path), tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "migrate").write_text("someone else's migrate\n")
    with pytest.raises(PymosixError, match="not links"):
        link_tools(bin_dir, src, NAMES)
    assert not (bin_dir / "mosrun").exists(), "nothing is linked when one is refused"
    link_tools(bin_dir, src, NAMES, force=True)
    assert (bin_dir / "migrate").is_symlink()


def test_remove_takes_only_its_own_links(tmp_path: Path) -> None:
    src, bin_dir = _venv_bin(tmp_path), tmp_path / "bin"
    link_tools(bin_dir, src, NAMES)
    (bin_dir / "pymosix").unlink()
    (bin_dir / "pymosix").symlink_to("/elsewhere/pymosix")
    gone = {link.name: link.action for link in unlink_tools(bin_dir, src, NAMES)}
    assert gone == {"migrate": "removed", "mosrun": "removed", "pymosix": "absent"}
    assert [p.name for p in bin_dir.iterdir()] == ["pymosix"]


def test_a_missing_command_in_the_venv_is_named(tmp_path: Path) -> None:
    src = _venv_bin(tmp_path)
    with pytest.raises(PymosixError, match="no mps in"):
        link_tools(tmp_path / "bin", src, [*NAMES, "mps"])


def test_the_installed_commands_are_found() -> None:
    names = console_scripts()
    assert {"pymosix", "mosrun", "migrate", "mps", "mosctl", "showmap", "mosmon"} <= set(names)
    assert all((scripts_dir() / n).exists() for n in names)


def test_setup_commands_are_wired(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pymosix.cli import main

    assert main.main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert "setup" in usage
    assert "install-tools" in usage
    assert main.main(["setup", "--print-script"]) == 0
    script = Path(capsys.readouterr().out.strip())
    assert script.name == "provision-criu.sh"
    assert script.read_text().startswith("#!/usr/bin/env bash")
    monkeypatch.setattr("pymosix.cli.setup.os.geteuid", lambda: 1000)
    assert main.main(["setup"]) == 1
    assert "sudo pymosix setup" in capsys.readouterr().err
