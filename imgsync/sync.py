"""The pipeline: fetch metadata in batches, plan each image, then execute the plan.

For every chunk of up to 50 images: one ``batch`` call of ``catalog.productImage.get``, then a
decision per image (:func:`decide`: download, upload, unchanged, missing, failed) with its reason, then
the downloads and uploads in a pool of worker threads that share the client's leaky bucket. Metadata
for the next chunks is fetched while earlier downloads run, but never far ahead of them, so each
``downloadUrl`` is used within moments of being issued. Rows are written by the calling thread only,
after the file is in place; the one exception is the worker whose download is about to go over a recorded
backup, which first marks that row (see ``Store.mark_replacing``). ``dry_run`` stops after the decision and
prints the plan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from .bitrix import BATCH_SIZE, Body, Client, Listing
from .errors import (
    DeadlineReached,
    DownloadFailed,
    ImageError,
    ImageGone,
    ImgsyncError,
    InternalError,
    Interrupted,
    LocalFileChanged,
    UploadError,
)
from .localfs import NotPlain, file_matches, relative_path, resolve_inside, save_stream, size_inside
from .models import (
    Action,
    Event,
    ImageRef,
    ObjectInfo,
    Outcome,
    PortalImage,
    S3Object,
    StopRequest,
    StoredImage,
)
from .store import Store

log = logging.getLogger(__name__)

# The longest a download link may wait for its turn, at the configured rate, should every batch in flight
# turn out to need all its downloads (see Syncer._pipeline).
LINK_WAIT_S = 30.0


class Uploader(Protocol):
    """What the sync needs of an S3 store (implemented by :mod:`imgsync.s3`)."""

    def check(self) -> None:
        """Raise :class:`~imgsync.errors.S3SetupError` when the bucket or credentials cannot work."""

    def key_for(self, relative: str) -> str: ...

    def head(self, key: str) -> ObjectInfo | None:
        """What the object is (its sha256 metadata, size, ETag), or None when it does not exist."""

    def put(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        size: int,
        content_type: str,
        ref: ImageRef,
        image: PortalImage | None = None,
    ) -> str:
        """Upload a file that is hashed as it is read and checked by the store (with ``image``'s skip-rule
        fields in the metadata); return the ETag. Raises :class:`~imgsync.errors.LocalFileChanged` when the
        file does not hold ``sha256``, :class:`~imgsync.errors.UploadError` otherwise."""
        ...

    def holds(self, found: ObjectInfo, path: Path | None, sha256: str, size: int) -> bool:
        """Are ``found``'s bytes known (by the checksum the store verified) to be these?"""
        ...

    def refresh(
        self,
        key: str,
        found: ObjectInfo,
        *,
        sha256: str,
        size: int,
        content_type: str,
        ref: ImageRef,
        image: PortalImage,
        path: Path | None = None,
    ) -> str:
        """Replace the object's metadata with ``image``'s by a server-side copy; return the ETag."""
        ...


@dataclass
class SyncOptions:
    dest: Path
    force: bool = False
    dry_run: bool = False
    workers: int = 4
    keep_local: bool = True
    uploader: Uploader | None = None
    #: Caps (None: none). At a cap the run takes no new work, finishes what is in flight and exits 5.
    max_duration_s: float | None = None
    max_downloads: int | None = None
    max_bytes: int | None = None
    _root: str | None = field(default=None, init=False, repr=False, compare=False)

    def dest_root(self) -> str:
        """``dest``, resolved once per run (the skip rule checks every image's file under it)."""
        if self._root is None:
            self._root = str(self.dest.resolve())
        return self._root


@dataclass(frozen=True)
class ProductChunk:
    """Up to 50 products whose images are listed, then planned, from one ``batch`` call.

    ``skip`` holds the pairs the run names on their own: they are processed there, not twice.
    """

    product_ids: tuple[int, ...]
    skip: Container[ImageRef] = ()
    #: The picture ids the catalog's listing showed for these items (``sync --all``): those an image list
    #: leaves out are asked for with ``get``.
    listed: Mapping[int, frozenset[int]] | None = None


@dataclass(frozen=True)
class _Listed:
    """A :class:`ProductChunk`'s answers: each product's image list, ``get``'s answers for the images the
    lists left out (see :meth:`Syncer._left_out`), and which of the products' images are recorded."""

    listings: Mapping[int, Listing | ImageError]
    asked: Mapping[ImageRef, PortalImage | ImageError]
    recorded: frozenset[ImageRef]


