"""Build hook: the wheel carries man pages made from the tools' own argument parsers
(pymosix.manpages) in pymosix/man/man1; everything else is in pyproject.toml."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithManPages(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # a clone runs from its source tree: `pymosix man` is not needed there
        sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
        from pymosix.manpages import pages

        out = Path(self.build_lib) / "pymosix" / "man" / "man1"
        out.mkdir(parents=True, exist_ok=True)
        for name, text in pages().items():
            (out / name).write_text(text)


setup(cmdclass={"build_py": BuildWithManPages})
