"""The pipeline: fetch metadata in batches, plan each image, then execute the plan.

For every chunk of up to 50 images: one ``batch`` call of ``catalog.productImage.get``, then a
decision per image (:func:`decide`: download, upload, unchanged, missing, failed) with its reason, then
the downloads and uploads in a pool of worker threads that share the client's leaky bucket. Metadata
for the next chunks is fetched while earlier downloads run, but never far ahead of them, so each
``downloadUrl`` is used within moments of being issued. Rows are written by the calling thread only,
after the file is in place. ``dry_run`` stops after the decision and prints the plan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .bitrix import BATCH_SIZE, Body, Client, Listing
from .download import file_matches, relative_path, resolve_inside, save_stream
from .errors import (
    DownloadFailed,
    ImageError,
    ImageGone,
    ImgsyncError,
    InternalError,
    Interrupted,
    UploadError,
)
from .models import ImageRef, PortalImage
from .store import Record, Store, utcnow

log = logging.getLogger(__name__)

DOWNLOAD, UPLOAD, UNCHANGED, MISSING, FAILED = "download", "upload", "unchanged", "missing", "failed"
# The longest a download link may wait for its turn, at the configured rate, should every batch in flight
# turn out to need all its downloads (see Syncer._pipeline).
LINK_WAIT_S = 30.0
# What the row of a backup being replaced says until the new version's row is committed.
_REPLACING = {"status": "failed", "error": "a newer version was being downloaded when the run stopped"}


class Uploader(Protocol):
    """What the sync needs of an S3 store (implemented by :mod:`imgsync.s3`)."""

    def check(self) -> None:
        """Raise :class:`~imgsync.errors.S3SetupError` when the bucket or credentials cannot work."""

    def key_for(self, relative: str) -> str: ...

    def head(self, key: str) -> dict[str, Any] | None:
        """``{"sha256", "size", "etag"}`` of the object, or None when it does not exist."""

    def put(self, path: Path, key: str, *, sha256: str, size: int, content_type: str, ref: ImageRef) -> str:
        """Upload; return the ETag. Raises :class:`~imgsync.errors.UploadError`."""
        ...


@dataclass
class SyncOptions:
    dest: Path
    force: bool = False
    dry_run: bool = False
    workers: int = 4
    keep_local: bool = True
    uploader: Uploader | None = None


@dataclass(frozen=True)
class ProductChunk:
    """Up to 50 products whose images are listed, then planned, from one ``batch`` call.

    ``skip`` holds the pairs the run names on their own: they are processed there, not twice.
    """

    product_ids: tuple[int, ...]
    skip: Container[ImageRef] = ()


@dataclass
class Plan:
    """The decision for one image, with the reason a person reads in ``--dry-run``."""

    ref: ImageRef
    action: str
    reason: str
    image: PortalImage | None = None
    row: dict[str, Any] | None = None


#: How many failed images the summary lists (``failures``); ``failed`` counts them all.
MAX_FAILURES = 100


@dataclass
class Summary:
    """The counts of the ``--json`` summary, plus what the CLI needs to choose an exit code.

    ``failures``: up to :data:`MAX_FAILURES` ``{"product_id", "image_id", "reason"}``. ``complete`` is false when
    the run stopped before the end (an error, a signal, a cap); ``deferred``: images left for the next run.
    """

    run_id: int | None = None
    requested: int = 0
    downloaded: int = 0
    unchanged: int = 0
    uploaded: int = 0
    missing: int = 0
    failed: int = 0
    duration_s: float = 0.0
    error: str | None = None
    exit_code: int = 0
    complete: bool = True
    deferred: int = 0
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    requests: int = 0
    retries: int = 0
    answers_503: int = 0
    answers_429: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    #: The keys of :meth:`as_json`, in order: every run's object has all of them.
    KEYS = (
        "run_id",
        "exit_code",
        "complete",
        "requested",
        "downloaded",
        "unchanged",
        "uploaded",
        "missing",
        "failed",
        "deferred",
        "bytes_downloaded",
        "bytes_uploaded",
        "requests",
        "retries",
        "answers_503",
        "answers_429",
        "duration_s",
        "error",
        "failures",
    )

    def add_failure(self, ref: ImageRef, reason: str) -> None:
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(
                {"product_id": int(ref.product_id), "image_id": int(ref.image_id), "reason": reason}
            )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.KEYS}
        out["duration_s"] = round(self.duration_s, 3)
        out["error"] = self.error or None
        out["failures"] = [dict(f) for f in self.failures]
        return out


def decide(
    ref: ImageRef, found: PortalImage | ImageError, row: dict[str, Any] | None, opts: SyncOptions
) -> Plan:
    """The contract's skip rule, for one image. Pure but for a stat of the local file."""
    if isinstance(found, ImageGone):
        reason = (
            "gone upstream; the backup is kept" if row and row.get("sha256") else "not found on the portal"
        )
        return Plan(ref, MISSING, reason, None, row)
    if isinstance(found, ImageError):
        return Plan(ref, FAILED, found.message, None, row)
    image = found
    if row is None or not row.get("sha256"):
        return Plan(ref, DOWNLOAD, "new", image, row)
    if opts.force:
        return Plan(ref, DOWNLOAD, "forced", image, row)
    recorded = (
        row.get("name") or "",
        row.get("type") or "",
        row.get("create_time") or "",
        row.get("detail_url") or "",
    )
    changed = [
        label
        for label, old, new in zip(
            ("name", "type", "createTime", "detailUrl"), recorded, image.fingerprint(), strict=True
        )
        if old != new
    ]
    if changed:
        return Plan(ref, DOWNLOAD, "changed: " + ", ".join(changed), image, row)
    local_file = inside_dest(opts.dest, row.get("local_path"))
    local = local_file is not None and file_matches(local_file, row.get("size"))
    uploader = opts.uploader
    in_s3 = bool(row.get("s3_key")) and row.get("s3_sha256") == row.get("sha256")
    if uploader is not None:
        in_s3 = in_s3 and row.get("s3_key") == uploader.key_for(relative_path(ref, image.name))
    if opts.keep_local and not local:
        return Plan(ref, DOWNLOAD, "local file missing or of another size", image, row)
    if uploader is not None and not in_s3:
        if local:
            return Plan(ref, UPLOAD, "not in S3 yet", image, row)
        return Plan(ref, DOWNLOAD, "not in S3 and no local copy", image, row)
    if not opts.keep_local and not local and not in_s3:
        return Plan(ref, DOWNLOAD, "no backup present", image, row)
    return Plan(ref, UNCHANGED, "unchanged", image, row)


