"""``imgsync verify``: re-hash the backup and compare it with what the state database says.

For every image row that records a local backup (``local_path`` and ``sha256``), the file under dest is
re-hashed: **missing** when it is not there, **changed** when its size or sha256 differ from the row. Files under
dest that no row names are **unrecorded**; a download's temporary files (``.<name>.<random>.part``, left by a
killed run) are listed apart as **temporary**: debris, not a difference. With an uploader, every row that records
an S3 object is checked with a HEAD: missing, or changed when its size or its ``sha256`` metadata differ (S3
objects are not downloaded again; the sha256 imgsync wrote beside the object stands for its bytes).

``sample`` (a percentage) checks a subset of the rows, chosen from each row's ids and a seed, so one seed picks
the same subset every time and a fresh seed another one. The walk for unrecorded files always covers all of dest:
it only lists names.

:func:`verify` changes nothing: not the files, not the objects, not the rows. :func:`repair` (``imgsync verify
--repair``) then marks the rows of what was found missing or changed, through
:meth:`~imgsync.store.Store.mark_for_repair`: each becomes ``failed`` and stops claiming the backup it no longer
has, so the sync's skip rule, which wants the recorded backup present, fetches it again on the next run. Files
under dest and objects in S3 are never touched; a changed file is replaced by the next sync's download.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import ImageError, UploadError
from .localfs import hash_file, is_temp_name, resolve_inside
from .models import ImageRef, ObjectInfo, S3Object, StoredImage
from .store import Store

__all__ = ["Difference", "ObjectStore", "VerifyReport", "is_temp_name", "repair", "verify"]

# The error a repaired row records, by what verify found.
MISSING_FILE = "missing file"
CORRUPT_FILE = "corrupt: sha256 differs"
CORRUPT_SIZE = "corrupt: size differs"
CORRUPT_PATH = "corrupt: recorded path outside the destination"
MISSING_OBJECT = "missing S3 object"
CORRUPT_OBJECT = "corrupt: S3 object differs"


class ObjectStore(Protocol):
    """What verify needs of S3 (:class:`imgsync.s3.S3Uploader` has it)."""

    def head(self, key: str) -> ObjectInfo | None:
        """What the object holds, or None when it does not exist."""


@dataclass(frozen=True)
class Difference:
    """One file or object that does not match its row (or one that could not be checked)."""

    where: str  # the path relative to dest, or the S3 key
    product_id: int
    image_id: int
    detail: str
    repair_error: str = ""  # what --repair writes into the row's error

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.where,
            "product_id": self.product_id,
            "image_id": self.image_id,
            "detail": self.detail,
        }


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``clean`` is what the exit code says."""

    db: str
    dest: str
    sample_percent: float | None = None
    recorded: int = 0  # rows that record a local file
    checked: int = 0  # of those, the files re-hashed (all, or the sample)
    ok: int = 0
    missing: list[Difference] = field(default_factory=list)
    changed: list[Difference] = field(default_factory=list)
    errors: list[Difference] = field(default_factory=list)  # could not be checked (unreadable, S3 refused)
    unrecorded: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    s3_recorded: int | None = None  # None: S3 was not checked
    s3_checked: int = 0
    s3_ok: int = 0
    s3_missing: list[Difference] = field(default_factory=list)
    s3_changed: list[Difference] = field(default_factory=list)
    repaired: int = 0  # rows marked by :func:`repair`

    @property
    def repairable(self) -> bool:
        """Differences that ``--repair`` can hand to the next sync (not unrecorded files, not errors)."""
        return bool(self.missing or self.changed or self.s3_missing or self.s3_changed)

    @property
    def clean(self) -> bool:
        return not (
            self.missing
            or self.changed
            or self.errors
            or self.unrecorded
            or self.s3_missing
            or self.s3_changed
        )

    def as_json(self) -> dict[str, Any]:
        def listed(items: list[Difference]) -> list[dict[str, Any]]:
            return [item.as_json() for item in items]

        return {
            "db": self.db,
            "dest": self.dest,
            "sample_percent": self.sample_percent,
            "recorded": self.recorded,
            "checked": self.checked,
            "ok": self.ok,
            "missing": listed(self.missing),
            "changed": listed(self.changed),
            "errors": listed(self.errors),
            "unrecorded": self.unrecorded,
            "temp_files": self.temp_files,
            "s3": None
            if self.s3_recorded is None
            else {
                "recorded": self.s3_recorded,
                "checked": self.s3_checked,
                "ok": self.s3_ok,
                "missing": listed(self.s3_missing),
                "changed": listed(self.s3_changed),
            },
            "repaired": self.repaired,
            "clean": self.clean,
        }


