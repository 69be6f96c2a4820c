"""``imgsync sync`` as one Python call: settings in, summary out.

:func:`run_sync` validates every input before the first request, takes the database's lock, builds
the client (webhook or OAuth, with renewed tokens from the database), the store and the optional S3
uploader, expands ``--product`` through ``catalog.productImage.list`` and runs the :class:`Syncer`.

How a run of a command ends is decided here too, so the CLI only prints it: :func:`run_to_end` turns every
ending (done, stopped by a signal, failed) into an :class:`Ending` with its exit code and ``--json`` object,
and :func:`record_metrics` writes the metrics file when the settings ask for one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import requests

from .bitrix import Auth, Client, OAuth, WebhookAuth
from .config import Settings, validate_for_sync
from .errors import ConfigError, ImgsyncError, InternalError, Interrupted
from .models import StopRequest
from .store import Store, run_lock, stored_tokens, token_lock
from .sync import (
    AUTO_MAX_WORKERS,
    Plan,
    Request,
    Summary,
    Syncer,
    SyncOptions,
    Uploader,
    catalog_chunks,
    put_in_work_order,
    read_inputs,
    summary_json,
    work_in_order,
)

log = logging.getLogger(__name__)


class Progress:
    """What the runner tells a progress display; the CLI wires it to tqdm."""

    def total(self, n: int) -> None:
        """The number of images now known."""

    def advance(self, action: str) -> None:
        """One image is done (or planned, in a dry run)."""

    def extend(self, n: int) -> None:
        """``n`` more images became known (the images of listed products)."""

    def add_bytes(self, n: int) -> None:
        """``n`` more bytes were downloaded (for the log's progress line; see :mod:`imgsync.progress`)."""


def token_key(settings: Settings) -> str:
    return f"{(settings.portal_url or '').rstrip('/')}|{settings.client_id}"


def _seed(refresh_token: str | None) -> str:
    """A fingerprint of the refresh token the config holds, to notice when the user puts in a new pair."""
    return hashlib.sha256((refresh_token or "").encode()).hexdigest()[:16]


def make_auth(settings: Settings, store: Store | None) -> Auth:
    """A webhook, or OAuth whose newest tokens come from (and go to) the database.

    Renewed tokens are saved however the run goes, a dry run included: the portal may have retired the
    refresh token they replace, and losing the new pair would mean authorizing the application again.
    Renewals happen under ``<db>.tokens.lock`` and start from the pair stored now (another process, a
    ``check`` beside a running sync, may have renewed it), so no process spends a retired refresh token.
    A read-only store (a dry run) saves them through a connection of their own, opened in the renewing
    thread.
    """
    if settings.webhook_url:
        return WebhookAuth(settings.webhook_url)
    if not settings.portal_url:
        raise ConfigError("no portal configured")
    access, refresh = settings.access_token or "", settings.refresh_token or ""
    seed = _seed(settings.refresh_token)
    key = token_key(settings)
    stored: tuple[str, str] | None = None
    if store is not None:
        saved = store.load_tokens(key)
        # Tokens renewed by an earlier run win, unless the config now holds a different pair.
        if saved and saved.get("seed") == seed:
            access, refresh = saved["access_token"], saved["refresh_token"]
            stored = (access, refresh)

    def load_stored() -> tuple[str, str] | None:
        # Read afresh under the token lock: another process may have renewed the pair a moment ago.
        saved = stored_tokens(store.path, key) if store is not None else None
        if saved and saved.get("seed") == seed:
            return str(saved["access_token"]), str(saved["refresh_token"])
        return None

    def on_renew(new_access: str, new_refresh: str) -> None:
        if store is None:
            return
        if not store.readonly:
            store.save_tokens(key, new_access, new_refresh, seed)
            return
        with Store(store.path) as writable:
            writable.save_tokens(key, new_access, new_refresh, seed)

    return OAuth(
        settings.portal_url,
        client_id=settings.client_id or "",
        client_secret=settings.client_secret or "",
        access_token=access,
        refresh_token=refresh,
        token_url=settings.token_url,
        on_renew=on_renew,
        timeout=settings.timeout,
        load_stored=load_stored,
        renew_lock=(lambda: token_lock(store.path)) if store is not None else None,
        stored=stored,
    )


def make_client(
    settings: Settings,
    store: Store | None,
    *,
    workers: int | None = None,
    **edges: Any,
) -> Client:
    """The portal client the settings describe (auth with the database's renewed tokens, the bucket, the
    timeout); ``workers`` sizes its connection pool (default: the settings' workers, else the auto ceiling).
    ``edges`` are passed through: ``stop``, ``session``, ``sleep``, ``clock``, ``retry``, ``timeout``."""
    options: dict[str, Any] = {"timeout": settings.timeout, "clock": time.time, **edges}
    return Client(
        make_auth(settings, store),
        rate_limit=settings.rate_limit,
        burst=settings.burst,
        workers=workers or settings.workers or AUTO_MAX_WORKERS,
        **options,
    )


def make_uploader(settings: Settings) -> Uploader | None:
    if not settings.s3_enabled:
        return None
    from .s3 import S3Uploader  # boto3 is slow to import: only when S3 is on

    return S3Uploader(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url or None,
        workers=settings.workers or AUTO_MAX_WORKERS,
    )


def run_sync(
    settings: Settings,
    request: Request,
    *,
    progress: Progress | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    stop: threading.Event | None = None,
    session: requests.Session | None = None,
    uploader: Uploader | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Summary:
    """The whole of ``imgsync sync``. Raises :class:`~imgsync.errors.ImgsyncError` subclasses.

    The edges can be passed in (tests and embedders swap them without patching): the HTTP ``session`` to
    the portal, the S3 ``uploader`` (default: built from the settings), the wall ``clock`` and the
    ``sleep`` every wait of the client goes through (default: one that a stop request ends).
    """
    progress = progress or Progress()
    stop = stop or threading.Event()
    validate_for_sync(settings)
    if not settings.keep_local and not settings.s3_enabled:
        raise ConfigError(
            "storage.keep_local = false needs S3 (s3.enabled = true): the files would go nowhere"
        )
    with ExitStack() as stack:
        # 1. Every input is read and validated before anything else happens, and so is dest.
        pairs, products = read_inputs(stack, request)
        check_dest(settings.dest, create=not request.dry_run)
        if not request.dry_run:
            stack.enter_context(run_lock(settings.db))
        store = stack.enter_context(Store(settings.db, readonly=request.dry_run))
        if uploader is None:
            uploader = make_uploader(settings)
        client = make_client(
            settings, store, stop=stop, session=session, sleep=sleep, clock=clock or time.time
        )
        if uploader is not None:
            uploader.check()
        opts = SyncOptions(
            dest=settings.dest,
            force=request.force,
            dry_run=request.dry_run,
            workers=settings.workers,
            keep_local=settings.keep_local,
            uploader=uploader,
            max_duration_s=settings.max_duration_s,
            max_downloads=settings.max_downloads,
            max_bytes=settings.max_bytes,
        )
        syncer = Syncer(
            client,
            store,
            opts,
            progress=progress.advance,
            progress_extend=progress.extend,
            on_plan=on_plan,
            stop=stop,
        )
        syncer.progress_bytes = progress.add_bytes  # ops: bytes for the progress line
        put_in_work_order(store, pairs, products, recorded=request.recorded)
        progress.total(len(pairs))
        log.info(
            "%d images to check%s%s (%d duplicate pairs skipped)%s",
            len(pairs),
            f", and every image of {len(products)} products" if len(products) else "",
            ", and every item of the catalog" if request.all else "",
            pairs.duplicates,
            " [dry run]" if request.dry_run else "",
        )
        if not request.dry_run:  # ops: retention, once the run is over (also when it failed), lock still held
            stack.callback(store.prune_events, settings.keep_events_days)
        catalog = (
            catalog_chunks(
                client,
                store,
                opts,
                pairs,
                deep=request.deep,
                done=products if len(products) else (),
                cap=syncer.caps.turn_away,
            )
            if request.all
            else None
        )
        chunks = work_in_order(pairs, products, catalog)
        # Closed before the pairs' database is (the stack unwinds in reverse): a generator left open would
        # be finalised later against a closed database, printing "Exception ignored in ..." on a stop.
        stack.callback(chunks.close)
        return syncer.run(chunks, total=None if len(products) or request.all else len(pairs))
    raise AssertionError("unreachable")


def check_dest(dest: Path, *, create: bool) -> None:
    """Raise :class:`ConfigError` naming ``dest`` when files cannot be written there (before any request).

    A real run creates the folder and writes (and removes) a probe file in it; a dry run, which must
    change nothing, asks the file system about the folder or its nearest existing parent.
    """
    try:
        if create:
            dest.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=dest, prefix=".imgsync-probe-"):
                pass
            return
        probe = dest
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise ConfigError(f"storage.dest {dest}: {probe} is not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"storage.dest {dest}: {probe} is not writable")
    except OSError as exc:
        raise ConfigError(f"storage.dest {dest}: cannot write there ({exc.strerror or exc})") from None


class _Finished(Protocol):
    exit_code: int


S = TypeVar("S", bound=_Finished)


@dataclass
class Ending(Generic[S]):
    """How a command's run ended: its ``--json`` object (every key, in every run), its summary (None when it
    stopped before the work began), the process's exit code, and the error that ended it (None: it ran to its
    end, failed images or a cap included)."""

    data: dict[str, Any]
    summary: S | None
    exit_code: int
    error: ImgsyncError | None = None

    @property
    def interrupted(self) -> bool:
        return isinstance(self.error, Interrupted)


def stop_code(stop: threading.Event | None, exc: ImgsyncError) -> int:
    """The exit code of a run that ``exc`` ended: a stop asked by a signal exits 128 + the signal."""
    if isinstance(exc, Interrupted) and isinstance(stop, StopRequest) and stop.is_set():
        return stop.exit_code
    return exc.exit_code


def run_to_end(
    run: Callable[[], S],
    *,
    stop: threading.Event | None,
    as_json: Callable[[S | None, str | None, int | None], dict[str, Any]],
) -> Ending[S]:
    """Run a command's core (``run_sync``, ``run_restore``) and say how it ended: a second signal outside the
    pipeline is a stop too; our errors end it with their exit code and the summary of what was done."""
    try:
        try:
            summary = run()
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
    except ImgsyncError as exc:
        code = stop_code(stop, exc)
        partial: S | None = getattr(exc, "summary", None)
        return Ending(as_json(partial, exc.message, code), partial, code, exc)
    return Ending(as_json(summary, None, None), summary, summary.exit_code)


def sync_to_end(
    settings: Settings,
    request: Request,
    *,
    progress: Progress | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    stop: threading.Event | None = None,
) -> Ending[Summary]:
    """:func:`run_sync`, however it ends, as an :class:`Ending` (what ``imgsync sync`` prints and exits with)."""
    return run_to_end(
        lambda: run_sync(settings, request, progress=progress, on_plan=on_plan, stop=stop),
        stop=stop,
        as_json=lambda summary, error, code: summary_json(summary, request.dry_run, error=error, code=code),
    )


def sync_failed(exc: BaseException, dry_run: bool) -> Ending[Summary]:
    """The ending of a sync that failed outside :func:`run_sync` (its settings, its log file, a defect)."""
    if isinstance(exc, ImgsyncError):
        return Ending(
            summary_json(None, dry_run, error=exc.message, code=exc.exit_code), None, exc.exit_code, exc
        )
    data = summary_json(None, dry_run, error=f"internal error: {exc!r}", code=InternalError.exit_code)
    return Ending(data, None, InternalError.exit_code)


def record_metrics(
    settings: Settings | None,
    data: dict[str, Any],
    *,
    started: float,
    finished: float,
    dry_run: bool,
    command: str = "sync",
) -> None:
    """Write the metrics file of a run (``--metrics-file``, ``[metrics] textfile``) when the settings name one;
    a dry run writes none. A file that cannot be written is a warning: the run's outcome stands."""
    if settings is None or settings.metrics_file is None or dry_run:
        return
    from .metrics import write_metrics, write_restore_metrics

    counts: dict[str, int] = {}
    if command == "sync":
        try:
            with Store(settings.db, readonly=True) as store:
                counts = store.counts_by_status()
        except ImgsyncError as exc:
            log.warning("the metrics file has no image counts: %s", exc.message)
    try:
        if command == "sync":
            write_metrics(settings.metrics_file, data, counts, started_at=started, finished_at=finished)
        else:
            write_restore_metrics(settings.metrics_file, data, started_at=started, finished_at=finished)
    except OSError as exc:
        log.warning("cannot write the metrics file %s: %s", settings.metrics_file, exc.strerror or exc)