class Syncer:
    """Runs one sync. ``run(chunks)`` is the whole job; everything it needs is passed in."""

    #: Told the size of each download (the log's progress line); optional, set by the runner.
    progress_bytes: Callable[[int], None] | None = None

    def __init__(
        self,
        client: Client,
        store: Store,
        opts: SyncOptions,
        *,
        progress: Callable[[str], None] | None = None,
        progress_extend: Callable[[int], None] | None = None,
        on_plan: Callable[[Plan], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.opts = opts
        self.progress = progress or (lambda action: None)
        self.progress_extend = progress_extend or (lambda n: None)
        self.on_plan = on_plan
        self.stop = stop or client.stop
        self.summary = Summary()
        self._pending_records: list[Record] = []
        self._last_flush = time.monotonic()
        self._expected = BATCH_SIZE  # downloads a batch in flight will bring, as the last chunk did

    # -- the whole run ----------------------------------------------------------------------------
    def run(
        self, chunks: Iterable[list[ImageRef] | ProductChunk], *, extra_plans: Iterable[Plan] = ()
    ) -> Summary:
        """Sync every chunk; return the summary. Fatal errors are raised after what finished is recorded."""
        started = time.monotonic()
        dry = self.opts.dry_run
        if not dry:
            self.summary.run_id = self.store.start_run()
        try:
            for plan in extra_plans:
                self._handle_plan(plan, None)
            self._pipeline(iter(chunks))
        except ImgsyncError as exc:
            self.summary.error = exc.message
            self.summary.exit_code = exc.exit_code
            if isinstance(exc, Interrupted):
                # A stop event set by a signal handler knows the process's exit code (128 + signal).
                self.summary.exit_code = getattr(self.stop, "exit_code", exc.exit_code)
            exc.summary = self.summary  # the CLI reports what was done
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C (or SIGTERM) while the first one's stop was under way: still a stop.
            stopped = Interrupted("interrupted")
            self.summary.error = stopped.message
            self.summary.exit_code = getattr(self.stop, "exit_code", stopped.exit_code)
            stopped.summary = self.summary
            raise stopped from None
        except Exception as exc:
            # A defect of ours: what finished is recorded below, and the run row says what happened.
            internal = InternalError(f"internal error: {type(exc).__name__}: {exc}")
            self.summary.error = internal.message
            self.summary.exit_code = internal.exit_code
            internal.summary = self.summary
            raise internal from exc
        finally:
            self._flush(force=True)
            self.summary.duration_s = time.monotonic() - started
            if not self.summary.exit_code:
                self.summary.exit_code = 1 if self.summary.failed else 0
            # --- run totals (JSON summary, metrics) ---
            self.summary.complete = self.summary.complete and not self.summary.error
            for name, attr in (("requests", "requests_sent"), ("retries", "retries")):
                setattr(self.summary, name, getattr(self.client, attr, 0))
            self.summary.answers_503 = getattr(self.client, "answers_503", 0)
            self.summary.answers_429 = getattr(self.client, "answers_429", 0)
            # --- end run totals ---
            if not dry and self.summary.run_id is not None:
                self.store.finish_run(
                    self.summary.run_id,
                    self.summary.as_json(),
                    self.summary.exit_code,
                    self.summary.error or "",
                )
        return self.summary

    def _fetch(self, item: list[ImageRef] | ProductChunk) -> dict[Any, Any]:
        """The network half of a chunk (runs in a worker): one ``batch`` call."""
        if isinstance(item, ProductChunk):
            return self.client.list_images(list(item.product_ids))
        return self.client.get_images(item)

    def _unpack(
        self,
        item: list[ImageRef] | ProductChunk,
        result: dict[Any, Any],
        executor: tuple[dict[Future[Record], Plan], ThreadPoolExecutor],
    ) -> tuple[list[ImageRef], dict[ImageRef, PortalImage | ImageError]]:
        """The refs and metadata of a fetched chunk. A product listing already holds every image's
        metadata and a fresh link, so its images need no ``get`` call of their own."""
        if not isinstance(item, ProductChunk):
            return item, result
        found: dict[ImageRef, PortalImage | ImageError] = {}
        extra: list[Plan] = []
        for pid, listing in result.items():
            if isinstance(listing, ImageError):
                extra.append(Plan(ImageRef(pid, 0), FAILED, f"product {pid}: {listing.message}"))
                continue
            for image in listing.images:
                if image.ref not in item.skip and image.ref not in found:
                    found[image.ref] = image
        extra.extend(missing_for_products(self.store, result, item.skip))
        self.progress_extend(len(found) + len(extra))
        for plan in extra:
            self._handle_plan(plan, executor)
        return list(found), found

    def _pipeline(self, chunks: Iterator[list[ImageRef] | ProductChunk]) -> None:
        workers = max(1, self.opts.workers)
        meta_pool = ThreadPoolExecutor(workers, thread_name_prefix="meta")
        work_pool = ThreadPoolExecutor(workers, thread_name_prefix="work")
        meta: dict[Future[Any], list[ImageRef] | ProductChunk] = {}
        work: dict[Future[Record], Plan] = {}
        # How far metadata may run ahead of the downloads: one chunk beyond what the workers hold, so
        # a link waits at most a chunk's worth of downloads before it is used. A batch in flight counts
        # as many downloads as the last chunk needed: a run with nothing to download (warm) keeps up to
        # ``workers`` batches in flight, a cold one fetches one chunk ahead. Should every batch in flight
        # need all its downloads after all, none of their links waits more than LINK_WAIT_S at the
        # configured rate (on a 2/s portal that is the one chunk ahead of before).
        backlog_limit = workers + BATCH_SIZE
        worst_limit = max(backlog_limit, int(self.client.rate * LINK_WAIT_S))
        exhausted = False
        fatal: BaseException | None = None
        try:
            while True:
                if self.stop.is_set():
                    raise Interrupted("interrupted")
                while (
                    not exhausted
                    and len(meta) < workers
                    and len(work) + self._expected * len(meta) < backlog_limit
                    and len(work) + BATCH_SIZE * len(meta) < worst_limit
                ):
                    chunk = next(chunks, None)
                    if chunk is None:
                        exhausted = True
                        break
                    meta[meta_pool.submit(self._fetch, chunk)] = chunk
                if not meta and not work:
                    break
                done, _ = wait([*meta, *work], timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut in meta:
                        item = meta.pop(fut)
                        refs, found = self._unpack(item, fut.result(), (work, work_pool))
                        self._plan_chunk(refs, found, work, work_pool)
                    else:
                        plan = work.pop(fut)
                        try:
                            record = fut.result()
                        except ImgsyncError as exc:
                            if exc.fatal:
                                raise
                            record = self._failed(plan, exc)
                        self._record(record)
                self._flush()
        except BaseException as exc:
            fatal = exc
            self.stop.set()
            raise
        finally:
            for fut in list(meta) + list(work):
                fut.cancel()
            meta_pool.shutdown(wait=True, cancel_futures=True)
            work_pool.shutdown(wait=True, cancel_futures=True)
            # Downloads that finished while we were stopping are in place: record them too.
            for fut in work:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._record(fut.result())
            if fatal is not None and not isinstance(fatal, ImgsyncError):
                log.debug("stopped by %r", fatal)

    def _plan_chunk(
        self,
        chunk: list[ImageRef],
        found: dict[ImageRef, PortalImage | ImageError],
        work: dict[Future[Record], Plan],
        pool: ThreadPoolExecutor,
    ) -> None:
        rows = self.store.rows_for(chunk)
        plans = [
            decide(ref, found.get(ref) or ImageError("no answer from the portal"), rows.get(ref), self.opts)
            for ref in chunk
        ]
        self._expected = max(1, sum(plan.action in (DOWNLOAD, UPLOAD) for plan in plans))
        # A download that will land on the very file (or S3 object) an ``ok`` row describes: that row
        # stops claiming it first, in one commit for the chunk. Otherwise a kill between the rename and
        # the next commit would leave an ``ok`` row describing bytes that are no longer there.
        replacing = [plan.ref for plan in plans if self._replaces_backup(plan)]
        if replacing and not self.opts.dry_run:
            self.store.save(None, [Record(ref, "replacing", fields=dict(_REPLACING)) for ref in replacing])
        for plan in plans:
            self._handle_plan(plan, (work, pool))

    def _replaces_backup(self, plan: Plan) -> bool:
        """Will this plan's download land on the file, or S3 object, that its ``ok`` row describes?"""
        row, image, uploader = plan.row, plan.image, self.opts.uploader
        if plan.action != DOWNLOAD or image is None or not row or row.get("status") != "ok":
            return False
        relative = relative_path(plan.ref, image.name)
        return row.get("local_path") == relative or (
            uploader is not None
            and bool(row.get("s3_key"))
            and row.get("s3_key") == uploader.key_for(relative)
        )

    def _handle_plan(
        self, plan: Plan, executor: tuple[dict[Future[Record], Plan], ThreadPoolExecutor] | None
    ) -> None:
        if self.on_plan is not None:
            self.on_plan(plan)
        if self.opts.dry_run:
            self._count_plan(plan)
            return
        if plan.action in (DOWNLOAD, UPLOAD) and executor is not None:
            work, pool = executor
            job = self._download if plan.action == DOWNLOAD else self._upload_only
            work[pool.submit(job, plan)] = plan
            return
        self._record(self._immediate(plan))

    def _count_plan(self, plan: Plan) -> None:
        s = self.summary
        s.requested += 1
        if plan.action == DOWNLOAD:
            s.downloaded += 1
        elif plan.action == UPLOAD:
            s.unchanged += 1
            s.uploaded += 1
        elif plan.action == UNCHANGED:
            s.unchanged += 1
        elif plan.action == MISSING:
            s.missing += 1
        else:
            s.failed += 1
        self.progress(plan.action)

    # -- what each action does --------------------------------------------------------------------
    def _immediate(self, plan: Plan) -> Record:
        """unchanged, missing and failed need no download: just the row and the event."""
        if plan.action == UNCHANGED:
            assert plan.image is not None
            return Record(plan.ref, "unchanged", "", {"status": "ok", "error": None})
        if plan.action == MISSING:
            return Record(plan.ref, "missing", plan.reason, {"status": "missing", "error": plan.reason})
        # A product that could not be listed has no image row to mark: its event says what happened.
        fields = {"status": "failed", "error": plan.reason} if plan.ref.image_id else None
        return Record(plan.ref, "failed", plan.reason, fields)

    def _failed(self, plan: Plan, exc: ImgsyncError) -> Record:
        if isinstance(exc, ImageGone):
            reason = "gone upstream; the backup is kept"
            return Record(plan.ref, "missing", reason, {"status": "missing", "error": reason})
        return Record(plan.ref, "failed", exc.message, {"status": "failed", "error": exc.message})

    def _download(self, plan: Plan) -> Record:
        """Download one image (the client fetches fresh links and retries), then upload it if S3 is on."""
        assert plan.image is not None
        ref = plan.ref

        def write(image: PortalImage, body: Body) -> tuple[int, str, str]:
            target = resolve_inside(self.opts.dest, relative_path(ref, image.name))
            size, sha256 = save_stream(body.chunks(), target, expected_size=body.content_length)
            return size, sha256, body.content_type

        image, (size, sha256, content_type) = self.client.download(plan.image, write)
        relative = relative_path(ref, image.name)
        target = resolve_inside(self.opts.dest, relative)
        log.info("downloaded %s (%d bytes, %s)", ref, size, plan.reason)
        row = plan.row or {}
        now = utcnow()
        fields: dict[str, Any] = {
            "name": image.name,
            "type": image.type,
            "create_time": image.create_time,
            "detail_url": image.detail_url,
            "sha256": sha256,
            "size": size,
            "content_type": content_type or None,
            "local_path": relative,
            "status": "ok",
            "error": None,
        }
        if row.get("sha256") != sha256:
            fields["last_changed_at"] = now
        old_path = row.get("local_path")
        record = Record(ref, "downloaded", f"{size} bytes, {plan.reason}", fields)
        if self.opts.uploader is not None:
            self._ensure_uploaded(record, target, relative, row, force=self.opts.force)
        if old_path and old_path != relative and record.fields and record.fields.get("status") == "ok":
            # The image was replaced under a new name: the new file supersedes the old one, which goes
            # once the new row is committed (see _flush), never while the old row still names it.
            record.remove_after += (old_path,)
        return record

    def _upload_only(self, plan: Plan) -> Record:
        """The local file is current but S3 is not: upload without downloading."""
        assert plan.image is not None and plan.row is not None
        row = plan.row
        relative = row["local_path"]
        path = inside_dest(self.opts.dest, relative)
        if path is None:
            raise DownloadFailed(f"the recorded path {relative!r} is outside the destination folder")
        record = Record(
            plan.ref,
            "unchanged",
            plan.reason,
            {"status": "ok", "error": None, "sha256": row["sha256"], "size": row["size"]},
        )
        self._ensure_uploaded(record, path, relative, row, force=False)
        return record

    def _ensure_uploaded(
        self, record: Record, path: Path, relative: str, row: dict[str, Any], *, force: bool
    ) -> None:
        """Put the file in S3 unless the same bytes are already there; update ``record`` in place."""
        uploader = self.opts.uploader
        assert uploader is not None and record.fields is not None
        fields = record.fields
        key = uploader.key_for(relative)
        sha256, size = fields["sha256"], fields["size"]
        content_type = fields.get("content_type") or row.get("content_type") or "application/octet-stream"
        try:
            if not force and row.get("s3_key") == key and row.get("s3_sha256") == sha256:
                etag = row.get("s3_etag")
                sent = False
            else:
                existing = None if force else uploader.head(key)
                if existing and existing.get("sha256") == sha256 and existing.get("size") == size:
                    etag, sent = existing.get("etag"), False
                else:
                    etag = uploader.put(
                        path, key, sha256=sha256, size=size, content_type=content_type, ref=record.ref
                    )
                    sent = True
        except UploadError as exc:
            fields["status"] = "failed"
            fields["error"] = f"upload failed: {exc.message}"
            record.action = "failed" if record.action == "unchanged" else record.action
            record.extra_actions = ("failed",) if record.action == "downloaded" else ()
            record.detail = fields["error"]
            return
        fields.update({"s3_key": key, "s3_etag": etag, "s3_sha256": sha256})
        if sent:
            record.extra_actions = ("uploaded",)
        if not self.opts.keep_local:
            # Removed after the commit (see _flush): the old row may still name this file until then.
            record.remove_after += (relative,)
            fields["local_path"] = None

    # -- bookkeeping ------------------------------------------------------------------------------
    def _record(self, record: Record) -> None:
        s = self.summary
        s.requested += 1
        actions = (record.action, *record.extra_actions)
        size = int((record.fields or {}).get("size") or 0)
        if record.action == "downloaded":
            s.downloaded += 1
            s.bytes_downloaded += size
            if self.progress_bytes is not None:
                self.progress_bytes(size)
        elif record.action == "unchanged":
            s.unchanged += 1
        elif record.action == "missing":
            s.missing += 1
        if "uploaded" in actions:
            s.uploaded += 1
            s.bytes_uploaded += size
        if "failed" in actions:
            s.failed += 1
            s.add_failure(record.ref, record.detail)  # what -q prints on stderr, one line each
            log.warning("%s failed: %s", record.ref, record.detail)
        self._pending_records.append(record)
        self.progress(record.action)

    def _flush(self, force: bool = False) -> None:
        if not self._pending_records or self.opts.dry_run:
            self._pending_records.clear()
            return
        if force or len(self._pending_records) >= 500 or time.monotonic() - self._last_flush > 0.5:
            records, self._pending_records = self._pending_records, []
            self.store.save(self.summary.run_id, records)
            self._last_flush = time.monotonic()
            for record in records:  # superseded files go only now that no committed row names them
                for relative in record.remove_after:
                    path = inside_dest(self.opts.dest, relative)
                    if path is None:
                        log.warning("not removing %r: it is outside the destination folder", relative)
                    else:
                        _unlink_quietly(path)


def inside_dest(dest: Path, relative: Any) -> Path | None:
    """The file a row's ``local_path`` names, or None when there is none or it would lie outside dest.

    Paths read back from the database pass here: a damaged row must not make a sync read or delete
    anything outside dest.
    """
    if not relative or not isinstance(relative, str):
        return None
    try:
        return resolve_inside(dest, relative)
    except DownloadFailed:
        return None


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)


def missing_for_products(
    store: Store, listed: dict[int, Listing | ImageError], skip: Container[ImageRef] = ()
) -> Iterator[Plan]:
    """Recorded images of listed products that a complete listing no longer shows: gone upstream.

    Nothing is inferred from a listing that failed or is known to be incomplete, and pairs in ``skip``
    (named on their own in this run) are left to their own chunk, which sees them from ``get``.
    """
    for pid, listing in listed.items():
        if isinstance(listing, ImageError) or not listing.complete:
            continue
        present = {img.image_id for img in listing.images}
        for row in store.rows_of_product(pid):
            ref = ImageRef(pid, row["image_id"])
            if row["image_id"] not in present and row["status"] != "missing" and ref not in skip:
                yield Plan(ref, MISSING, "gone upstream; the backup is kept", None, row)


__all__ = [
    "ProductChunk",
    "Plan",
    "Summary",
    "SyncOptions",
    "Syncer",
    "Uploader",
    "decide",
    "missing_for_products",
]
