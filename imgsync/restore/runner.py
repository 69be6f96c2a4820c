"""``imgsync restore`` as one Python call: settings and a request in, a :class:`RestoreSummary` out."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import requests

from ..config import Settings, validate_for_sync
from ..errors import ConfigError, UsageError
from ..models import StoredImage
from ..store import Store, run_lock
from .backup import ObjectReader
from .folder import restore_to_folder
from .match import Match, mapped, match_by_key, read_map, source_keys
from .pipeline import Group, RestoreOptions, Restorer, groups_by_product
from .plan import RestorePlan
from .select import Selection, select_rows
from .source import SourcePortal, open_source, source_rows
from .summary import RestoreSummary

if TYPE_CHECKING:
    from ..s3 import S3Uploader

log = logging.getLogger(__name__)


@dataclass
class RestoreRequest:
    """What to restore and how (the options of ``imgsync restore``)."""

    selection: Selection = field(default_factory=Selection)
    to_dir: Path | None = None  # into a folder instead of the portal
    replace: bool = False  # restore into a taken DETAIL/PREVIEW slot (the picture there is backed up first)
    force: bool = False  # send again what the portal stored with other bytes before
    dry_run: bool = False
    source: SourcePortal | None = None  # another portal's backup (--from-db); None: the target's own


def run_restore(
    settings: Settings,
    request: RestoreRequest,
    *,
    progress: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_plan: Callable[[RestorePlan], None] | None = None,
    on_match: Callable[[Match], None] | None = None,
    stop: threading.Event | None = None,
    session: requests.Session | None = None,
) -> RestoreSummary:
    """The whole of ``imgsync restore``. Raises :class:`~imgsync.errors.ImgsyncError` subclasses, with the
    summary of what was done attached (``exc.summary``) once the work has begun. ``on_match``: each source
    product's target (or why none), for a restore from another portal, before its plan."""
    from ..runner import check_dest, make_client, make_uploader  # the sync runner's builders, shared

    stop = stop or threading.Event()
    db = settings.db
    if request.source is not None:
        if request.to_dir is not None:
            raise UsageError(
                "--to writes the config's own backups into a folder; it does not go with --from-db"
            )
        return _run_migration(
            settings,
            request,
            request.source,
            progress=progress,
            on_total=on_total,
            on_plan=on_plan,
            on_match=on_match,
            stop=stop,
            session=session,
        )
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
        client = make_client(settings, store, workers=4, stop=stop, session=session)
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


def _run_migration(
    settings: Settings,
    request: RestoreRequest,
    source: SourcePortal,
    *,
    progress: Callable[[str], None] | None,
    on_total: Callable[[int], None] | None,
    on_plan: Callable[[RestorePlan], None] | None,
    on_match: Callable[[Match], None] | None,
    stop: threading.Event,
    session: requests.Session | None,
) -> RestoreSummary:
    """A restore from another portal's backup: the source database (read only) selects the rows and gives
    each product's key; the config's portal, database, dest and S3 are the target, as for a same-portal
    restore. Every input is checked before the first request."""
    from ..runner import check_dest, make_client, make_uploader

    db = settings.db
    source.check(db)
    validate_for_sync(settings)
    if not settings.keep_local and not settings.s3_enabled:
        raise ConfigError(
            "storage.keep_local = false needs S3 (s3.enabled = true): the files would go nowhere"
        )
    source_objects: ObjectReader | None = None
    if source.s3:
        bucket = source.s3_bucket or settings.s3_bucket
        if not bucket:
            raise ConfigError("--from-s3 needs a bucket: --from-s3-bucket, or s3.bucket in the config")
        from ..s3 import S3Uploader  # boto3 is slow to import: only when S3 is used

        source_objects = S3Uploader(
            bucket=bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url or None
        )
    mapping: dict[int, int] | None = None
    keys: dict[int, str] = {}
    with open_source(source.db) as source_store:
        rows = select_rows(source_store, request.selection)
        pids = list(dict.fromkeys(row.product_id for row in rows))
        if source.map_csv is not None:
            mapping = read_map(source.map_csv, request.selection.stdin)
        else:
            assert source.match is not None
            keys = source_keys(source_store, pids, source.match)
    rows = source_rows(rows, source, settings.s3_prefix)
    with ExitStack() as stack:
        if not request.dry_run:
            stack.enter_context(run_lock(db))
        store = stack.enter_context(Store(db, readonly=request.dry_run))
        check_dest(settings.dest, create=not request.dry_run)
        uploader = make_uploader(settings)
        client = make_client(settings, store, workers=4, stop=stop, session=session)
        if uploader is not None:
            uploader.check()
        if source_objects is not None and source_objects is not uploader:
            cast("S3Uploader", source_objects).check()
        if mapping is not None:
            matches = mapped(pids, mapping, str(source.map_csv))
        else:
            assert source.match is not None
            matches = match_by_key(client, keys, source.match)
        if on_match is not None:
            for pid in pids:
                on_match(matches[pid])
        unmatched = sum(m.target_product_id is None for m in matches.values())
        log.info(
            "%d source products: %d matched to a target product, %d unmatched",
            len(pids),
            len(pids) - unmatched,
            unmatched,
        )
        opts = RestoreOptions(
            dest=settings.dest,
            source_dest=source.dest or settings.dest,  # without --from-dest no row names a local file
            dry_run=request.dry_run,
            replace=request.replace,
            force=request.force,
            keep_local=settings.keep_local,
            max_request_bytes=settings.restore_max_request_bytes,
            request_limit_s=settings.restore_request_limit_s,
            timeout_s=settings.timeout,
            max_duration_s=settings.max_duration_s,
            max_bytes=settings.max_bytes,
            source_db=source.name,
        )
        if on_total is not None:
            on_total(len(rows))
        log.info(
            "%d images selected from %s%s", len(rows), source.db, " [dry run]" if request.dry_run else ""
        )
        restorer = Restorer(
            client,
            store,
            opts,
            uploader=uploader,
            objects=source_objects,
            progress=progress,
            on_plan=on_plan,
            stop=stop,
        )
        restorer.summary.mapping = [matches[pid].as_json() for pid in pids]
        return restorer.run(groups_by_target(rows, matches))
    raise AssertionError("unreachable")


def groups_by_target(rows: Sequence[StoredImage], matches: Mapping[int, Match]) -> list[Group]:
    """A restore from another portal: the images of the source products that go to one target product form
    one group (so that the same bytes are never planned twice for it); each unmatched source product is a
    group of its own, with the reason."""
    by_target: dict[int, list[StoredImage]] = {}
    unmatched: dict[int, list[StoredImage]] = {}
    for row in rows:
        target = matches[row.product_id].target_product_id
        if target is None:
            unmatched.setdefault(row.product_id, []).append(row)
        else:
            by_target.setdefault(target, []).append(row)
    groups = [Group(target, tuple(items)) for target, items in sorted(by_target.items())]
    groups += [Group(None, tuple(items), matches[pid].reason) for pid, items in sorted(unmatched.items())]
    return groups
