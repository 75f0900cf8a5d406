"""The target's receiver of an image's files: plain names, each once, in order, within the limit,
0600 files in a 0700 directory; anything else is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymosix.migration.images import ImageError, ImageReceiver, modes


def frame(name: object, data: object = b"x", first: object = True) -> dict[str, object]:
    return {"name": name, "data": data, "first": first}


def test_files_arrive_whole_and_private(tmp_path: Path) -> None:
    images = tmp_path / "in"
    r = ImageReceiver(images, 1 << 20)
    r.feed(frame("core-1.img", b"ab"))
    r.feed(frame("core-1.img", b"cd", first=False))
    r.feed(frame("stats-dump", b"s"))
    r.close()
    assert (images / "core-1.img").read_bytes() == b"abcd"
    assert modes(images) == {".": 0o700, "core-1.img": 0o600, "stats-dump": 0o600}


@pytest.mark.parametrize(
    ("frames", "says"),
    [
        ([frame("../etc/passwd")], "bad image file name"),
        ([frame("/etc/passwd")], "bad image file name"),
        ([frame(".hidden")], "bad image file name"),
        ([frame("a" * 200)], "bad image file name"),
        ([frame(7)], "bad image file name"),
        ([frame("core-1.img", "text")], "data is not bytes"),
        ([frame("core-1.img", b"x", first=False)], "before its file"),
        ([frame("a.img"), frame("b.img", b"y", first=False)], "before its file"),
        ([frame("a.img"), frame("a.img")], "sent twice"),
        ([frame("a.img", b"x" * 5000)], "larger than this node's limit"),
        (["not a frame"], "malformed"),
    ],
)
def test_bad_frames_are_refused_with_one_line(
    tmp_path: Path, frames: list[object], says: str
) -> None:
    r = ImageReceiver(tmp_path / "in", 4096)
    *before, last = frames
    for f in before:
        r.feed(f)
    with pytest.raises(ImageError, match=says) as e:
        r.feed(last)
    r.close()
    assert "\n" not in str(e.value)
    assert not (tmp_path / "etc").exists()


def test_the_pages_count_against_the_limit(tmp_path: Path) -> None:
    r = ImageReceiver(tmp_path / "in", 4096, already=4000)
    with pytest.raises(ImageError, match="max_image_mib"):
        r.feed(frame("core-1.img", b"x" * 200))
    r.close()


def test_a_symlink_planted_in_the_directory_is_not_followed(tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    (images / "core-1.img").symlink_to(tmp_path / "victim")
    r = ImageReceiver(images, 4096)
    with pytest.raises(FileExistsError):
        r.feed(frame("core-1.img"))
    r.close()
    assert not (tmp_path / "victim").exists()
