"""Rebuild the state database from the bucket: ``imgsync rebuild --from-s3``, after a lost database.

Every object imgsync uploads carries in its metadata what the skip rule compares (see :mod:`imgsync.s3`), so
the bucket alone is enough to restore the ``images`` rows: the bucket is listed a page at a time (boto3's
paginator over ``ListObjectsV2``), each object is read with a HEAD in a bounded pool, and the rows are
written in batches of one transaction each. At most ``workers * 4`` HEADs are in flight and one page of
the listing is held, so memory stays flat whatever the bucket holds; a rebuild killed halfway leaves the
batches it committed, each row whole, and ``rebuild --merge`` (or a sync) carries on from there.

An object is used only when everything about it agrees: the key is ``<prefix><product_id>/<image_id>-<safe
name>`` with positive integer ids, the metadata's ids are the key's, ``sha256`` is 64 hex digits, the
skip-rule fields decode, and the key is the one imgsync would write for that name. Anything else is
counted under a reason, with up to 10 example keys, and yields no row: an object that cannot be trusted
makes the next sync download that image again, which is slow but right.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .errors import ImageError, Interrupted, UploadError, UsageError
from .localfs import file_matches, relative_path, resolve_inside
from .models import ImageRef, ObjectInfo, S3Backup
from .s3 import decode_skip_fields
from .store import Store

log = logging.getLogger(__name__)

__all__ = ["REASONS", "DatabaseNotEmpty", "ObjectSource", "RebuildSummary", "parse_key", "rebuild_from_s3"]

#: Why an object was not used, as the summary names it, and what that means for a person.
REASONS = {
    "outside_layout": "key outside the layout <prefix><product_id>/<image_id>-<name>",
    "no_metadata": "no imgsync metadata (sha256, product-id, image-id): not uploaded by imgsync",
    "no_skip_metadata": (
        "uploaded before imgsync recorded name, type, create-time and detail-url: "
        "the next sync downloads it and uploads it again with them"
    ),
    "damaged_metadata": "metadata that disagrees with the key or is malformed",
    "unreadable": "HEAD failed",
    "gone": "deleted between the listing and its HEAD",
}
MAX_EXAMPLES = 10
_ID = re.compile(r"[1-9][0-9]{0,17}")  # positive, and well inside SQLite's 64-bit integers
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class DatabaseNotEmpty(UsageError):
    """The database already records images."""


class ObjectSource(Protocol):
    """What a rebuild needs of the bucket (:class:`imgsync.s3.S3Uploader` has it)."""

    bucket: str
    prefix: str

    def key_for(self, relative: str) -> str: ...

    def list_pages(self) -> Iterator[list[dict[str, Any]]]:
        """Pages of ``{"key", "size", "etag", "last_modified"}``."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """``{"size", "etag", "content_type", "metadata"}``, or None when the object is gone."""


@dataclass
class RebuildSummary:
    """What a rebuild did; ``as_json()`` is the ``--json`` object."""

    bucket: str
    prefix: str
    listed: int = 0  # objects under the prefix
    recorded: int = 0  # rows written
    with_local_file: int = 0  # usable objects whose file is in dest with that size
    already_recorded: int = 0  # --merge: objects an ``ok`` row already records (no HEAD)
    superseded: int = 0  # objects whose image the database records in a newer version
    unusable: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    duration_s: float = 0.0
    complete: bool = True

    @property
    def not_used(self) -> int:
        return sum(self.unusable.values())

    def reject(self, reason: str, key: str) -> None:
        self.unusable[reason] = self.unusable.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(printable(key))

    def as_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "listed": self.listed,
            "recorded": self.recorded,
            "with_local_file": self.with_local_file,
            "already_recorded": self.already_recorded,
            "superseded": self.superseded,
            "not_used": self.not_used,
            "unusable": {
                reason: {"count": n, "meaning": REASONS[reason], "examples": self.examples.get(reason, [])}
                for reason, n in sorted(self.unusable.items())
            },
            "complete": self.complete,
            "duration_s": round(self.duration_s, 3),
        }


def printable(key: str) -> str:
    """A key as it may be shown on a terminal: control characters escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", key)


def parse_key(key: str, prefix: str) -> tuple[ImageRef, str] | None:
    """``(ref, name part)`` of ``<prefix><product_id>/<image_id>-<name>``, or None for any other key."""
    if not key.startswith(prefix):
        return None
    product, slash, rest = key[len(prefix) :].partition("/")
    image, dash, name = rest.partition("-")
    if not (slash and dash and name) or not _ID.fullmatch(product) or not _ID.fullmatch(image):
        return None
    if "/" in name or "\\" in name or _CONTROL.search(name):
        return None
    return ImageRef(int(product), int(image)), name


