"""Man pages made from the tools' own argument parsers: every tool has one, saying what --help
says, in valid man(7) markup."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pymosix.manpages import TOOLS, pages


def test_every_tool_has_a_page_with_its_options() -> None:
    got = pages()
    assert set(got) == {f"{t}.1" for t in TOOLS}
    for name, text in got.items():
        assert text.startswith(f".TH {name[:-2].upper()} 1 "), name
        for section in (".SH NAME", ".SH SYNOPSIS", ".SH SEE ALSO"):
            assert section in text, (name, section)
    assert "\\-\\-all" in got["mps.1"]
    assert "\\-\\-timeout" in got["mps.1"]
    assert "cantmove" in got["mosctl.1"]
    assert "\\-jLIST" in got["mosrun.1"], "mosrun's page is its own usage text"
    assert "testbed" in got["pymosix.1"]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_pages_format_without_warnings() -> None:
    for name, text in pages().items():
        r = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, (name, r.stderr)
        assert not r.stderr.strip(), (name, r.stderr)
