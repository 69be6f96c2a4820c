"""The scheduler: chunks in, metadata fetched ahead, each image planned, transfers in worker threads, outcomes
recorded.

For every chunk of up to 50 images: one ``batch`` call (:mod:`.fetch`), then a decision per image
(:func:`~imgsync.sync.plan.decide`: download, upload, unchanged, missing, failed) with its reason, then the
downloads and uploads (:mod:`.execute`) in a pool of worker threads that share the client's leaky bucket.
Metadata for the next chunks is fetched while earlier downloads run, but never far ahead of them, so each
``downloadUrl`` is used within moments of being issued. Rows are written by the calling thread only, after the
file is in place; the one exception is the worker whose download is about to go over a recorded backup, which
first marks that row (see ``Store.mark_replacing``). ``dry_run`` stops after the decision and counts the plan.
Every piece of new work asks the run's :class:`~imgsync.sync.caps.Caps` first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ..bitrix import BATCH_SIZE, Client
from ..errors import DeadlineReached, ImageError, ImgsyncError, InternalError, Interrupted
from ..models import Action, Event, ImageRef, Outcome, PortalImage, StopRequest
from ..store import Store
from .caps import Caps
from .execute import Executor, from_error, immediate
from .fetch import fetch, unpack
from .plan import Plan, SyncOptions, decide, inside_dest
from .sources import Chunk, PlannedChunk, ProductChunk
from .summary import Summary

log = logging.getLogger(__name__)

# The longest a download link may wait for its turn, at the configured rate, should every batch in flight
# turn out to need all its downloads (see Syncer._pipeline).
LINK_WAIT_S = 30.0


#: The most requests ``workers = "auto"`` keeps in flight (threads of each pool).
AUTO_MAX_WORKERS = 32


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
        #: The one check of the caps that every piece of new work asks (and which cap stopped the run).
        self.caps = Caps(opts, self.summary)
        self.executor = Executor(client, store, opts, self.caps)
        self._gate = _Gate(self._workers, lambda: None)

    # -- the whole run ----------------------------------------------------------------------------
    def run(self, chunks: Iterable[Chunk], *, total: int | None = None) -> Summary:
        """Sync every chunk; return the summary. Fatal errors are raised after what finished is recorded.

        ``total``: how many images the chunks hold, when known beforehand (pairs): a capped run then counts
        the images it never reached as deferred too.
        """
        started = self.caps.start()
        dry = self.opts.dry_run
        if not dry:
            self.summary.run_id = self.store.start_run()
            self._finish_removals()
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
        if self.caps.capped is not None:
            self.summary.complete = False
            if total is not None:
                self.summary.deferred = max(self.summary.deferred, total - self.summary.requested)
            log.warning(
                "%s reached: %d images left for the next run", self.caps.capped, self.summary.deferred
            )
        if not self.summary.exit_code:
            capped = 5 if self.caps.capped is not None else 0
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

    @property
    def capped(self) -> str | None:
        """Which cap stopped the run, e.g. "--max-downloads 100" (None: none did)."""
        return self.caps.capped

    def _stop_code(self, default: int) -> int:
        """The exit code a stop request carries (128 + the signal), or ``default``."""
        return self.stop.exit_code if isinstance(self.stop, StopRequest) else default

    def _workers(self) -> int:
        """Requests to keep in flight: the configured number, or (``workers = "auto"``, 0) what the
        client's measured round trip and rate call for, re-read as the run goes."""
        return self.opts.workers if self.opts.workers > 0 else self.client.concurrency(AUTO_MAX_WORKERS)

    def _pipeline(self, chunks: Iterator[Chunk]) -> None:
        threads = self.opts.workers if self.opts.workers > 0 else AUTO_MAX_WORKERS
        meta_pool = ThreadPoolExecutor(threads, thread_name_prefix="meta")
        work_pool = ThreadPoolExecutor(threads, thread_name_prefix="work")
        self._gate = _Gate(self._workers, lambda: self.caps.check(queued=True))
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
                        self.caps.deadline_passed()
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
                    if self.caps.turn_away() is not None:
                        # No new work: what is in flight finishes, this chunk and the rest are deferred.
                        if not isinstance(chunk, ProductChunk):
                            self.summary.deferred += len(chunk)
                        exhausted = True
                        break
                    meta[meta_pool.submit(fetch, self.client, self.store, chunk)] = chunk
                queued_cap = self.caps.check(queued=True) if work else None
                if queued_cap is not None:
                    # Queued downloads that have not started are new work too: they wait for the next run.
                    # (--max-downloads counts them when queued, so it has already let them in.)
                    for waiting in [f for f in work if f.cancel()]:
                        del work[waiting]
                        self.caps.stop(queued_cap)
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
                        self.caps.deadline_passed()
                        if not isinstance(item, ProductChunk):
                            self.summary.deferred += len(item)
                        continue
                    unpacked = unpack(self.store, item, answered)
                    if unpacked.deadline_passed:
                        self.caps.deadline_passed()
                    if isinstance(item, ProductChunk):  # its images became known only now
                        self.progress_extend(len(unpacked.found) + len(unpacked.extra))
                    for plan in unpacked.extra:
                        self._handle_plan(plan, (work, work_pool))
                    self._plan_chunk(unpacked.refs, unpacked.found, work, work_pool)
                for fut in done:
                    if fut in work:
                        plan = work.pop(fut)
                        try:
                            outcome = fut.result()
                        except _Deferred as deferred:
                            self.caps.stop(deferred.cap)
                            self.summary.deferred += 1
                            continue
                        except DeadlineReached:
                            self.caps.deadline_passed()
                            self.summary.deferred += 1
                            continue
                        except ImgsyncError as exc:
                            if exc.fatal:
                                raise
                            outcome = from_error(plan, exc)
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
                self.caps.deadline_passed()
                self.summary.deferred += 1
                continue
            plans.append(decide(ref, answer, rows.get(ref), self.opts))
        self._expected = max(1, sum(plan.action in (Action.DOWNLOAD, Action.UPLOAD) for plan in plans))
        for plan in plans:
            self._handle_plan(plan, (work, pool))

    def _handle_plan(
        self, plan: Plan, executor: tuple[dict[Future[Outcome], Plan], ThreadPoolExecutor] | None
    ) -> None:
        if self.on_plan is not None:
            self.on_plan(plan)
        if self.opts.dry_run:
            self.summary.count_plan(plan)
            self.progress(str(plan.action))
            return
        if plan.action in (Action.DOWNLOAD, Action.UPLOAD) and executor is not None:
            if self.caps.turn_away() is not None:
                self.summary.deferred += 1  # nothing recorded: the next run plans it again
                return
            if plan.action == Action.DOWNLOAD:
                self.caps.download_started()
            work, pool = executor
            job = self.executor.download if plan.action == Action.DOWNLOAD else self.executor.upload_only
            work[pool.submit(self._gate.run, job, plan)] = plan
            return
        self._record(immediate(plan))

    # -- bookkeeping ------------------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        self.summary.count(outcome)
        if outcome.event == Event.DOWNLOADED and self.progress_bytes is not None:
            self.progress_bytes(outcome.size or 0)
        if outcome.failed:
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
        record(self.store, self.opts.dest, self.summary.run_id, outcomes)
        self._last_flush = time.monotonic()

    def _finish_removals(self) -> None:
        """Remove the superseded files an earlier run noted but did not get to (killed after its commit)."""
        for relative in self.store.pending_removals():
            path = inside_dest(self.opts.dest, relative)
            if path is not None:
                log.info("removing %s, superseded in a run that stopped before removing it", relative)
                _unlink_quietly(path)
        self.store.forget_removals()


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


