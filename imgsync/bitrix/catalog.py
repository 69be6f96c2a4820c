"""The whole catalog: every item of every trade catalog, listed with as few requests as the docs allow.

``sync --all`` needs every product, set, parent product, variation and service, with the pictures the
listing shows, so that an item whose pictures are already backed up costs no further call (notes §12)::

    listing = CatalogListing(client)            # catalog.catalog.list, catalog.productProperty.list
    for page in listing.pages():                # lists of ListedItem, up to 50 each
        ...                                     # raises ListingIncomplete at the end if anything was missed
    listing.complete                            # True only after every catalog reached its end

How it pages (huge-data.md, notes §12): ``catalog.product.list`` ordered by id ascending, filtered on
``>id`` the last id seen, ``start=-1`` (no count). Pages are chained inside one ``batch`` by references,
``filter[>id]=$result[<previous key>][products][49][id]``. A chain longer than what is left re-reads from the
start once its references resolve to nothing, so chains are sized: the first page of each catalog is asked
with ``start=0``, whose ``total`` says how many pages follow. The first pages of all catalogs go in one
batch, and later chains of different catalogs share batches, so a warm listing of N items costs
``2 + 1 + ceil(floor(N_i / 50) summed / chain)`` requests: catalogs, properties, the first pages, the chains.
A chain is read up to its first short page (< 50 items) and nothing after it is used.

Nothing in a listing that was cut short, refused or failed may be taken to mean "gone upstream": such a
listing ends by raising :class:`ListingIncomplete` (after yielding what it did get), and ``complete`` stays
false. So does a listing that lost a catalog (``expected``: the catalogs an earlier listing showed): one
``catalog.catalog.list`` no longer names (an empty answer included), or one whose item listing comes back
empty. Credentials refused for the whole run (``catalog.catalog.list`` needs an administrator) raise
:class:`~imgsync.errors.AuthError` at once.

Duplicates: within a catalog the ids come strictly ascending (anything else is a portal that does not page
as documented: the listing is incomplete), so an id never repeats there. Element ids are unique across a
portal's info blocks, but should a second catalog list an id again it is dropped: the ids of earlier
catalogs are kept in a private temporary SQLite table, so memory stays flat at a million items.

:func:`plan_items` decides, from a page and the recorded backups, which items need
``catalog.productImage.list`` and which are unchanged without a call.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuthError, DeadlineReached, ImageDenied, ImageError, ImgsyncError, TransientError
from ..models import ListedItem
from .client import Client
from .pacing import BATCH_SIZE

__all__ = [
    "PAGE",
    "Catalog",
    "CatalogListing",
    "ListingIncomplete",
    "id_mismatches",
    "iter_items",
    "list_catalogs",
    "more_photo_properties",
    "parse_item",
    "plan_items",
]

log = logging.getLogger(__name__)

PAGE = 50  # "The page size of results is always static — 50 records."
LIST_METHOD = "catalog.product.list"
#: A request must finish within 60 s on the cloud (limits.md); chains are cut to keep one well under that.
MAX_REQUEST_SECONDS = 20.0
_MAX_SMALL_PAGES = 20  # catalogs and properties: a portal has one or two catalogs, a few properties


class ListingIncomplete(ImgsyncError):
    """The catalog listing did not reach the end of every catalog; nothing may be concluded from it."""

    fatal = False

    def __init__(self, message: str | None = None, *, listed: int = 0) -> None:
        super().__init__(message)
        #: Items the listing did yield before it ended.
        self.listed = listed


@dataclass(frozen=True)
class Catalog:
    """A trade catalog: its info block, and for the variation catalog the product catalog it belongs to."""

    iblock_id: int
    product_iblock_id: int | None = None
    name: str = ""

    @property
    def variations(self) -> bool:
        """The variation catalog ("``productIblockId`` ... filled only for trade catalogs of variations")."""
        return self.product_iblock_id is not None


# ------------------------------------------------------------------ parsing (lenient: strings or numbers)


def _int(value: Any) -> int | None:
    """A positive id from a number or a string of digits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if number > 0 else None
    return None


