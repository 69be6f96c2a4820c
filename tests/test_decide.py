"""The contract's skip rule, table-driven: ``decide`` for one image, its recorded row and the options.

"When an image's name, type, createTime and detailUrl equal the recorded ones and its backup is present (local
file of the recorded size, or the recorded S3 object when keep_local is false), it is not downloaded."
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from imgsync.errors import ImageDenied, ImageError, ImageGone
from imgsync.models import Action, ImageRef, ObjectInfo, PortalImage, S3Object, StoredImage
from imgsync.sync import SyncOptions, decide

REF = ImageRef(12, 345)
IMAGE = PortalImage(
    12, 345, "a.jpg", "MORE_PHOTO", "2024-10-17T10:48:05+02:00", "/upload/iblock/a/a.jpg", "x"
)
SHA = "ab" * 32
KEY = "p/12/345-a.jpg"
ROW = StoredImage(
    12,
    345,
    name="a.jpg",
    type="MORE_PHOTO",
    create_time="2024-10-17T10:48:05+02:00",
    detail_url="/upload/iblock/a/a.jpg",
    sha256=SHA,
    size=5,
    local_path="12/345-a.jpg",
    s3=S3Object(KEY, "etag", SHA),
    status="ok",
)


class Bucket:
    def check(self) -> None: ...

    def key_for(self, relative: str) -> str:
        return "p/" + relative

    def head(self, key: str) -> ObjectInfo | None:
        return None

    def put(self, *args: object, **kwargs: object) -> str:
        return ""


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "345-a.jpg").write_bytes(b"12345")
    return tmp_path


CASES = [
    # (id, found, row, options, action, reason)
    ("new", IMAGE, None, {}, Action.DOWNLOAD, "new"),
    ("row without a backup", IMAGE, replace(ROW, sha256=None), {}, Action.DOWNLOAD, "new"),
    ("forced", IMAGE, ROW, {"force": True}, Action.DOWNLOAD, "forced"),
    ("unchanged", IMAGE, ROW, {}, Action.UNCHANGED, "unchanged"),
    ("renamed", replace(IMAGE, name="b.jpg"), ROW, {}, Action.DOWNLOAD, "changed: name"),
    ("retyped", replace(IMAGE, type="DETAIL_PICTURE"), ROW, {}, Action.DOWNLOAD, "changed: type"),
    (
        "new file, same name",
        replace(IMAGE, create_time="2025-01-01T00:00:00+02:00", detail_url="/upload/iblock/b/a.jpg"),
        ROW,
        {},
        Action.DOWNLOAD,
        "changed: createTime, detailUrl",
    ),
    # downloadUrl changes on every call and decides nothing
    ("fresh link only", replace(IMAGE, download_url="other"), ROW, {}, Action.UNCHANGED, "unchanged"),
    (
        "file gone",
        IMAGE,
        replace(ROW, local_path="12/345-gone.jpg"),
        {},
        Action.DOWNLOAD,
        "local file missing or of another size",
    ),
    (
        "file of another size",
        IMAGE,
        replace(ROW, size=6),
        {},
        Action.DOWNLOAD,
        "local file missing or of another size",
    ),
    (
        "path outside dest",
        IMAGE,
        replace(ROW, local_path="../12/345-a.jpg"),
        {},
        Action.DOWNLOAD,
        "local file missing or of another size",
    ),
    (
        "no local path",
        IMAGE,
        replace(ROW, local_path=None),
        {},
        Action.DOWNLOAD,
        "local file missing or of another size",
    ),
    # with S3
    ("in S3 and on disk", IMAGE, ROW, {"s3": True}, Action.UNCHANGED, "unchanged"),
    ("not in S3 yet", IMAGE, replace(ROW, s3=None), {"s3": True}, Action.UPLOAD, "not in S3 yet"),
    (
        "S3 object of other bytes",
        IMAGE,
        replace(ROW, s3=S3Object(KEY, "e", "cd" * 32)),
        {"s3": True},
        Action.UPLOAD,
        "not in S3 yet",
    ),
    (
        "S3 object under another prefix",
        IMAGE,
        replace(ROW, s3=S3Object("old/12/345-a.jpg", "e", SHA)),
        {"s3": True},
        Action.UPLOAD,
        "not in S3 yet",
    ),
    (
        "neither in S3 nor on disk",
        IMAGE,
        replace(ROW, s3=None, local_path=None),
        {"s3": True},
        Action.DOWNLOAD,
        "local file missing or of another size",
    ),
    # keep_local = false: the S3 object is the backup
    (
        "S3 only, present",
        IMAGE,
        replace(ROW, local_path=None),
        {"s3": True, "keep_local": False},
        Action.UNCHANGED,
        "unchanged",
    ),
    (
        "S3 only, object lost",
        IMAGE,
        replace(ROW, local_path=None, s3=None),
        {"s3": True, "keep_local": False},
        Action.DOWNLOAD,
        "not in S3 and no local copy",
    ),
    (
        "S3 only, local copy left",
        IMAGE,
        replace(ROW, s3=None),
        {"s3": True, "keep_local": False},
        Action.UPLOAD,
        "not in S3 yet",
    ),
    # what the portal said instead of the image
    (
        "gone, backed up",
        ImageGone("0: Image is not found"),
        ROW,
        {},
        Action.MISSING,
        "gone upstream; the backup is kept",
    ),
    (
        "gone, never backed up",
        ImageGone("0: Image is not found"),
        None,
        {},
        Action.MISSING,
        "not found on the portal",
    ),
    (
        "denied",
        ImageDenied("access denied to this product"),
        ROW,
        {},
        Action.FAILED,
        "access denied to this product",
    ),
    ("failed", ImageError("0: Internal error"), None, {}, Action.FAILED, "0: Internal error"),
]


@pytest.mark.parametrize(
    ("found", "row", "options", "action", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(
    dest: Path,
    found: PortalImage | ImageError,
    row: StoredImage | None,
    options: dict[str, bool],
    action: Action,
    reason: str,
) -> None:
    opts = SyncOptions(
        dest=dest,
        force=options.get("force", False),
        keep_local=options.get("keep_local", True),
        uploader=Bucket() if options.get("s3") else None,
    )
    plan = decide(REF, found, row, opts)
    assert (plan.action, plan.reason) == (action, reason)
    if isinstance(found, PortalImage):
        # computed once, from the name the portal gives now
        assert plan.relative == f"12/345-{found.name}"
        assert plan.s3_key == (f"p/12/345-{found.name}" if options.get("s3") else None)
    else:
        assert plan.image is None and plan.relative is None
