"""``imgsync restore --to DIR``: backups into a folder, checked and written atomically; no portal call."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ImgsyncError
from ..localfs import relative_path, resolve_inside, save_stream
from ..models import StoredImage
from .backup import ObjectReader, read_backup
from .summary import RestoreSummary

log = logging.getLogger(__name__)


def restore_to_folder(
    rows: Sequence[StoredImage],
    folder: Path,
    *,
    source_dest: Path,
    objects: ObjectReader | None = None,
    dry_run: bool = False,
    max_duration_s: float | None = None,
    max_bytes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> RestoreSummary:
    """Write each row's backup to ``folder/<pid>/<iid>-<safe name>``: read from dest or S3, checked
    against its sha256, written atomically. A file there with the same bytes is left alone (``present``)."""
    progress = progress or (lambda action: None)
    summary = RestoreSummary(plan=[] if dry_run else None, to_dir=True)
    summary.selected = len(rows)
    started = time.monotonic()
    for n, row in enumerate(rows):
        if max_duration_s is not None and time.monotonic() - started >= max_duration_s:
            summary.deferred += len(rows) - n
            summary.complete = False
            break
        if max_bytes is not None and summary.bytes_sent >= max_bytes:
            summary.deferred += len(rows) - n
            summary.complete = False
            break
        relative = relative_path(row.ref, row.name)
        target = resolve_inside(folder, relative)
        action, reason = "restore", f"into {target}"
        if target.is_file() and _sha256_of(target) == row.sha256:
            action, reason = "present", f"{target} holds these bytes"
        data: bytes | None = None
        if action == "restore":
            data, problem = read_backup(row, source_dest, objects)
            if data is None:
                action, reason = "no backup", problem
        if summary.plan is not None:
            summary.plan.append(
                {
                    "product_id": row.product_id,
                    "image_id": row.image_id,
                    "target_product_id": None,
                    "action": action,
                    "reason": reason,
                    "name": row.name,
                }
            )
        if action == "present":
            summary.present += 1
        elif action == "no backup":
            summary.add_failure(row.product_id, row.image_id, f"no backup: {reason}")
        else:
            assert data is not None
            if not dry_run:
                try:
                    save_stream([data], target, expected_size=len(data))
                except ImgsyncError as exc:
                    if exc.fatal:
                        raise
                    summary.add_failure(row.product_id, row.image_id, exc.message)
                    progress("failed")
                    continue
                log.info("wrote %s", target)
            summary.restored += 1
            summary.bytes_sent += len(data)
        progress(action)
    summary.duration_s = time.monotonic() - started
    summary.exit_code = 1 if summary.failed else 5 if summary.deferred else 0
    return summary


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    except OSError:
        return ""
    return digest.hexdigest()