def _file_ids(value: Any) -> list[int]:
    """File ids in a picture field: ``{id, url, urlMachine}``, ``null``, a property value
    ``{"valueId", "value": {...}}``, a list of those, an object keyed by value id, or a bare id."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, list):
        return [i for v in value for i in _file_ids(v)]
    if isinstance(value, dict):
        if "id" in value:
            found = _int(value["id"])
            return [found] if found else []
        if "value" in value:
            return _file_ids(value["value"])
        return [i for v in value.values() if isinstance(v, dict | list) for i in _file_ids(v)]
    found = _int(value)
    return [found] if found else []


def _parent(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("value")
    return _int(value)


def parse_item(row: Mapping[str, Any], property_id: int | None = None) -> ListedItem:
    """One ``products[]`` row as a :class:`ListedItem`; raises :class:`ImageError` without an id.

    >>> parse_item({"id": "12", "iblockId": 23, "type": 1, "detailPicture": {"id": "7"}, "property120":
    ...     [{"valueId": "1", "value": {"id": "9"}}], "previewPicture": None}, 120).picture_ids
    (7, 9)
    """
    item_id, iblock_id = _int(row.get("id")), _int(row.get("iblockId"))
    if item_id is None or iblock_id is None:
        raise ImageError(f"{LIST_METHOD}: an item without an id or iblockId")
    pictures = _file_ids(row.get("detailPicture")) + _file_ids(row.get("previewPicture"))
    if property_id is not None:
        pictures += _file_ids(row.get(f"property{property_id}"))
    return ListedItem(
        id=item_id,
        iblock_id=iblock_id,
        type=_int(row.get("type")) or 0,
        parent_id=_parent(row.get("parentId")),
        picture_ids=tuple(sorted(set(pictures))),
        xml_id=_text(row, "xmlId"),
        code=_text(row, "code"),
        name=_text(row, "name"),
    )


def _text(row: Mapping[str, Any], key: str) -> str | None:
    """A text field of a listed item: None when the answer lacks it, ``""`` when it is null."""
    if key not in row:
        return None
    value = row[key]
    if value is None or isinstance(value, dict | list | bool):
        return ""
    return str(value).strip()


# ------------------------------------------------------------------ catalogs and properties


def _refused(method: str, err: ImageError) -> ImgsyncError:
    if isinstance(err, ImageDenied):
        return AuthError(
            f"{method} was refused ({err.message}): listing the whole catalog needs a webhook or app of a "
            "portal administrator with the 'catalog' scope"
        )
    return ListingIncomplete(f"{method} failed: {err.message}")


def _small_list(client: Client, method: str, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of a short list (a few pages at most), by ``start``/``next``."""
    rows: list[dict[str, Any]] = []
    start = 0
    for _ in range(_MAX_SMALL_PAGES):
        try:
            data = client.call(method, {**params, "start": start})
        except DeadlineReached:
            raise
        except ImageError as exc:
            raise _refused(method, exc) from None
        result = data.get("result")
        page = result.get(key) if isinstance(result, dict) else None
        if not isinstance(page, list):
            raise ListingIncomplete(f"{method}: unexpected answer (no {key})")
        rows += [row for row in page if isinstance(row, dict)]
        following = _int(data.get("next"))
        if following is None or not page:
            return rows
        start = following
    raise ListingIncomplete(f"{method}: more than {_MAX_SMALL_PAGES} pages")


def list_catalogs(client: Client) -> list[Catalog]:
    """The portal's trade catalogs with ``catalog.catalog.list`` (admin only), in id order.

    >>> [c.iblock_id for c in list_catalogs(client)]     # doctest: +SKIP
    [23, 25]
    """
    rows = _small_list(
        client,
        "catalog.catalog.list",
        "catalogs",
        {"select": ["id", "iblockId", "productIblockId", "name"], "order": {"id": "asc"}},
    )
    catalogs = []
    for row in rows:
        iblock = _int(row.get("iblockId")) or _int(row.get("id"))
        if iblock is None:
            raise ListingIncomplete("catalog.catalog.list: a catalog without an id")
        catalogs.append(Catalog(iblock, _int(row.get("productIblockId")), str(row.get("name") or "")))
    return catalogs


def more_photo_properties(client: Client) -> dict[int, int]:
    """The MORE_PHOTO property id of each trade catalog (``{iblock_id: property_id}``), from
    ``catalog.productProperty.list`` with ``filter {"code": "MORE_PHOTO"}`` (no iblockId: all catalogs).

    >>> more_photo_properties(client)                     # doctest: +SKIP
    {23: 120, 25: 121}
    """
    rows = _small_list(
        client,
        "catalog.productProperty.list",
        "productProperties",
        {"select": ["id", "iblockId", "code"], "filter": {"code": "MORE_PHOTO"}, "order": {"id": "asc"}},
    )
    found: dict[int, int] = {}
    for row in rows:
        prop, iblock = _int(row.get("id")), _int(row.get("iblockId"))
        if prop is not None and iblock is not None and str(row.get("code") or "MORE_PHOTO") == "MORE_PHOTO":
            found.setdefault(iblock, prop)
    return found


