"""The target's side of an image's files: what arrives after the pages, checked before it touches
the disk. A CRIU image is code with root's privileges (research/criu.md §8), so only an
authenticated channel brings one, and even then: plain names only (no paths, no dot files), each
file once, files 0600 in a 0700 directory, and the whole image within the node's limit
(`max_image_mib`). Bad input raises ImageError with one line, and nothing of it is kept."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

from pymosix.errors import MigrationError

#: A CRIU image file name: core-1.img, pagemap-1.img, pages-1.img, stats-dump, ...
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ImageError(MigrationError):
    """An image file frame that is not acceptable; the move fails, the job stays where it was."""


class ImageReceiver:
    """Writes the FILE frames of one incoming move into `images` (made 0700 here)."""

    def __init__(self, images: Path, limit_bytes: int, already: int = 0) -> None:
        self.images = images
        self.limit = limit_bytes
        #: Bytes taken so far (the pages count too: `already`).
        self.total = already
        self.names: set[str] = set()
        self._file: BinaryIO | None = None
        self._current: str | None = None
        images.mkdir(mode=0o700, exist_ok=True)
        os.chmod(images, 0o700)

    def feed(self, payload: Any) -> None:
        """One FILE frame: {"name": str, "data": bytes, "first": bool}."""
        if not isinstance(payload, dict):
            raise ImageError("malformed image frame")
        name, data, first = payload.get("name"), payload.get("data"), payload.get("first")
        if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
            raise ImageError(f"bad image file name {name!r}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageError(f"image file {name}: data is not bytes")
        self.total += len(data)
        if self.total > self.limit:
            raise ImageError(
                f"image larger than this node's limit of {self.limit >> 20} MiB (max_image_mib)"
            )
        if first:
            if name in self.names:
                raise ImageError(f"image file {name} sent twice")
            self.names.add(name)
            self.close()
            fd = os.open(
                self.images / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
            )
            self._file, self._current = os.fdopen(fd, "wb"), name
        elif self._file is None or name != self._current:
            raise ImageError(f"image data for {name} before its file")
        self._file.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._current = None, None


def modes(images: Path) -> dict[str, int]:
    """Permission bits of the directory and each file in it (for tests and doctor)."""
    out = {".": stat.S_IMODE(images.stat().st_mode)}
    for p in images.iterdir():
        out[p.name] = stat.S_IMODE(p.lstat().st_mode)
    return out
