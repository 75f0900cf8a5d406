"""provision-criu.sh's read-only queries against fake apt configurations: where the Debian
archive comes from (the host's sources, never a name in the script) and which loader to run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "src" / "pymosix" / "data" / "provision-criu.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg") is None, reason="needs apt and dpkg"
)

DEBIAN_DEB822 = """\
Types: deb-src
URIs: http://source.example/debian
Suites: trixie
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _query(
    tmp_path: Path, sources_list: str, parts: dict[str, str], *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the script with an apt configuration whose sources are only the given ones."""
    etc = tmp_path / "etc"
    (etc / "sources.list.d").mkdir(parents=True)
    (tmp_path / "lists").mkdir()
    (etc / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (etc / "sources.list.d" / name).write_text(text)
    conf = tmp_path / "apt.conf"
    conf.write_text(
        f'Dir::Etc::sourcelist "{etc}/sources.list";\n'
        f'Dir::Etc::sourceparts "{etc}/sources.list.d";\n'
        f'Dir::State::lists "{tmp_path}/lists";\n'
    )
    clean = {k: v for k, v in os.environ.items() if k != "PYMOSIX_DEBIAN_MIRROR"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=clean | {"APT_CONFIG": str(conf)} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_mirror_is_the_debian_archive_of_deb822_sources(tmp_path: Path) -> None:
    r = _query(tmp_path, "", {"debian.sources": DEBIAN_DEB822}, "--print-mirror")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://mirror.example/debian/"


def test_one_line_sources_with_options_after_a_non_debian_one(tmp_path: Path) -> None:
    sources = (
        "# a comment\n"
        "deb [arch=amd64] http://ppa.example/ubuntu noble main\n"
        "deb cdrom:[Debian 13]/ trixie main\n"
        "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://local.example/debian bookworm main contrib\n"
    )
    r = _query(
        tmp_path,
        sources,
        {"other.list": "deb http://ppa.example/x stable-x main\n"},
        "--print-mirror",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://local.example/debian/"


def test_no_debian_archive_names_the_setting(tmp_path: Path) -> None:
    ubuntu = (
        "deb http://archive.example/ubuntu noble main\ndeb-src http://s.example/debian sid main\n"
    )
    r = _query(tmp_path, ubuntu, {}, "--print-mirror")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "PYMOSIX_DEBIAN_MIRROR" in r.stderr
    given = _query(
        tmp_path / "again",
        ubuntu,
        {},
        "--print-mirror",
        PYMOSIX_DEBIAN_MIRROR="http://given.example/debian",
    )
    assert given.stdout.strip() == "http://given.example/debian"


def test_loader_follows_dpkgs_architecture(tmp_path: Path) -> None:
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    amd64 = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    arm64 = "usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"
    mine = _query(tmp_path, "", {}, "--print-loader")
    assert mine.returncode == 0, mine.stderr
    assert mine.stdout.strip() == {"amd64": amd64, "arm64": arm64}.get(arch, "")
    assert _query(tmp_path / "a", "", {}, "--print-loader", "arm64").stdout.strip() == arm64
    assert _query(tmp_path / "b", "", {}, "--print-loader", "amd64").stdout.strip() == amd64
    other = _query(tmp_path / "c", "", {}, "--print-loader", "mips64el")
    assert other.returncode == 1
    assert "amd64 and arm64" in other.stderr


def test_an_unknown_argument_is_refused(tmp_path: Path) -> None:
    r = _query(tmp_path, "", {}, "--mirror")
    assert r.returncode == 2
    assert "--print-mirror" in r.stderr