def _chosen(seed: str, product_id: int, image_id: int, percent: float) -> bool:
    """Whether a row is in the sample: a hash of the seed and its ids, so no list of rows is kept."""
    digest = hashlib.sha256(f"{seed}:{product_id}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < percent / 100 * 2**64


def verify(
    store: Store,
    dest: Path,
    *,
    objects: ObjectStore | None = None,
    sample: float | None = None,
    seed: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Compare the backup in ``dest`` (and ``objects``, when given) with the rows of ``store``.

    ``sample``: the percentage of rows to check (None or 100: all). ``seed``: which sample (random if None).
    ``progress`` is called with each path checked. Reads only; raises nothing for a difference.
    """
    if sample is not None and not 0 < sample <= 100:
        raise ValueError("sample must be a percentage above 0 and at most 100")
    percent = None if sample is None or sample >= 100 else sample
    seed = seed if seed is not None else secrets.token_hex(8)
    report = VerifyReport(db=str(store.path), dest=str(dest), sample_percent=percent)
    if objects is not None:
        report.s3_recorded = 0
    recorded: set[str] = set()
    for row in store.iter_backups():
        local = row.local_path
        if local:
            recorded.add(local)
            report.recorded += 1
        if objects is not None and row.s3 is not None:
            report.s3_recorded = (report.s3_recorded or 0) + 1
        if percent is not None and not _chosen(seed, row.product_id, row.image_id, percent):
            continue
        if local:
            _check_file(report, dest, row, local)
            if progress is not None:
                progress(local)
        if objects is not None and row.s3 is not None:
            _check_object(report, objects, row, row.s3)
            if progress is not None:
                progress(row.s3.key)
    _walk(report, dest, recorded)
    return report


def repair(store: Store, report: VerifyReport) -> int:
    """Mark the rows of what ``report`` found missing or changed, so that the next sync fetches it again.

    Only what was checked (with a sample, the sample). The caller holds the sync lock
    (:func:`imgsync.store.run_lock`). Sets and returns ``report.repaired``.
    """

    def marks(items: list[Difference]) -> Iterator[tuple[ImageRef, str, str]]:
        for item in items:
            yield ImageRef(item.product_id, item.image_id), item.where, item.repair_error

    report.repaired = store.mark_for_repair(
        files=marks(report.missing + report.changed),
        objects=marks(report.s3_missing + report.s3_changed),
    )
    return report.repaired


def _check_file(report: VerifyReport, dest: Path, row: StoredImage, relative: str) -> None:
    pid, iid = row.product_id, row.image_id
    report.checked += 1
    try:
        path = resolve_inside(dest, relative)
    except ImageError:
        report.changed.append(
            Difference(relative, pid, iid, "the recorded path is outside the destination", CORRUPT_PATH)
        )
        return
    try:
        size, sha256 = hash_file(path)
    except FileNotFoundError:
        report.missing.append(Difference(relative, pid, iid, "not there", MISSING_FILE))
        return
    except OSError as exc:
        report.errors.append(Difference(relative, pid, iid, f"cannot read: {exc.strerror or exc}"))
        return
    if size != row.size:
        report.changed.append(
            Difference(relative, pid, iid, f"{size} bytes, recorded {row.size}", CORRUPT_SIZE)
        )
    elif sha256 != row.sha256:
        report.changed.append(
            Difference(relative, pid, iid, f"sha256 {sha256}, recorded {row.sha256}", CORRUPT_FILE)
        )
    else:
        report.ok += 1


def _check_object(report: VerifyReport, objects: ObjectStore, row: StoredImage, recorded: S3Object) -> None:
    pid, iid, key = row.product_id, row.image_id, recorded.key
    expected = recorded.sha256 or row.sha256
    report.s3_checked += 1
    try:
        found = objects.head(key)
    except UploadError as exc:
        report.errors.append(Difference(key, pid, iid, f"S3: {exc.message}"))
        return
    if found is None:
        report.s3_missing.append(Difference(key, pid, iid, "no such object", MISSING_OBJECT))
    elif found.size != row.size:
        report.s3_changed.append(
            Difference(key, pid, iid, f"{found.size} bytes, recorded {row.size}", CORRUPT_OBJECT)
        )
    elif not found.same_bytes(expected, row.size):
        report.s3_changed.append(
            Difference(
                key,
                pid,
                iid,
                f"sha256 metadata {found.sha256 or 'unset'}, recorded {expected}",
                CORRUPT_OBJECT,
            )
        )
    else:
        report.s3_ok += 1


def _walk(report: VerifyReport, dest: Path, recorded: set[str]) -> None:
    """Files under dest that no row names, and temporary files (symbolic links to folders are not followed)."""
    for folder, subfolders, files in os.walk(dest):
        subfolders.sort()
        base = Path(folder).relative_to(dest)
        for name in sorted(files):
            relative = (base / name).as_posix()
            if is_temp_name(name):
                report.temp_files.append(relative)
            elif relative not in recorded:
                report.unrecorded.append(relative)
