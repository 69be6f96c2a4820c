"""``imgsync sync`` as one Python call: settings in, summary out.

:func:`run_sync` validates every input before the first request, takes the database's lock, builds
the client (webhook or OAuth, with renewed tokens from the database), the store and the optional S3
uploader, expands ``--product`` through ``catalog.productImage.list`` and runs the :class:`Syncer`.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Container, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import requests

from .bitrix import BATCH_SIZE, Auth, Client, OAuth, WebhookAuth
from .bitrix.catalog import CatalogListing, ListingIncomplete, id_mismatches, plan_items
from .config import Settings, validate_for_sync
from .errors import ConfigError
from .inputs import PairSet, ProductSet, collect_inputs, collect_products
from .models import Action, ImageRef
from .store import Store, run_lock, stored_tokens, token_lock
from .sync import (
    AUTO_MAX_WORKERS,
    Plan,
    PlannedChunk,
    ProductChunk,
    Summary,
    Syncer,
    SyncOptions,
    Uploader,
    backed_up_as_recorded,
)

log = logging.getLogger(__name__)


@dataclass
class Request:
    """What to sync: the three kinds of input of ``imgsync sync``."""

    pairs: Sequence[str] = ()
    csv_paths: Sequence[str] = ()
    products: Sequence[int] = ()
    products_files: Sequence[str] = ()
    all: bool = False  # every item of the portal's trade catalogs
    deep: bool = False  # with ``all``: ask every item's images, even those listed as recorded
    recorded: bool = False  # every image the state database records
    force: bool = False
    dry_run: bool = False
    stdin: TextIO | BinaryIO | None = None


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
        if request.deep and not request.all:
            raise ConfigError("--deep goes with --all")
        pairs: PairSet = stack.enter_context(collect_inputs(request.pairs, request.csv_paths, request.stdin))
        products: ProductSet = stack.enter_context(
            collect_products(request.products_files, request.stdin, stdin_used="-" in request.csv_paths)
            if request.products_files
            else ProductSet()
        )
        for product_id in request.products:
            products.add(product_id)
        check_dest(settings.dest, create=not request.dry_run)
        if not request.dry_run:
            stack.enter_context(run_lock(settings.db))
        store = stack.enter_context(Store(settings.db, readonly=request.dry_run))
        if uploader is None:
            uploader = make_uploader(settings)
        client = Client(
            make_auth(settings, store),
            rate_limit=settings.rate_limit,
            burst=settings.burst,
            timeout=settings.timeout,
            workers=settings.workers or AUTO_MAX_WORKERS,  # the connection pool's size
            stop=stop,
            session=session,
            sleep=sleep,
            clock=clock or time.time,
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
        if request.recorded:
            # In work order (never backed up, failed, checked longest ago), copied out before the run writes.
            for ref in store.iter_refs_in_work_order():
                pairs.add(ref)
        # The work order, in every input mode: capped runs take what was never backed up first, then what
        # failed, then what was checked longest ago, so runs night after night make progress.
        pairs.order_by(store.work_keys)
        products.order_by(store.product_work_keys)
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
                cap=syncer.turn_away,
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


def work_in_order(
    pairs: PairSet, products: ProductSet, catalog: Generator[ProductChunk | PlannedChunk, None, None] | None
) -> Generator[list[ImageRef] | ProductChunk | PlannedChunk, None, None]:
    """Every input's work in one work order: what was never backed up and what failed (pairs and products,
    merged by their keys, a chunk at a time), then the catalog listing's work (``--all``), then the
    re-checks of what is backed up, longest unchecked first.

    The catalog listing is read as it comes, a page at a time, so it is not merged image by image: within
    it, items that need a call (new, changed, backup missing) are taken in the listing's id order. Merging
    them with the other inputs would mean holding the whole listing before the first download; placing them
    before the re-checks that the other inputs name (``--recorded``) spends a capped night on them first.
    """
    opened: list[Generator[Any, None, None]] = []

    def merged(ranks: tuple[int, ...]) -> Iterator[list[ImageRef] | ProductChunk]:
        refs = pairs.keyed_chunks(BATCH_SIZE, ranks=ranks)
        ids = products.keyed_chunks(BATCH_SIZE, ranks=ranks)
        opened.extend((refs, ids))
        Keyed = Iterator[tuple[tuple[int, str], list[ImageRef] | ProductChunk]]
        some: Keyed = refs
        whole: Keyed = ((key, ProductChunk(tuple(chunk), pairs)) for key, chunk in ids)
        for _key, chunk in heapq.merge(some, whole, key=lambda keyed: keyed[0]):
            yield chunk

    try:
        yield from merged((0, 1))  # never backed up, then failed (Store.work_keys)
        if catalog is not None:
            yield from catalog
        yield from merged((2,))  # backed up: the re-checks, longest unchecked first
    finally:
        for generator in opened:
            generator.close()
        if catalog is not None:
            catalog.close()


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


def catalog_chunks(
    client: Client,
    store: Store,
    opts: SyncOptions,
    named: Container[ImageRef],
    *,
    deep: bool,
    done: Container[int] = (),
    cap: Callable[[], str | None] | None = None,
) -> Generator[ProductChunk | PlannedChunk, None, None]:
    """``sync --all``: the catalog's listing, page by page, turned into work (notes §12).

    An item whose listing shows exactly the picture ids recorded for it, each backed up, is unchanged
    without a call; every other item's images come from ``catalog.productImage.list`` (a
    :class:`ProductChunk`, the usual plan and execute path). Once the listing is complete, the images of
    items no longer listed become missing (files kept). Nothing is concluded from a listing that was cut
    short or failed: that is a failure of the run, and nothing is marked gone.

    Items in ``done`` (named with ``--product``/``--products-file``, whose images the run lists on their own)
    are recorded as listed but given no work here: each product is done once.

    ``cap`` (the run's caps, :meth:`Syncer.turn_away`) is asked before every request of the listing: pages are
    work too. A listing stopped by a cap ends the chunks there; what it listed is recorded, nothing is marked
    gone (the listing is not complete).
    """
    # The catalogs listed before: a listing that lost one of them (or all its items) is incomplete.
    listing = CatalogListing(
        client,
        expected=store.listed_catalogs(),
        stop=(lambda: cap() is not None) if cap is not None else None,
    )
    # To the microsecond: what this listing did not touch is what an earlier one listed, even a second ago.
    seen_since = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    compared = mismatched = 0
    try:
        for page in listing.pages():
            if not opts.dry_run:
                store.save_listed(page, seen_since)
            rows = store.rows_of_products([item.id for item in page])
            recorded = {pid: {r.image_id for r in found if r.status == "ok"} for pid, found in rows.items()}
            needs_call, as_listed = plan_items([item for item in page if item.id not in done], recorded, deep)
            pair_count, misses = id_mismatches(page, recorded)
            compared, mismatched = compared + pair_count, mismatched + misses
            unchanged: list[Plan] = []
            for item in as_listed:
                item_rows = rows.get(item.id, [])
                if all(backed_up_as_recorded(row, opts) for row in item_rows if row.status == "ok"):
                    unchanged += [
                        Plan(row.ref, Action.UNCHANGED, "unchanged (as listed)", None, row)
                        for row in item_rows
                        if row.status == "ok" and row.ref not in named
                    ]
                else:
                    needs_call.append(item.id)  # a backup went missing: fetch fresh links for it
            if unchanged:
                yield PlannedChunk(tuple(unchanged))
            if needs_call:
                shown = {item.id: frozenset(item.picture_ids) for item in page}
                yield ProductChunk(tuple(needs_call), named, {pid: shown[pid] for pid in needs_call})
    except ListingIncomplete as exc:
        log.error("the catalog listing is incomplete (%s): nothing is marked missing", exc.message)
        yield PlannedChunk(
            (Plan(ImageRef(0, 0), Action.FAILED, f"catalog listing incomplete: {exc.message}"),)
        )
        return
    if listing.capped:
        if cap is not None:
            cap()  # the deadline passed during a wait: the run is capped (exit 5)
        log.warning(
            "the catalog listing stopped at a cap after %d items: nothing is marked missing", listing.items
        )
        return
    if compared and mismatched == compared:
        log.info(
            "the listing's picture ids never match the recorded image ids (%d items compared): every item "
            "costs a catalog.productImage.list call; the backup stays right, only slower",
            compared,
        )
    if opts.dry_run:
        return
    gone_at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    store.mark_gone_items(seen_since, gone_at)
    # Every gone item whose images are not all missing yet: this listing's, and those of a run that was
    # killed between the two writes (the items' mark is committed first), so no image stays ok for ever.
    for ids in store.iter_gone_items():
        gone = [
            Plan(
                row.ref,
                Action.MISSING,
                "its item is no longer in the catalog; the backup is kept",
                None,
                row,
            )
            for rows in store.rows_of_products(ids).values()
            for row in rows
            if row.status != "missing" and row.ref not in named
        ]
        if gone:
            yield PlannedChunk(tuple(gone))