@dataclass(frozen=True)
class PlannedChunk:
    """Plans decided without a call to the portal (an item listed as it was recorded, images of items
    gone from the catalog): executed as they come, no ``batch`` of their own."""

    plans: tuple[Plan, ...]


@dataclass(frozen=True)
class Plan:
    """The decision for one image, with the reason a person reads in ``--dry-run``.

    ``relative`` (the file under dest) and ``s3_key`` are computed once, from the image as the portal
    names it now, for the executors to use as they are.
    """

    ref: ImageRef
    action: Action
    reason: str
    image: PortalImage | None = None
    row: StoredImage | None = None
    relative: str | None = None
    s3_key: str | None = None

    @property
    def name(self) -> str:
        return self.image.name if self.image else (self.row.name if self.row else "")

    def as_json(self) -> dict[str, Any]:
        return {
            "product_id": self.ref.product_id,
            "image_id": self.ref.image_id,
            "action": str(self.action),
            "reason": self.reason,
            "name": self.name,
        }


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
    #: A dry run's plan, one ``Plan.as_json()`` per image (None in a real run).
    plan: list[dict[str, Any]] | None = None

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
        if self.plan is not None:
            out["plan"] = list(self.plan)
        return out


def decide(
    ref: ImageRef, found: PortalImage | ImageError, row: StoredImage | None, opts: SyncOptions
) -> Plan:
    """The contract's skip rule, for one image. Pure but for a stat of the local file."""
    if isinstance(found, ImageGone):
        reason = "gone upstream; the backup is kept" if row and row.sha256 else "not found on the portal"
        return Plan(ref, Action.MISSING, reason, None, row)
    if isinstance(found, ImageError):
        return Plan(ref, Action.FAILED, found.message, None, row)
    image = found
    relative = relative_path(ref, image.name)
    key = opts.uploader.key_for(relative) if opts.uploader is not None else None

    def plan(action: Action, reason: str) -> Plan:
        return Plan(ref, action, reason, image, row, relative, key)

    if row is None or not row.sha256:
        return plan(Action.DOWNLOAD, "new")
    if opts.force:
        return plan(Action.DOWNLOAD, "forced")
    changed = [
        label
        for label, old, new in zip(
            ("name", "type", "createTime", "detailUrl"), row.fingerprint(), image.fingerprint(), strict=True
        )
        if old != new
    ]
    if changed:
        return plan(Action.DOWNLOAD, "changed: " + ", ".join(changed))
    local, in_s3 = backup_state(row, key, opts)
    if opts.keep_local and not local:
        return plan(Action.DOWNLOAD, "local file missing or of another size")
    if opts.uploader is not None and not in_s3:
        if local:
            return plan(Action.UPLOAD, "not in S3 yet")
        return plan(Action.DOWNLOAD, "not in S3 and no local copy")
    if not opts.keep_local and not local and not in_s3:
        return plan(Action.DOWNLOAD, "no backup present")
    return plan(Action.UNCHANGED, "unchanged")


def backup_state(row: StoredImage, key: str | None, opts: SyncOptions) -> tuple[bool, bool]:
    """(the local file is there with the recorded size, the recorded S3 object is the one at ``key``)."""
    local = _local_present(opts, row.local_path, row.size)
    in_s3 = row.s3 is not None and row.s3.sha256 == row.sha256 and row.s3.key == key
    return local, in_s3


def _local_present(opts: SyncOptions, relative: str | None, size: int | None) -> bool:
    """The row's local file is there under dest with the recorded size (``file_matches(inside_dest(...))``)."""
    if size is None or not relative or not isinstance(relative, str):
        return False
    try:
        return size_inside(opts.dest_root(), relative) == size
    except NotPlain:
        local_file = inside_dest(opts.dest, relative)
        return local_file is not None and file_matches(local_file, size)