def record(store: Store, dest: Path, run_id: int | None, outcomes: list[Outcome]) -> None:
    """Commit outcomes, then remove the files they supersede (noted in the same commit, so a run killed before
    the removals leaves them to the next run). The one way a run's outcomes reach the store: the sync's flushes,
    and a restore's images."""
    removals: list[tuple[str, Path]] = []
    for outcome in outcomes:
        current = inside_dest(dest, outcome.local_path) if outcome.local_path else None
        for relative in outcome.remove_after:
            path = inside_dest(dest, relative)
            if path is None:
                log.warning("not removing %r: it is outside the destination folder", relative)
            elif current is not None and _same_file(path, current):
                # A case-only rename on a case-insensitive file system: the old name *is* the new file.
                log.debug("not removing %s: it is the new file under another spelling", relative)
            else:
                removals.append((relative, path))
    # Durable before files are removed: a commit lost to a power cut must not leave rows naming them. The
    # files to remove are noted in the same commit, so a run killed before its unlinks leaves them to the next.
    store.save(
        run_id,
        outcomes,
        durable=bool(removals),
        removals=[relative for relative, _ in removals],
    )
    for _, path in removals:  # superseded files go only now that no committed row names them
        _unlink_quietly(path)
    if removals:
        store.forget_removals([relative for relative, _ in removals])


def _same_file(old: Path, new: Path) -> bool:
    """Is ``old`` the new file under another spelling (a case-only rename on a case-insensitive file system)?

    ``samefile`` alone is not enough: exFAT through FUSE gives each spelling its own inode number. A name that
    differs from the new one only in case, in the same folder, is the same file unless the folder lists both."""
    try:
        if os.path.samefile(old, new):
            return True
    except OSError:
        return False  # the old name leads to no file: nothing to keep
    if old.parent != new.parent or old.name.casefold() != new.name.casefold():
        return False
    try:
        names = set(os.listdir(old.parent))
    except OSError:
        return True  # cannot tell: a superseded file left over is better than the new backup removed
    return not (old.name in names and new.name in names)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)