# ------------------------------------------------------------------ the listing


class _SeenIds:
    """Ids listed by earlier catalogs, in a private temporary SQLite database (flat memory)."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
            "CREATE TABLE seen (id INTEGER PRIMARY KEY, iblock_id INTEGER NOT NULL);"
        )

    def new(self, items: list[ListedItem]) -> list[ListedItem]:
        """``items`` not listed by another catalog before; records them."""
        ids = [item.id for item in items]
        if not ids:
            return items
        marks = ",".join("?" * len(ids))
        known = {row[0] for row in self._db.execute(f"SELECT id FROM seen WHERE id IN ({marks})", ids)}
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO seen VALUES (?, ?)", [(i.id, i.iblock_id) for i in items]
            )
        return [item for item in items if item.id not in known]

    def close(self) -> None:
        self._db.close()


@dataclass
class _Cursor:
    """Where the listing of one catalog stands."""

    key: str
    catalog: Catalog
    property_id: int | None
    last: int = 0
    #: Pages still to chain, known from a first page's ``total`` (None: ask a first page, ``start=0``).
    pages_left: int | None = None
    done: bool = False
    error: str = ""
    listed: int = 0

    @property
    def select(self) -> str:
        # xmlId, code and name: the keys a restore to another portal maps items by (no extra request).
        names = ["id", "iblockId", "type", "detailPicture", "previewPicture", "xmlId", "code", "name"]
        if self.property_id is not None:
            names.append(f"property{self.property_id}")
        if self.catalog.variations:
            names.append("parentId")  # the variation catalog names each variation's parent
        return "&".join(f"select[]={name}" for name in names)

    def command(self, after: str, start: int) -> str:
        return (
            f"{LIST_METHOD}?{self.select}&filter[iblockId]={self.catalog.iblock_id}"
            + (f"&filter[>id]={after}" if after != "0" else "")
            + f"&order[id]=asc&start={start}"
        )


@dataclass
class CatalogListing:
    """Every item of the portal's trade catalogs; see the module docstring.

    ``catalogs``/``properties`` may be given (else :func:`list_catalogs` / :func:`more_photo_properties` are
    called). ``chain_length`` caps the commands of one batch (at most 50); chains are shortened further so
    that one request stays under ``max_request_seconds`` (measured) and within one window's operating-time
    budget of ``catalog.product.list`` (the client's :class:`~imgsync.bitrix.OperatingBudget`).
    """

    client: Client
    catalogs: list[Catalog] | None = None
    properties: dict[int, int] | None = None
    chain_length: int = BATCH_SIZE
    max_request_seconds: float = MAX_REQUEST_SECONDS
    #: Catalogs an earlier listing showed, with how many of their items it showed (``{iblock_id: n}``, from
    #: ``Store.listed_catalogs``): one absent from ``catalog.catalog.list`` now, or one whose items all
    #: vanished from its item listing, makes the listing incomplete (notes §12: nothing says a portal
    #: cannot answer ``[]`` for a moment).
    expected: Mapping[int, int] = field(default_factory=dict)
    #: True once every catalog reached its end without an error; False while listing or after a failure.
    complete: bool = False
    items: int = 0
    duplicates: int = 0
    batches: int = 0
    problems: list[str] = field(default_factory=list)
    #: Asked before each request: true stops the listing there (a cap of the run), ``capped`` then set.
    stop: Callable[[], bool] | None = None
    #: The listing stopped early for a cap (``stop``, or the run's deadline during a wait): not complete,
    #: not failed; nothing may be concluded from it.
    capped: bool = False
    _page_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.chain_length <= BATCH_SIZE:
            raise ValueError(f"chain_length must be 1..{BATCH_SIZE}")

    def pages(self) -> Iterator[list[ListedItem]]:
        """Yield the items a page at a time (up to 50, ids ascending within a catalog, no id twice).

        Ends normally when the listing is complete, or (``capped`` set, ``complete`` false) when a cap stopped
        it between two requests; otherwise raises :class:`ListingIncomplete` after the last page it got.
        :class:`~imgsync.errors.AuthError`, :class:`PortalUnavailable` and :class:`Interrupted` from the
        client pass through (the listing is incomplete then, too).
        """
        self.complete = self.capped = False
        try:
            yield from self._pages()
        except DeadlineReached:
            self.capped = True
            log.info("the catalog listing stopped at the run's deadline after %d items", self.items)

    def _stopped(self) -> bool:
        if self.capped or (self.stop is not None and self.stop()):
            self.capped = True
            log.info("the catalog listing stopped at a cap after %d items", self.items)
        return self.capped

    def _pages(self) -> Iterator[list[ListedItem]]:
        if self._stopped():
            return
        if self.catalogs is None:
            self.catalogs = list_catalogs(self.client)
        if self.properties is None:
            self.properties = more_photo_properties(self.client)
        cursors = [
            _Cursor(f"c{n}", catalog, self.properties.get(catalog.iblock_id))
            for n, catalog in enumerate(self.catalogs)
        ]
        present = {catalog.iblock_id for catalog in self.catalogs}
        vanished = [
            f"catalog {iblock}, whose {n} items an earlier listing showed, is absent from catalog.catalog.list"
            for iblock, n in sorted(self.expected.items())
            if n and iblock not in present
        ]
        seen = _SeenIds() if len(cursors) > 1 else None
        try:
            while active := [c for c in cursors if not c.done]:
                if self._stopped():
                    return
                for page in self._round(active):
                    if seen is not None:
                        fresh = seen.new(page)
                        self.duplicates += len(page) - len(fresh)
                        page = fresh
                    self.items += len(page)
                    if page:
                        yield page
        finally:
            if seen is not None:
                seen.close()
        self.problems = vanished + [f"catalog {c.catalog.iblock_id}: {c.error}" for c in cursors if c.error]
        self.problems += [
            f"catalog {c.catalog.iblock_id}: {LIST_METHOD} answered no items, where an earlier listing showed "
            f"{self.expected[c.catalog.iblock_id]}"
            for c in cursors
            if not c.error and not c.listed and self.expected.get(c.catalog.iblock_id)
        ]
        if self.problems:
            raise ListingIncomplete(
                "the catalog listing is incomplete (" + "; ".join(self.problems) + ")", listed=self.items
            )
        self.complete = True

    def _limit(self) -> int:
        """Commands for the next batch: the chain length, cut for the request time and the budget."""
        limit = self.chain_length
        if self._page_seconds > 0:
            limit = min(limit, int(self.max_request_seconds / self._page_seconds))
        capacity = self.client.operating.capacity(LIST_METHOD)
        if capacity is not None:
            limit = min(limit, capacity)
        return max(1, limit)

    def _round(self, active: list[_Cursor]) -> Iterator[list[ListedItem]]:
        """One batch: first pages for cursors that need one, then chains, up to :meth:`_limit` commands."""
        limit = self._limit()
        commands: dict[str, str] = {}
        planned: list[tuple[_Cursor, str, bool]] = []  # (cursor, key, is a first page)
        for cursor in active:
            if cursor.pages_left is None and len(commands) < limit:
                key = f"{cursor.key}h"
                commands[key] = cursor.command(str(cursor.last), 0)
                planned.append((cursor, key, True))
        for cursor in active:
            previous = ""
            for n in range(min(cursor.pages_left or 0, limit - len(commands))):
                key = f"{cursor.key}p{n}"
                after = f"$result[{previous}][products][{PAGE - 1}][id]" if previous else str(cursor.last)
                commands[key] = cursor.command(after, -1)
                planned.append((cursor, key, False))
                previous = key
        waited = self.client.operating.waited + self.client.bucket.waited
        began = time.monotonic()
        answers = self.client.batch(commands, chained=True)
        spent = time.monotonic() - began - (self.client.operating.waited + self.client.bucket.waited - waited)
        self.batches += 1
        if answers:
            self._page_seconds = max(self._page_seconds * 0.5, spent / len(answers))
        else:
            for cursor in {id(c): c for c, _, _ in planned}.values():
                cursor.done, cursor.error = True, "the batch answer held no result"
        stopped: set[int] = set()  # cursors whose chain ended or failed in this batch
        for cursor, key, first in planned:
            if id(cursor) in stopped or key not in answers:
                continue
            page = self._page(cursor, answers[key].value, first, answers[key].total)
            if page is None:
                stopped.add(id(cursor))
                continue
            if page:
                yield page
            if cursor.done or cursor.pages_left is None:
                stopped.add(id(cursor))

    def _page(self, cursor: _Cursor, value: Any, first: bool, total: int | None) -> list[ListedItem] | None:
        """Read one answer into the cursor; the page's items, or None when the chain stops here."""
        where = f"{LIST_METHOD} of catalog {cursor.catalog.iblock_id} after id {cursor.last}"
        if isinstance(value, DeadlineReached):
            self.capped = True  # not run: the listing ends here, neither complete nor failed
            return None
        if isinstance(value, TransientError):
            log.info("%s: %s; continuing from there", where, value.message)
            return None  # not run: the next batch asks this page again
        if isinstance(value, ImgsyncError):
            cursor.done, cursor.error = True, f"{where}: {value.message}"
            return None
        rows = value.get("products") if isinstance(value, dict) else None
        if not isinstance(rows, list):
            cursor.done, cursor.error = True, f"{where}: unexpected answer (no products)"
            return None
        try:
            items = [parse_item(row, cursor.property_id) for row in rows if isinstance(row, dict)]
        except ImageError as exc:
            cursor.done, cursor.error = True, f"{where}: {exc.message}"
            return None
        ids = [item.id for item in items]
        if len(items) != len(rows) or any(b <= a for a, b in zip([cursor.last, *ids], ids, strict=False)):
            # Keyset paging needs ids strictly ascending past the last one: anything else could skip items.
            cursor.done, cursor.error = True, f"{where}: the items do not come in ascending id order"
            return None
        if items:
            cursor.last = ids[-1]
        cursor.listed += len(items)
        if len(items) < PAGE:
            cursor.done = True  # the end; nothing after a short page is used
        elif first:
            # total counts the items after `last` (this page included): the pages that follow, with the
            # short one that ends the catalog. Without a total, one page at a time says where the end is.
            cursor.pages_left = (total - PAGE) // PAGE + 1 if total is not None and total >= PAGE else 1
        else:
            assert cursor.pages_left is not None
            cursor.pages_left -= 1
            if cursor.pages_left <= 0:
                cursor.pages_left = None  # more than total said (items added meanwhile): ask a first page
        return items


def iter_items(
    client: Client,
    iblock_id: int,
    property_id: int | None,
    *,
    variations: bool = False,
    chain_length: int = BATCH_SIZE,
) -> Iterator[list[ListedItem]]:
    """Every item of one catalog, pages of up to 50 (see :class:`CatalogListing`); raises
    :class:`ListingIncomplete` at the end when the listing did not reach the catalog's end.

    >>> for page in iter_items(client, 23, 120): ...     # doctest: +SKIP
    """
    listing = CatalogListing(
        client,
        catalogs=[Catalog(iblock_id, 0 if variations else None)],
        properties={iblock_id: property_id} if property_id is not None else {},
        chain_length=chain_length,
    )
    yield from listing.pages()


# ------------------------------------------------------------------ what needs a call


def plan_items(
    items: Iterable[ListedItem], recorded: Mapping[int, set[int]], deep: bool
) -> tuple[list[int], list[ListedItem]]:
    """Split listed items into (ids that need ``catalog.productImage.list``, items unchanged without a call).

    An item is unchanged when the listing shows exactly the picture ids recorded for it with status ok
    (``recorded``: item id -> image ids, from ``Store.recorded_pictures``) and ``deep`` is false. An item
    with no pictures and nothing recorded is unchanged too (there is nothing to back up). When listing ids
    are not image ids (the docs leave it open) nothing matches and every item costs a call: correct,
    only slower; :func:`id_mismatches` tells.

    >>> plan_items([ListedItem(1, 23, 1, None, (5, 6))], {1: {5, 6}}, deep=False)
    ([], [ListedItem(id=1, iblock_id=23, type=1, parent_id=None, picture_ids=(5, 6))])
    """
    calls: list[int] = []
    unchanged: list[ListedItem] = []
    for item in items:
        if not deep and set(item.picture_ids) == recorded.get(item.id, set()):
            unchanged.append(item)
        else:
            calls.append(item.id)
    return calls, unchanged


def id_mismatches(items: Iterable[ListedItem], recorded: Mapping[int, set[int]]) -> tuple[int, int]:
    """(items compared, items whose listed picture ids match none of their recorded image ids).

    Only items with pictures listed and a non-empty recorded set are compared. When every compared item
    mismatches (say, more than a handful), the portal's listing ids are not image ids: every item will cost
    a ``catalog.productImage.list`` call. Worth a ``-v`` line.

    >>> id_mismatches([ListedItem(1, 23, picture_ids=(7001,))], {1: {1000}})
    (1, 1)
    """
    compared = mismatched = 0
    for item in items:
        ids = recorded.get(item.id)
        if not ids or not item.picture_ids:
            continue
        compared += 1
        if ids.isdisjoint(item.picture_ids):
            mismatched += 1
    return compared, mismatched