def backed_up_as_recorded(row: StoredImage, opts: SyncOptions) -> bool:
    """The skip rule's half that needs no metadata: the row is ``ok`` and its backup is present. For an
    item whose listing shows exactly its recorded pictures (``sync --all``), that is all there is to check."""
    if row.status != "ok" or not row.sha256:
        return False
    key = opts.uploader.key_for(relative_path(row.ref, row.name)) if opts.uploader is not None else None
    local, in_s3 = backup_state(row, key, opts)
    if opts.keep_local and not local:
        return False
    if opts.uploader is not None and not in_s3:
        return False
    return local or in_s3


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
        self.summary = Summary(plan=[] if opts.dry_run else None)
        self._pending: list[Outcome] = []
        self._last_flush = time.monotonic()
        self._expected = BATCH_SIZE  # downloads a batch in flight will bring, as the last chunk did
        self._started = time.monotonic()
        self._downloads_started = 0
        self.capped: str | None = None  # which cap stopped the run, e.g. "--max-downloads 100"
        self._gate = _Gate(self._workers, lambda: None)

    # -- the whole run ----------------------------------------------------------------------------
    def run(
        self, chunks: Iterable[list[ImageRef] | ProductChunk | PlannedChunk], *, total: int | None = None
    ) -> Summary:
        """Sync every chunk; return the summary. Fatal errors are raised after what finished is recorded.

        ``total``: how many images the chunks hold, when known beforehand (pairs): a capped run then counts
        the images it never reached as deferred too.
        """
        started = self._started = time.monotonic()
        dry = self.opts.dry_run
        if not dry:
            self.summary.run_id = self.store.start_run()
            if self.opts.max_duration_s is not None:
                # One deadline for every wait: a request paced past it is not sent (DeadlineReached).
                self.client.deadline = started + self.opts.max_duration_s
        try:
            self._pipeline(iter(chunks))
        except ImgsyncError as exc:
            self.summary.error = exc.message
            self.summary.exit_code = exc.exit_code
            if isinstance(exc, Interrupted):
                # A stop event set by a signal handler knows the process's exit code (128 + signal).
                self.summary.exit_code = self._stop_code(exc.exit_code)
            exc.summary = self.summary  # the CLI reports what was done
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C (or SIGTERM) while the first one's stop was under way: still a stop.
            stopped = Interrupted("interrupted")
            self.summary.error = stopped.message
            self.summary.exit_code = self._stop_code(stopped.exit_code)
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
            self.client.deadline = None
            # The run's last bookkeeping: a second signal must not cut it short (it is stopping anyway).
            with self._critical(reraise=False):
                self._finish(started, total, dry)
        return self.summary

    def _critical(self, *, reraise: bool = True) -> AbstractContextManager[None]:
        """A section a second signal must not cut short (see :meth:`StopRequest.critical`)."""
        return self.stop.critical(reraise=reraise) if isinstance(self.stop, StopRequest) else nullcontext()

    def _finish(self, started: float, total: int | None, dry: bool) -> None:
        """Record what is pending, and the run's totals and row."""
        self._flush(force=True)
        self.summary.duration_s = time.monotonic() - started
        if self.capped is not None:
            self.summary.complete = False
            if total is not None:
                self.summary.deferred = max(self.summary.deferred, total - self.summary.requested)
            log.warning("%s reached: %d images left for the next run", self.capped, self.summary.deferred)
        if not self.summary.exit_code:
            capped = 5 if self.capped is not None else 0
            self.summary.exit_code = 1 if self.summary.failed else capped
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

    def _cap(self, *, queued: bool = False) -> str | None:
        """The cap that forbids new work now (``--max-downloads 100``), or None. A run is ``capped`` only
        once a cap actually turns work away, so a cap met by the last piece of work is no stop."""
        opts = self.opts
        if opts.dry_run:
            return None
        if not queued and opts.max_downloads is not None and self._downloads_started >= opts.max_downloads:
            return f"--max-downloads {opts.max_downloads}"
        if opts.max_bytes is not None and self.summary.bytes_downloaded >= opts.max_bytes:
            return f"--max-bytes {opts.max_bytes}"
        if opts.max_duration_s is not None and time.monotonic() - self._started >= opts.max_duration_s:
            return f"--max-duration {opts.max_duration_s:g}s"
        return None

    def turn_away(self) -> str | None:
        """The cap that forbids the next piece of work a chunk source would do itself (a page of the catalog
        listing), or None; a cap named here stops the run (exit 5)."""
        cap = self._cap()
        if cap is not None:
            self.capped = cap
        return cap

    def _deadline_passed(self) -> None:
        """A request was not sent because the deadline passed while it waited: the run is capped."""
        self.capped = self._cap() or f"--max-duration {self.opts.max_duration_s:g}s"

    def _stop_code(self, default: int) -> int:
        """The exit code a stop request carries (128 + the signal), or ``default``."""
        return self.stop.exit_code if isinstance(self.stop, StopRequest) else default

    def _fetch(self, item: list[ImageRef] | ProductChunk) -> dict[Any, Any] | _Listed:
        """The network half of a chunk (runs in a worker): one ``batch`` call, and for products a ``get`` for
        each image their lists leave out that the run knows of otherwise (see :meth:`_left_out`)."""
        if not isinstance(item, ProductChunk):
            return self.client.get_images(item)
        listings = self.client.list_images(list(item.product_ids))
        recorded, ask = self._left_out(item, listings)
        asked: dict[ImageRef, PortalImage | ImageError] = {}
        for at in range(0, len(ask), BATCH_SIZE):
            asked.update(self.client.get_images(ask[at : at + BATCH_SIZE]))
        return _Listed(listings, asked, recorded)

    def _left_out(
        self, item: ProductChunk, listings: Mapping[int, Listing | ImageError]
    ) -> tuple[frozenset[ImageRef], list[ImageRef]]:
        """The recorded images of the listed products, and the images to ask ``get`` about: those recorded
        or shown by the catalog's listing that the image lists did not return.

        An image list is not proof that what it leaves out is gone: the docs leave open whether
        ``catalog.productImage.list`` caps its answer and whether it honours ``start`` (notes §13.5). So an
        image is marked missing only on ``get``'s own "not found", and a picture the catalog's listing
        shows is backed up even when the list hides it. Listing ids are used only where they share an id
        with the list: ids that are not image ids (the docs leave that open too) name nothing to ask.
        """
        recorded: set[ImageRef] = set()
        ask: list[ImageRef] = []
        for pid, listing in listings.items():
            if isinstance(listing, ImageError):
                continue
            returned = {image.image_id for image in listing.images}
            known = {
                row.image_id
                for row in self.store.rows_of_product(pid)
                if row.status != "missing" and row.ref not in item.skip
            }
            recorded.update(ImageRef(pid, i) for i in known)
            shown = item.listed.get(pid, frozenset()) if item.listed else frozenset()
            hidden = shown - returned if shown & returned else frozenset()
            if hidden:
                log.info(
                    "item %d: the catalog listing shows pictures %s that catalog.productImage.list did not "
                    "return; they are asked for one by one",
                    pid,
                    ", ".join(str(i) for i in sorted(hidden)[:10]) + (", ..." if len(hidden) > 10 else ""),
                )
            ask += [
                ref
                for ref in (ImageRef(pid, i) for i in sorted((known | hidden) - returned))
                if ref not in item.skip
            ]
        return frozenset(recorded), ask

    def _unpack(
        self,
        item: list[ImageRef] | ProductChunk,
        result: dict[Any, Any] | _Listed,
        executor: tuple[dict[Future[Outcome], Plan], ThreadPoolExecutor],
    ) -> tuple[list[ImageRef], dict[ImageRef, PortalImage | ImageError]]:
        """The refs and metadata of a fetched chunk. A product listing already holds every image's
        metadata and a fresh link, so its images need no ``get`` call of their own; the images it left
        out come with ``get``'s answers (gone: missing)."""
        if not isinstance(item, ProductChunk):
            assert not isinstance(result, _Listed)
            return item, result
        assert isinstance(result, _Listed)
        found: dict[ImageRef, PortalImage | ImageError] = {}
        extra: list[Plan] = []
        for pid, listing in result.listings.items():
            if isinstance(listing, DeadlineReached):
                self._deadline_passed()  # not listed: its images are left for the next run
                continue
            if isinstance(listing, ImageGone):
                # A deleted product is no failure: its recorded images are missing, their backups kept.
                gone = list(gone_product(self.store, pid, item.skip))
                if not gone:
                    log.info("product %d is not found on the portal; nothing is recorded for it", pid)
                extra += gone
                continue
            if isinstance(listing, ImageError):
                extra.append(Plan(ImageRef(pid, 0), Action.FAILED, f"product {pid}: {listing.message}"))
                continue
            for image in listing.images:
                if image.ref not in item.skip and image.ref not in found:
                    found[image.ref] = image
            if listing.problem:
                extra.append(Plan(ImageRef(pid, 0), Action.FAILED, f"product {pid}: {listing.problem}"))
        for ref, answer in result.asked.items():
            if ref in found or (isinstance(answer, ImageGone) and ref not in result.recorded):
                continue  # a picture the catalog listed, deleted since: nothing recorded, nothing to mark
            found[ref] = answer
        self.progress_extend(len(found) + len(extra))
        for plan in extra:
            self._handle_plan(plan, executor)
        return list(found), found

    def _workers(self) -> int:
        """Requests to keep in flight: the configured number, or (``workers = "auto"``, 0) what the
        client's measured round trip and rate call for, re-read as the run goes."""
        return self.opts.workers if self.opts.workers > 0 else self.client.concurrency(AUTO_MAX_WORKERS)

    def _pipeline(self, chunks: Iterator[list[ImageRef] | ProductChunk | PlannedChunk]) -> None:
        threads = self.opts.workers if self.opts.workers > 0 else AUTO_MAX_WORKERS
        meta_pool = ThreadPoolExecutor(threads, thread_name_prefix="meta")
        work_pool = ThreadPoolExecutor(threads, thread_name_prefix="work")
        self._gate = _Gate(self._workers, lambda: self._cap(queued=True))
        meta: dict[Future[Any], list[ImageRef] | ProductChunk] = {}
        work: dict[Future[Outcome], Plan] = {}
        # How far metadata may run ahead of the downloads: one chunk beyond what the workers hold, so
        # a link waits at most a chunk's worth of downloads before it is used. A batch in flight counts
        # as many downloads as the last chunk needed: a run with nothing to download (warm) keeps up to
        # ``workers`` batches in flight, a cold one fetches one chunk ahead. Should every batch in flight
        # need all its downloads after all, none of their links waits more than LINK_WAIT_S at the
        # configured rate (on a 2/s portal that is the one chunk ahead of before).

        exhausted = False
        fatal: BaseException | None = None
        try:
            while True:
                if self.stop.is_set():
                    raise Interrupted("interrupted")
                workers = self._workers()
                backlog_limit = workers + BATCH_SIZE
                worst_limit = max(backlog_limit, int(self.client.rate * LINK_WAIT_S))
                while (
                    not exhausted
                    and len(meta) < workers
                    and len(work) + self._expected * len(meta) < backlog_limit
                    and len(work) + BATCH_SIZE * len(meta) < worst_limit
                ):
                    try:
                        chunk = next(chunks, None)
                    except DeadlineReached:
                        self._deadline_passed()
                        chunk = None
                    if chunk is None:
                        exhausted = True
                        break
                    if isinstance(chunk, PlannedChunk):
                        self.progress_extend(len(chunk.plans))
                        for plan in chunk.plans:
                            self._handle_plan(plan, (work, work_pool))
                        # Recorded as they come (a warm --all is nothing but these): memory stays flat, and
                        # a run killed mid-listing keeps what it did.
                        self._flush()
                        if self.stop.is_set():
                            raise Interrupted("interrupted")
                        continue
                    cap = self._cap()
                    if cap is not None:
                        # No new work: what is in flight finishes, this chunk and the rest are deferred.
                        self.capped = cap
                        if not isinstance(chunk, ProductChunk):
                            self.summary.deferred += len(chunk)
                        exhausted = True
                        break
                    meta[meta_pool.submit(self._fetch, chunk)] = chunk
                queued_cap = self._cap(queued=True) if work else None
                if queued_cap is not None:
                    # Queued downloads that have not started are new work too: they wait for the next run.
                    # (--max-downloads counts them when queued, so it has already let them in.)
                    for waiting in [f for f in work if f.cancel()]:
                        del work[waiting]
                        self.capped = queued_cap
                        self.summary.deferred += 1
                if not meta and not work:
                    break
                # Chunks are planned in the order they came (the work order), however their batches finish:
                # a later chunk's downloads must not take a capped night's turn from an earlier one's.
                head = [next(iter(meta))] if meta else []
                done, _ = wait([*head, *work], timeout=0.5, return_when=FIRST_COMPLETED)
                while meta and (first := next(iter(meta))).done():
                    item = meta.pop(first)
                    try:
                        answered = first.result()
                    except DeadlineReached:
                        # Not sent: the deadline passed while it waited for its turn. Left for the next run.
                        self._deadline_passed()
                        if not isinstance(item, ProductChunk):
                            self.summary.deferred += len(item)
                        continue
                    refs, found = self._unpack(item, answered, (work, work_pool))
                    self._plan_chunk(refs, found, work, work_pool)
                for fut in done:
                    if fut in work:
                        plan = work.pop(fut)
                        try:
                            outcome = fut.result()
                        except _Deferred as deferred:
                            self.capped = deferred.cap
                            self.summary.deferred += 1
                            continue
                        except DeadlineReached:
                            self._deadline_passed()
                            self.summary.deferred += 1
                            continue
                        except ImgsyncError as exc:
                            if exc.fatal:
                                raise
                            outcome = self._failed(plan, exc)
                        self._record(outcome)
                self._flush()
        except BaseException as exc:
            fatal = exc
            self.stop.set()
            raise
        finally:
            for fut in list(meta) + list(work):
                fut.cancel()
            try:
                meta_pool.shutdown(wait=True, cancel_futures=True)
                work_pool.shutdown(wait=True, cancel_futures=True)
            finally:  # also when a second signal cut the wait short
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
        work: dict[Future[Outcome], Plan],
        pool: ThreadPoolExecutor,
    ) -> None:
        rows = self.store.rows_for(chunk)
        plans = []
        for ref in chunk:
            answer = found.get(ref) or ImageError("no answer from the portal")
            if isinstance(answer, DeadlineReached):
                # Its command was still waiting for its turn at the deadline: the batch's other answers are
                # used, this image is left for the next run.
                self._deadline_passed()
                self.summary.deferred += 1
                continue
            plans.append(decide(ref, answer, rows.get(ref), self.opts))
        self._expected = max(1, sum(plan.action in (Action.DOWNLOAD, Action.UPLOAD) for plan in plans))
        for plan in plans:
            self._handle_plan(plan, (work, pool))

    def _replaces_backup(self, row: StoredImage | None, relative: str) -> bool:
        """Will a download to ``relative`` land on the file, or S3 object, that the ``ok`` row describes?"""
        if row is None or row.status != "ok":
            return False
        if row.local_path == relative:
            return True
        uploader = self.opts.uploader
        return row.s3 is not None and uploader is not None and row.s3.key == uploader.key_for(relative)

    def _handle_plan(
        self, plan: Plan, executor: tuple[dict[Future[Outcome], Plan], ThreadPoolExecutor] | None
    ) -> None:
        if self.on_plan is not None:
            self.on_plan(plan)
        if self.opts.dry_run:
            self._count_plan(plan)
            return
        if plan.action in (Action.DOWNLOAD, Action.UPLOAD) and executor is not None:
            cap = self._cap()
            if cap is not None:
                self.capped = cap
                self.summary.deferred += 1  # nothing recorded: the next run plans it again
                return
            if plan.action == Action.DOWNLOAD:
                self._downloads_started += 1
            work, pool = executor
            job = self._download if plan.action == Action.DOWNLOAD else self._upload_only
            work[pool.submit(self._gate.run, job, plan)] = plan
            return
        self._record(self._immediate(plan))

    def _count_plan(self, plan: Plan) -> None:
        s = self.summary
        s.requested += 1
        if s.plan is not None:
            s.plan.append(plan.as_json())
        if plan.action == Action.DOWNLOAD:
            s.downloaded += 1
        elif plan.action == Action.UPLOAD:
            s.unchanged += 1
            s.uploaded += 1
        elif plan.action == Action.UNCHANGED:
            s.unchanged += 1
        elif plan.action == Action.MISSING:
            s.missing += 1
        else:
            s.failed += 1
        self.progress(str(plan.action))

    # -- what each action does: each returns the outcome, which only _flush hands to the store --------
    def _immediate(self, plan: Plan) -> Outcome:
        """unchanged, missing and failed need no download: just the row and the event."""
        if plan.action == Action.UNCHANGED:
            return Outcome(plan.ref, Event.UNCHANGED)
        if plan.action == Action.MISSING:
            return Outcome(plan.ref, Event.MISSING, plan.reason)
        # A product that could not be listed (image id 0) has no row: its event says what happened.
        return Outcome(plan.ref, Event.FAILED, plan.reason)

    def _failed(self, plan: Plan, exc: ImgsyncError) -> Outcome:
        if isinstance(exc, ImageGone):
            return Outcome(plan.ref, Event.MISSING, "gone upstream; the backup is kept")
        return Outcome(plan.ref, Event.FAILED, exc.message)

    def _download(self, plan: Plan) -> Outcome:
        """Download one image (the client fetches fresh links and retries), then upload it if S3 is on."""
        assert plan.image is not None
        ref = plan.ref
        marked = False

        def write(image: PortalImage, body: Body) -> tuple[int, str, str]:
            nonlocal marked
            relative = relative_path(ref, image.name)
            target = resolve_inside(self.opts.dest, relative)
            if not marked and not self.opts.dry_run and self._replaces_backup(plan.row, relative):
                # Only now, with the file's bytes arriving, does this download go over the backup its ok
                # row describes: the row stops claiming it first (a kill between the rename and the row's
                # commit would leave it describing bytes that are gone). Deferred work is never marked.
                self.store.mark_replacing([ref])
                marked = True
            size, sha256 = save_stream(body.chunks(), target, expected_size=body.content_length)
            return size, sha256, body.content_type

        image, (size, sha256, content_type) = self.client.download(plan.image, write)
        # The link fetched last may name the image anew (renamed meanwhile): the file is where it says.
        relative = plan.relative if image.name == plan.image.name else relative_path(ref, image.name)
        assert relative is not None
        log.info("downloaded %s (%d bytes, %s)", ref, size, plan.reason)
        row = plan.row
        outcome = Outcome(
            ref,
            Event.DOWNLOADED,
            f"{size} bytes, {plan.reason}",
            image=image,
            sha256=sha256,
            size=size,
            content_type=content_type or None,
            local_path=relative,
            changed=row is None or row.sha256 != sha256,
        )
        if self.opts.uploader is not None:
            key = self.opts.uploader.key_for(relative)
            try:
                outcome = self._ensure_uploaded(
                    outcome, resolve_inside(self.opts.dest, relative), key, row, image
                )
            except LocalFileChanged as exc:  # changed on disk since it was written: no backup, none claimed
                outcome = replace(outcome, local_path=None, upload_error=exc.message)
        if row is not None and row.local_path and row.local_path != relative and not outcome.failed:
            # Replaced under a new name: the new file supersedes the old one, which goes once the new row
            # is committed (see _flush), never while the old row still names it.
            outcome = replace(outcome, remove_after=(*outcome.remove_after, row.local_path))
        return outcome

    def _upload_only(self, plan: Plan) -> Outcome:
        """The local file is current but S3 is not: upload without downloading.

        The file is hashed as it is read for the upload; one that no longer holds the recorded bytes (same size,
        other content) is not uploaded: the image is downloaded again, or, when that fails, its row fails and
        stops naming the file."""
        row = plan.row
        assert row is not None and row.local_path and plan.s3_key is not None
        path = inside_dest(self.opts.dest, row.local_path)
        if path is None:
            raise DownloadFailed(f"the recorded path {row.local_path!r} is outside the destination folder")
        outcome = Outcome(
            plan.ref,
            Event.UNCHANGED,
            plan.reason,
            sha256=row.sha256,
            size=row.size,
            local_path=row.local_path,
        )
        try:
            return self._ensure_uploaded(outcome, path, plan.s3_key, row, plan.image)
        except LocalFileChanged as exc:
            damaged = exc.message
        log.warning("%s: the local file is damaged, downloading it again: %s", plan.ref, damaged)
        # Whatever happens next, the row stops naming a file that does not hold its bytes.
        failed = replace(outcome, local_path=None, clear_local=True)
        cap = self._cap()
        if cap is not None:
            return replace(failed, upload_error=f"{damaged}; not downloaded again ({cap} reached)")
        self._downloads_started += 1
        try:
            return self._download(replace(plan, action=Action.DOWNLOAD, reason="local file damaged"))
        except DeadlineReached:
            cap = self._cap() or f"--max-duration {self.opts.max_duration_s:g}s"
            return replace(failed, upload_error=f"{damaged}; not downloaded again ({cap} reached)")
        except ImgsyncError as exc:
            if exc.fatal or isinstance(exc, ImageGone):
                raise
            return replace(failed, upload_error=f"{damaged}; downloading it again failed: {exc.message}")

    def _ensure_uploaded(
        self, outcome: Outcome, path: Path, key: str, row: StoredImage | None, image: PortalImage | None
    ) -> Outcome:
        """Put the file in S3 unless its bytes are known to be there already; the outcome says what happened.

        The database's record of the object is not enough (the local file may come back after a repair, and
        ``keep_local = false`` removes it next): the object is asked (a HEAD). One whose bytes the store's
        checksum shows to be these is kept; when its metadata holds older skip-rule fields than ``image``'s, a
        server-side copy brings them up to date. Anything else is uploaded. Raises :class:`LocalFileChanged`
        when the file does not hold ``outcome.sha256``."""
        uploader = self.opts.uploader
        assert uploader is not None and outcome.sha256 is not None and outcome.size is not None
        sha256, size = outcome.sha256, outcome.size
        force = self.opts.force and outcome.event == Event.DOWNLOADED
        content_type = outcome.content_type or (row.content_type if row else None)
        content_type = content_type or "application/octet-stream"
        try:
            found = None if force else uploader.head(key)
            if found is not None and uploader.holds(found, path, sha256, size):
                etag = found.etag
                if image is not None and found.fingerprint != image.fingerprint():
                    etag = uploader.refresh(
                        key,
                        found,
                        sha256=sha256,
                        size=size,
                        content_type=content_type,
                        ref=outcome.ref,
                        image=image,
                        path=path,
                    )
                    log.info("%s: metadata of %s brought up to date", outcome.ref, key)
                s3, sent = S3Object(key, etag, sha256), False
            else:
                etag = uploader.put(
                    path,
                    key,
                    sha256=sha256,
                    size=size,
                    content_type=content_type,
                    ref=outcome.ref,
                    image=image,
                )
                s3, sent = S3Object(key, etag, sha256), True
        except LocalFileChanged:
            raise
        except UploadError as exc:
            return replace(outcome, upload_error=exc.message)
        outcome = replace(outcome, s3=s3, uploaded=sent)
        if not self.opts.keep_local:
            # Removed after the commit (see _flush): the old row may still name this file until then.
            assert outcome.local_path is not None
            outcome = replace(
                outcome,
                remove_after=(*outcome.remove_after, outcome.local_path),
                local_path=None,
                clear_local=True,
            )
        return outcome

    # -- bookkeeping ------------------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        s = self.summary
        s.requested += 1
        if outcome.event == Event.DOWNLOADED:
            s.downloaded += 1
            s.bytes_downloaded += outcome.size or 0
            if self.progress_bytes is not None:
                self.progress_bytes(outcome.size or 0)
        elif outcome.event == Event.UNCHANGED and not outcome.failed:
            s.unchanged += 1
        elif outcome.event == Event.MISSING:
            s.missing += 1
        if outcome.uploaded:
            s.uploaded += 1
            s.bytes_uploaded += outcome.size or 0
        if outcome.failed:
            s.failed += 1
            s.add_failure(outcome.ref, outcome.reason)  # what -q prints on stderr, one line each
            log.warning("%s failed: %s", outcome.ref, outcome.reason)
        self._pending.append(outcome)
        self.progress(str(outcome.event))

    def _flush(self, force: bool = False) -> None:
        if not self._pending or self.opts.dry_run:
            self._pending.clear()
            return
        if force or len(self._pending) >= 500 or time.monotonic() - self._last_flush > 0.5:
            with self._critical():  # a second signal waits for the commit and the unlinks it allows
                self._save_pending()

    def _save_pending(self) -> None:
        outcomes, self._pending = self._pending, []
        # Durable before files are removed: a commit lost to a power cut must not leave rows naming them.
        self.store.save(self.summary.run_id, outcomes, durable=any(o.remove_after for o in outcomes))
        self._last_flush = time.monotonic()
        for outcome in outcomes:  # superseded files go only now that no committed row names them
            current = inside_dest(self.opts.dest, outcome.local_path) if outcome.local_path else None
            for relative in outcome.remove_after:
                path = inside_dest(self.opts.dest, relative)
                if path is None:
                    log.warning("not removing %r: it is outside the destination folder", relative)
                elif current is not None and _same_file(path, current):
                    # A case-only rename on a case-insensitive file system: the old name *is* the new file.
                    log.debug("not removing %s: it is the new file under another spelling", relative)
                else:
                    _unlink_quietly(path)