def _iso(value: Any) -> str:
    """LastModified as the database writes times (ISO 8601, UTC, to the second)."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return str(value or "")


def backup_from(
    source: ObjectSource, dest: Path, listed: dict[str, Any], ref: ImageRef, found: ObjectInfo
) -> S3Backup | str:
    """The row an object restores, or the reason (a key of :data:`REASONS`) it cannot be trusted."""
    key = listed["key"]
    metadata = found.metadata
    ids = (metadata.get("sha256"), metadata.get("product-id"), metadata.get("image-id"))
    if not any(ids):
        return "no_metadata"
    sha256, product, image = ids
    if product != str(ref.product_id) or image != str(ref.image_id):
        return "damaged_metadata"
    if not sha256 or not _SHA256.fullmatch(sha256):
        return "damaged_metadata"
    try:
        fields = decode_skip_fields(metadata)
    except ValueError:
        return "damaged_metadata"
    if fields is None:
        return "no_skip_metadata"
    name, type_, create_time, detail_url = fields
    relative = relative_path(ref, name)
    if source.key_for(relative) != key:
        return "damaged_metadata"  # the key is not the one imgsync writes for that name: copied, renamed
    size = found.size
    if size <= 0:
        return "damaged_metadata"
    local: str | None = None
    if file_matches(dest / relative, size):
        try:
            resolve_inside(dest, relative)  # defence in depth: a symbolic link in dest may point elsewhere
            local = relative
        except ImageError:
            local = None
    return S3Backup(
        ref=ref,
        name=name,
        type=type_,
        create_time=create_time,
        detail_url=detail_url,
        sha256=sha256,
        size=size,
        content_type=found.content_type or None,
        s3_key=key,
        s3_etag=str(found.etag or listed.get("etag") or ""),
        last_modified=_iso(listed.get("last_modified")),
        local_path=local,
    )


def rebuild_from_s3(
    store: Store,
    source: ObjectSource,
    dest: Path,
    *,
    merge: bool = False,
    workers: int = 8,
    batch_size: int = 500,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> RebuildSummary:
    """Fill ``store``'s ``images`` rows from the objects of ``source``; return what was done.

    Raises :class:`DatabaseNotEmpty` (exit 2) when the database records images and ``merge`` is false;
    :class:`~imgsync.errors.S3SetupError` when the bucket cannot be listed; :class:`Interrupted` when
    ``stop`` is set (what was committed stays). ``progress`` is called with the number of objects listed.
    """
    if not merge and store.image_count():
        raise DatabaseNotEmpty(
            f"{store.path} already records {store.image_count()} images: rebuild fills an empty database. "
            "Use --merge to add what the bucket holds to them (after an interrupted rebuild, for one), "
            "or move the database aside"
        )
    started = time.monotonic()
    stop = stop or threading.Event()
    summary = RebuildSummary(source.bucket, source.prefix)
    pending: list[S3Backup] = []
    in_flight: dict[Future[ObjectInfo | None], tuple[dict[str, Any], ImageRef]] = {}
    limit = max(1, workers) * 4
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="rebuild-head")

    def flush(force: bool = False) -> None:
        if pending and (force or len(pending) >= batch_size):
            written = store.upsert_rebuilt(pending)
            summary.recorded += written
            summary.superseded += len(pending) - written
            pending.clear()

    def collect(fut: Future[ObjectInfo | None]) -> None:
        listed, ref = in_flight.pop(fut)
        try:
            found = fut.result()
        except UploadError as exc:
            log.warning("cannot read %s: %s", printable(listed["key"]), exc.message)
            summary.reject("unreadable", listed["key"])
            return
        if found is None:
            summary.reject("gone", listed["key"])
            return
        result = backup_from(source, dest, listed, ref, found)
        if isinstance(result, str):
            summary.reject(result, listed["key"])
        else:
            summary.with_local_file += result.local_path is not None
            pending.append(result)

    def drain(until: int) -> None:
        while len(in_flight) > until:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for fut in done:
                collect(fut)
            flush()

    try:
        for page in source.list_pages():
            parsed = [(item, parse_key(item["key"], source.prefix)) for item in page]
            known = store.recorded_objects([p[0] for _, p in parsed if p]) if merge else {}
            for item, key_parts in parsed:
                if stop.is_set():
                    raise Interrupted("interrupted")
                summary.listed += 1
                if key_parts is None:
                    summary.reject("outside_layout", item["key"])
                    continue
                ref = key_parts[0]
                if known.get(ref) == (item["key"], item["etag"]):
                    summary.already_recorded += 1
                    continue
                drain(limit - 1)
                in_flight[pool.submit(source.head, item["key"])] = (item, ref)
            if progress is not None:
                progress(summary.listed)
        drain(0)
    except BaseException as exc:
        summary.complete = False
        exc.summary = summary  # type: ignore[attr-defined]  # the CLI reports what was done
        for fut in in_flight:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        # HEADs that finished are worth their rows: commit them, so the next run has less to do. A failure
        # here (the database itself failing) must not hide the first one.
        try:
            for fut in [f for f in in_flight if f.done() and not f.cancelled()]:
                collect(fut)
            flush(force=True)
        except Exception as exc:
            log.warning("could not record the last objects read: %s", exc)
        summary.duration_s = time.monotonic() - started
        raise
    pool.shutdown(wait=True)
    flush(force=True)
    summary.duration_s = time.monotonic() - started
    return summary
