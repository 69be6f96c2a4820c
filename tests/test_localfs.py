"""One verified file write, and safe names."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgsync.errors import DownloadFailed, TransientError
from imgsync.localfs import relative_path, resolve_inside, safe_name, save_stream
from imgsync.models import ImageRef


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_save_stream_writes_verifies_and_hashes(tmp_path: Path) -> None:
    data = b"picture bytes " * 100
    target = tmp_path / "12" / "345-a.jpg"
    size, digest = save_stream(chunks(data), target, expected_size=len(data))
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["345-a.jpg"]


@pytest.mark.parametrize(
    ("data", "expected", "message"),
    [
        (b"short", 10, "download truncated: got 5 of 10 bytes"),
        (b"", None, "download was empty"),
    ],
)
def test_save_stream_leaves_nothing_on_a_bad_body(
    tmp_path: Path, data: bytes, expected: int | None, message: str
) -> None:
    target = tmp_path / "1" / "2-x.png"
    with pytest.raises(TransientError, match=message):
        save_stream(chunks(data), target, expected_size=expected)
    assert list(target.parent.iterdir()) == []


def test_save_stream_keeps_the_old_file_when_the_new_one_breaks(tmp_path: Path) -> None:
    target = tmp_path / "1" / "2-x.png"
    target.parent.mkdir()
    target.write_bytes(b"old backup")

    def broken() -> Iterator[bytes]:
        yield b"new part"
        raise TransientError("download broke off")

    with pytest.raises(TransientError):
        save_stream(broken(), target, expected_size=None)
    assert target.read_bytes() == b"old backup"
    assert [p.name for p in target.parent.iterdir()] == ["2-x.png"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "etcpasswd"),
        ("/etc/x.jpg", "etcx.jpg"),
        ("a\x00b.png", "ab.png"),
        ("..", "image"),
        ("", "image"),
        ("dir\\sub\\file.png", "dirsubfile.png"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("what?*<>|:.jpg", "what.jpg"),
        ("фото товара.jpg", "фото товара.jpg"),
        (" .hidden. ", "hidden"),
    ],
)
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_safe_name_cuts_to_150_bytes_keeping_the_extension() -> None:
    cut = safe_name("я" * 300 + ".jpeg")
    # "я" is 2 bytes: 145 bytes of room before ".jpeg" hold 72 whole letters; a cut inside a letter would
    # leave 73 with a broken last one (or a replacement character).
    assert cut == "я" * 72 + ".jpeg"
    assert len(cut.encode()) == 149


def test_relative_path_and_containment(tmp_path: Path) -> None:
    rel = relative_path(ImageRef(12, 345), "../../x.jpg")
    assert rel == "12/345-x.jpg"
    assert resolve_inside(tmp_path, rel) == (tmp_path / rel).resolve()
    with pytest.raises(DownloadFailed, match="outside the destination"):
        resolve_inside(tmp_path, "../escape.jpg")
