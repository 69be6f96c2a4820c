"""``imgsync restore`` as one Python call: settings and a request in, a :class:`RestoreSummary` out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import requests

from ..bitrix import Client
from ..config import Settings, validate_for_sync
from ..errors import ConfigError
from ..store import Store, run_lock
from .backup import ObjectReader
from .folder import restore_to_folder
from .pipeline import RestoreOptions, Restorer, groups_by_product
from .plan import RestorePlan
from .select import Selection, select_rows
from .summary import RestoreSummary

log = logging.getLogger(__name__)


@dataclass
class RestoreRequest:
    """What to restore and how (the options of ``imgsync restore``)."""

    selection: Selection = field(default_factory=Selection)
    to_dir: Path | None = None  # into a folder instead of the portal
    replace: bool = False  # restore into a taken DETAIL/PREVIEW slot (the picture there is backed up first)
    force: bool = False  # send again what the portal stored with other bytes before
    dry_run: bool = False


def run_restore(
    settings: Settings,
    request: RestoreRequest,
    *,
    progress: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_plan: Callable[[RestorePlan], None] | None = None,
    stop: threading.Event | None = None,
    session: requests.Session | None = None,
) -> RestoreSummary:
    """The whole of ``imgsync restore``. Raises :class:`~imgsync.errors.ImgsyncError` subclasses, with the
    summary of what was done attached (``exc.summary``) once the work has begun."""
    from ..runner import check_dest, make_auth, make_uploader  # the sync runner's builders, shared

    stop = stop or threading.Event()
    db = settings.db
    if not db.exists():
        raise ConfigError(f"storage.db {db}: no state database there, so nothing to restore")
    if request.to_dir is not None:
        # No portal, no lock: the backups are only read.
        with Store(db, readonly=True) as store:
            rows = select_rows(store, request.selection)
        uploader = make_uploader(settings)
        if uploader is not None:
            uploader.check()
        if on_total is not None:
            on_total(len(rows))
        if not request.dry_run:
            request.to_dir.mkdir(parents=True, exist_ok=True)
        return restore_to_folder(
            rows,
            request.to_dir,
            source_dest=settings.dest,
            objects=cast("ObjectReader | None", uploader),
            dry_run=request.dry_run,
            max_duration_s=settings.max_duration_s,
            max_bytes=settings.max_bytes,
            progress=progress,
        )
    validate_for_sync(settings)
    if not settings.keep_local and not settings.s3_enabled:
        raise ConfigError(
            "storage.keep_local = false needs S3 (s3.enabled = true): the files would go nowhere"
        )
    with ExitStack() as stack:
        if not request.dry_run:
            stack.enter_context(run_lock(db))
        store = stack.enter_context(Store(db, readonly=request.dry_run))
        rows = select_rows(store, request.selection)
        check_dest(settings.dest, create=not request.dry_run)
        uploader = make_uploader(settings)
        client = Client(
            make_auth(settings, store),
            rate_limit=settings.rate_limit,
            burst=settings.burst,
            timeout=settings.timeout,
            workers=4,
            stop=stop,
            session=session,
            clock=time.time,
        )
        if uploader is not None:
            uploader.check()
        opts = RestoreOptions(
            dest=settings.dest,
            source_dest=settings.dest,
            dry_run=request.dry_run,
            replace=request.replace,
            force=request.force,
            keep_local=settings.keep_local,
            max_request_bytes=settings.restore_max_request_bytes,
            request_limit_s=settings.restore_request_limit_s,
            timeout_s=settings.timeout,
            max_duration_s=settings.max_duration_s,
            max_bytes=settings.max_bytes,
        )
        if on_total is not None:
            on_total(len(rows))
        log.info("%d images selected%s", len(rows), " [dry run]" if request.dry_run else "")
        restorer = Restorer(
            client,
            store,
            opts,
            uploader=uploader,
            objects=cast("ObjectReader | None", uploader),  # S3Uploader.read
            progress=progress,
            on_plan=on_plan,
            stop=stop,
        )
        return restorer.run(groups_by_product(rows))
    raise AssertionError("unreachable")