#: The most requests ``workers = "auto"`` keeps in flight (threads of each pool).
AUTO_MAX_WORKERS = 32


class _Deferred(Exception):
    """A job that waited for its turn past a cap: not started, left for the next run."""

    def __init__(self, cap: str) -> None:
        super().__init__(cap)
        self.cap = cap


class _Gate:
    """At most ``limit()`` jobs at a time, a limit that may change while the run goes (auto workers). A job
    whose turn comes once ``capped()`` names a cap does not start (:class:`_Deferred`)."""

    def __init__(self, limit: Callable[[], int], capped: Callable[[], str | None]) -> None:
        self._limit = limit
        self._capped = capped
        self._active = 0
        self._cond = threading.Condition()

    def run(self, job: Callable[[Plan], Outcome], plan: Plan) -> Outcome:
        with self._cond:
            while self._active >= max(1, self._limit()):
                self._cond.wait(0.05)
            cap = self._capped()
            if cap is not None:
                raise _Deferred(cap)
            self._active += 1
        try:
            return job(plan)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()


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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)


def gone_product(store: Store, product_id: int, skip: Container[ImageRef] = ()) -> Iterator[Plan]:
    """The recorded images of a product the portal answers "not found" for: missing, backups kept.

    Pairs in ``skip`` (named on their own in this run) are left to their own chunk, which sees them from
    ``get``."""
    for row in store.rows_of_product(product_id):
        if row.status != "missing" and row.ref not in skip:
            yield Plan(
                row.ref,
                Action.MISSING,
                "its product is not found on the portal; the backup is kept",
                None,
                row,
            )


__all__ = [
    "ProductChunk",
    "Plan",
    "Summary",
    "SyncOptions",
    "Syncer",
    "Uploader",
    "decide",
    "gone_product",
]
