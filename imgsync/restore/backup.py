"""The bytes of a backup, read from dest or from S3 and checked against the recorded sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from ..errors import DownloadFailed, UploadError
from ..localfs import resolve_inside
from ..models import StoredImage


class ObjectReader(Protocol):
    def read(self, key: str) -> bytes | None: ...


def read_backup(row: StoredImage, dest: Path, objects: ObjectReader | None) -> tuple[bytes | None, str]:
    """``(bytes, "")`` when the local file, else the S3 object, holds the recorded bytes; else
    ``(None, why)``. Nothing that does not hash to the row's sha256 is ever returned."""
    if not row.sha256:
        return None, "the database records no sha256 for this image (never backed up)"
    problems: list[str] = []
    if row.local_path:
        try:
            path = resolve_inside(dest, row.local_path)
            data = path.read_bytes()
        except DownloadFailed:
            problems.append(f"the recorded path {row.local_path!r} lies outside dest")
        except FileNotFoundError:
            problems.append(f"{row.local_path}: no such file")
        except OSError as exc:
            problems.append(f"{row.local_path}: {exc.strerror}")
        else:
            if hashlib.sha256(data).hexdigest() == row.sha256:
                return data, ""
            problems.append(f"{row.local_path} holds other bytes (sha256 differs)")
    if row.s3 is not None:
        if objects is None:
            problems.append(f"s3 object {row.s3.key} not read (S3 is off)")
        else:
            try:
                data_or_none = objects.read(row.s3.key)
            except UploadError as exc:
                problems.append(exc.message)
            else:
                if data_or_none is None:
                    problems.append(f"s3 object {row.s3.key}: no such object")
                elif hashlib.sha256(data_or_none).hexdigest() == row.sha256:
                    return data_or_none, ""
                else:
                    problems.append(f"s3 object {row.s3.key} holds other bytes (sha256 differs)")
    if not problems:
        problems.append("no local file or S3 object is recorded")
    return None, "; ".join(problems)
