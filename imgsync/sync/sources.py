"""The work of a sync, in work order: pairs, products, ``--recorded`` and the catalog (``--all``) as chunks.

Every input is read and validated first (:func:`read_inputs`); then the store puts it in the work order
(:func:`put_in_work_order`: never backed up, failed, checked longest ago), and :func:`work_in_order` yields
it a chunk at a time: lists of pairs, :class:`ProductChunk` (products whose images are listed), and
:class:`PlannedChunk` (plans decided without a call: ``--all``'s items listed as recorded, gone items).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Container, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

from ..bitrix import BATCH_SIZE, Client
from ..bitrix.catalog import CatalogListing, ListingIncomplete, id_mismatches, plan_items
from ..errors import ConfigError
from ..inputs import PairSet, ProductSet, collect_inputs, collect_products
from ..models import Action, ImageRef
from ..store import Store
from .plan import Plan, SyncOptions, backed_up_as_recorded

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
class PlannedChunk:
    """Plans decided without a call to the portal (an item listed as it was recorded, images of items
    gone from the catalog): executed as they come, no ``batch`` of their own."""

    plans: tuple[Plan, ...]


#: One piece of work: pairs (one ``get`` batch), products (one ``list`` batch) or plans (no call).
Chunk = list[ImageRef] | ProductChunk | PlannedChunk


def read_inputs(stack: ExitStack, request: Request) -> tuple[PairSet, ProductSet]:
    """The pairs and products the request names, read and validated (with file:line) before anything else
    happens; they stay open (their database) until ``stack`` closes."""
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
    return pairs, products


def put_in_work_order(store: Store, pairs: PairSet, products: ProductSet, *, recorded: bool) -> None:
    """Add what ``--recorded`` names, and order pairs and products by the store's work keys.

    The work order, in every input mode: capped runs take what was never backed up first, then what failed,
    then what was checked longest ago, so runs night after night make progress."""
    if recorded:
        # In work order (never backed up, failed, checked longest ago), copied out before the run writes.
        for ref in store.iter_refs_in_work_order():
            pairs.add(ref)
    pairs.order_by(store.work_keys)
    products.order_by(store.product_work_keys)


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

    ``cap`` (the run's caps, :meth:`Caps.turn_away <imgsync.sync.caps.Caps.turn_away>`) is asked before every
    request of the listing: pages are work too. A listing stopped by a cap ends the chunks there; what it
    listed is recorded, nothing is marked gone (the listing is not complete).
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
