"""The whole-catalog listing against the emulator: exact request counts, chains, errors, pacing."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from imgsync.bitrix import Client, RetryPolicy, WebhookAuth
from imgsync.bitrix.catalog import (
    Catalog,
    CatalogListing,
    ListingIncomplete,
    id_mismatches,
    iter_items,
    list_catalogs,
    more_photo_properties,
    parse_item,
    plan_items,
)
from imgsync.emulator import CatalogImage, CatalogItem, Portal, make_store_catalog
from imgsync.emulator.portal import ApiError
from imgsync.errors import AuthError
from imgsync.models import ListedItem

P, V = 23, 25


def client_for(portal: Portal, **kwargs: object) -> Client:
    kwargs.setdefault("retry", RetryPolicy(attempts=4, base=0.01, cap=0.05))
    return Client(WebhookAuth(portal.webhook_url), rate_limit=1000.0, burst=10_000, **kwargs)  # type: ignore[arg-type]


def listed(listing: CatalogListing) -> list[ListedItem]:
    return [item for page in listing.pages() for item in page]


def by_catalog(got: list[ListedItem]) -> dict[int, list[int]]:
    """The ids listed per catalog, in the order they came (pages of two catalogs interleave)."""
    out: dict[int, list[int]] = {}
    for item in got:
        out.setdefault(item.iblock_id, []).append(item.id)
    return out


def expected(items: list[CatalogItem]) -> dict[int, list[int]]:
    return {P: [i.id for i in items if i.iblock_id == P], V: [i.id for i in items if i.iblock_id == V]}


@pytest.fixture(scope="module")
def big() -> tuple[list[CatalogItem], list[CatalogImage]]:
    # 3000 simple products + 20 parents with 5 variations each: 3020 items in 23, 100 in 25.
    return make_store_catalog(3000, parents=20, variations_per_parent=5, images_per_item=0)


@pytest.fixture
def small() -> tuple[list[CatalogItem], list[CatalogImage]]:
    # ids 100..159 simple, 160..161 sets, parents 162/165/168 with 2 variations each, services 171..174.
    return make_store_catalog(
        60,
        sets=2,
        parents=3,
        variations_per_parent=2,
        services=4,
        images_per_item=3,
        min_size=100,
        max_size=200,
    )


@pytest.fixture
def portal(small: tuple[list[CatalogItem], list[CatalogImage]]) -> Iterator[Portal]:
    items, images = small
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as p:
        yield p
        assert p.server_errors == []


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {
                "id": 1,
                "iblockId": 23,
                "type": 1,
                "detailPicture": {"id": "7", "url": "/x"},
                "previewPicture": None,
            },
            ListedItem(1, 23, 1, None, (7,)),
        ),
        (
            {
                "id": "2",
                "iblockId": "25",
                "type": "4",
                "parentId": {"value": "9", "valueId": "900"},
                "previewPicture": {"id": 8},
                "property121": [
                    {"valueId": "5", "value": {"id": "12"}},
                    {"valueId": "6", "value": {"id": "3"}},
                ],
            },
            ListedItem(2, 25, 4, 9, (3, 8, 12)),
        ),
        # A single value, an object keyed by value id, a bare id, junk: lenient.
        (
            {"id": 3, "iblockId": 23, "property121": {"valueId": "5", "value": {"id": "4"}}},
            ListedItem(3, 23, 0, None, (4,)),
        ),
        (
            {"id": 4, "iblockId": 23, "property121": {"77": {"value": {"id": 5}}, "78": {"value": 6}}},
            ListedItem(4, 23, 0, None, (5, 6)),
        ),
        (
            {"id": 5, "iblockId": 23, "detailPicture": "44", "property121": [], "parentId": None},
            ListedItem(5, 23, 0, None, (44,)),
        ),
        (
            {
                "id": 6,
                "iblockId": 23,
                "detailPicture": {"id": "x"},
                "previewPicture": True,
                "property121": None,
            },
            ListedItem(6, 23),
        ),
        # The same file twice (detail and MORE_PHOTO) counts once.
        (
            {"id": 7, "iblockId": 23, "detailPicture": {"id": 9}, "property121": [{"value": {"id": "9"}}]},
            ListedItem(7, 23, 0, None, (9,)),
        ),
        # Another property's values are not pictures.
        ({"id": 8, "iblockId": 23, "property99": [{"value": {"id": "9"}}]}, ListedItem(8, 23)),
    ],
)
def test_parse_item_shapes(row: dict, expected: ListedItem) -> None:
    assert parse_item(row, 121) == expected


# ------------------------------------------------------------------ catalogs, properties


def test_catalogs_and_properties(portal: Portal) -> None:
    client = client_for(portal)
    assert [(c.iblock_id, c.product_iblock_id, c.variations) for c in list_catalogs(client)] == [
        (P, None, False),
        (V, P, True),
    ]
    assert more_photo_properties(client) == {P: 120, V: 121}


def test_a_catalog_list_refused_is_an_auth_error(portal: Portal) -> None:
    portal.admin = False
    with pytest.raises(AuthError) as info:
        list(CatalogListing(client_for(portal)).pages())
    assert info.value.message == (
        "catalog.catalog.list was refused (access denied to this product (200040300010: Access Denied)): "
        "listing the whole catalog needs a webhook or app of a portal administrator with the 'catalog' scope"
    )
    assert portal.stats.by_method == {"catalog.catalog.list": 1}


# ------------------------------------------------------------------ the listing


def test_every_item_of_every_type_with_its_pictures(portal: Portal, small: tuple[list, list]) -> None:
    items, images = small
    listing = CatalogListing(client_for(portal))
    got = listed(listing)
    assert listing.complete and listing.items == len(items) == 75
    assert by_catalog(got) == expected(items) and len(got) == len({i.id for i in got})
    by_id = {i.id: i for i in got}
    assert {(i.id, i.type, i.iblock_id, i.parent_id) for i in got} == {
        (i.id, i.type, i.iblock_id, i.parent_id) for i in items
    }
    assert by_id[163] == ListedItem(163, V, 4, 162, by_id[163].picture_ids)
    for item in items:  # the listing shows exactly the item's image ids
        assert set(by_id[item.id].picture_ids) == {
            img.image_id for img in images if img.product_id == item.id
        }
    # 2 small lists; one batch: the first page of each catalog (69 and 6 items); one batch: the one page left.
    stats = portal.stats
    assert stats.requests == 4
    assert stats.by_method == {"catalog.catalog.list": 1, "catalog.productProperty.list": 1, "batch": 2}
    assert stats.batch_commands == {"catalog.product.list": 3}


@pytest.mark.parametrize("chain", [50, 7])
def test_a_warm_listing_takes_the_fewest_requests(big: tuple[list, list], chain: int) -> None:
    items, images = big
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        listing = CatalogListing(client_for(portal), chain_length=chain)
        got = listed(listing)
        assert listing.complete and by_catalog(got) == expected(items)
        # 3020 and 100 items: first pages of both, then 60 + 2 chained pages (each catalog's last one short).
        chained = 3020 // 50 + 100 // 50
        stats = portal.stats
        assert stats.batch_commands == {"catalog.product.list": 2 + chained}
        assert stats.by_method["batch"] == 1 + math.ceil(chained / chain)
        assert stats.requests == 2 + 1 + math.ceil(chained / chain)
        if chain == 50:
            assert stats.requests == 5 <= math.ceil(len(items) / 2500) + 4
        assert portal.server_errors == []


def test_iter_items_one_catalog_ends_at_the_short_page() -> None:
    items, images = make_store_catalog(149, images_per_item=0)  # pages of 50, 50, 49
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        pages = list(iter_items(client_for(portal), P, 120, chain_length=50))
        assert [len(p) for p in pages] == [50, 50, 49]
        assert [i.id for p in pages for i in p] == list(range(100, 249))
        assert portal.stats.batch_commands == {"catalog.product.list": 3} and portal.stats.requests == 2


def test_a_chain_that_meets_an_early_short_page_uses_nothing_after_it(big: tuple[list, list]) -> None:
    items, images = big
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        listing = CatalogListing(client_for(portal), catalogs=[Catalog(P)], properties={P: 120})
        pages = listing.pages()
        first = next(pages)
        assert [i.id for i in first] == list(range(100, 150))
        # Deleted meanwhile: the chain sized from total=3020 meets a short page at 1000..1049 and the rest
        # of the chain re-reads from the start, which must not be used.
        for item_id in range(1040, 3220):
            portal.delete_item(item_id)
        rest = [i.id for page in pages for i in page]
        assert rest == list(range(150, 1040)) and listing.complete
        assert listing.items == 940 and listing.duplicates == 0
        # p0 (first page) + 50 chained commands; the portal ran them all (wasted work, not used).
        assert portal.stats.batch_commands == {"catalog.product.list": 51}


def failing(portal: Portal, monkeypatch: pytest.MonkeyPatch, calls: set[int] | None, error: ApiError) -> None:
    """The emulator's catalog.product.list answers ``error`` at these executions (counted from 1; None: all)."""
    real = portal._m_products
    seen = [0]

    def products(params: dict, cred: object) -> object:
        seen[0] += 1
        if calls is None or seen[0] in calls:
            raise error
        return real(params, cred)  # type: ignore[arg-type]

    monkeypatch.setattr(portal, "_m_products", products)


def test_an_error_inside_a_chain_makes_the_listing_incomplete(
    big: tuple[list, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    items, images = big
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        listing = CatalogListing(client_for(portal))
        # First pages of both catalogs run, then 10 chained pages; the 11th answers error 0.
        failing(portal, monkeypatch, {13}, ApiError(400, 0, "Internal error"))
        got: list[ListedItem] = []
        with pytest.raises(ListingIncomplete) as info:
            for page in listing.pages():
                got += page
        assert info.value.message == (
            "the catalog listing is incomplete (catalog 23: catalog.product.list of catalog 23 after id 649: "
            "0: Internal error)"
        )
        # What came before the error is used, nothing after it; the other catalog is listed to its end.
        assert by_catalog(got) == {P: list(range(100, 650)), V: expected(items)[V]}
        assert not listing.complete and info.value.listed == listing.items == 550 + 100
        # First pages; 23's chain of 50 stopped by halt=1 at its 11th command; 25's chain of 2.
        assert portal.stats.by_method["batch"] == 3
        assert portal.stats.batch_commands == {"catalog.product.list": 2 + 11 + 2}


def test_a_500_inside_the_batch_is_retried_and_the_chain_continues(
    big: tuple[list, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    items, images = big
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        real = portal._m_products
        seen = [0]

        def flaky(params: dict, cred: object) -> object:
            seen[0] += 1
            if seen[0] in (20, 21, 40):  # two in a row: once mid-chain, once as a batch's first command
                raise ApiError(500, "INTERNAL_SERVER_ERROR", "Internal server error")
            return real(params, cred)  # type: ignore[arg-type]

        monkeypatch.setattr(portal, "_m_products", flaky)
        listing = CatalogListing(client_for(portal))
        got = listed(listing)
        assert listing.complete and by_catalog(got) == expected(items)
        assert listing.duplicates == 0


def test_a_command_that_keeps_failing_ends_the_listing_incomplete(
    small: tuple[list, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    items, images = small
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        failing(portal, monkeypatch, None, ApiError(500, "INTERNAL_SERVER_ERROR", "Internal server error"))
        listing = CatalogListing(client_for(portal))
        with pytest.raises(ListingIncomplete) as info:
            listed(listing)
        assert info.value.message == (
            "the catalog listing is incomplete (catalog 23: catalog.product.list of catalog 23 after id 0: "
            "the portal kept failing this command; catalog 25: catalog.product.list of catalog 25 after id 0: "
            "the portal kept failing this command)"
        )
        assert not listing.complete and listing.items == 0
        # 4 attempts of the first batch (both first pages), then each catalog's head alone... no: both
        # cursors fail in the first batch's last attempt.
        assert portal.stats.by_method["batch"] == 4 + 4


def test_a_page_out_of_id_order_is_incomplete(
    small: tuple[list, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    items, images = small
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        real = portal._m_products

        def shuffled(params: dict, cred: object) -> object:
            result, total, following = real(params, cred)  # type: ignore[arg-type,misc]
            result["products"].reverse()
            return result, total, following

        monkeypatch.setattr(portal, "_m_products", shuffled)
        with pytest.raises(
            ListingIncomplete, match="catalog 23: .* the items do not come in ascending id order"
        ):
            list(iter_items(client_for(portal), P, 120))


def test_an_id_listed_by_two_catalogs_comes_once(small: tuple[list, list]) -> None:
    items, images = small
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        listing = CatalogListing(client_for(portal), catalogs=[Catalog(P), Catalog(V, P), Catalog(P)])
        got = listed(listing)
        assert len(got) == len({i.id for i in got}) == 75 and listing.duplicates == 69 and listing.complete


def test_items_added_during_the_listing_are_followed_to_the_end() -> None:
    items, images = make_store_catalog(120, images_per_item=0)
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as portal:
        listing = CatalogListing(client_for(portal), catalogs=[Catalog(P)], properties={})
        pages = listing.pages()
        assert len(next(pages)) == 50  # total 120: 2 pages to chain
        for n in range(100):
            portal.add_item(CatalogItem(1000 + n))
        rest = [i.id for page in pages for i in page]
        assert rest == [*range(150, 220), *range(1000, 1100)] and listing.complete
        # first page; a chain of 2 (both full now); a first page again (total 80 left); a chain of 1.
        assert portal.stats.batch_commands == {"catalog.product.list": 1 + 2 + 1 + 1}


# ------------------------------------------------------------------ operating-time pacing


def test_pacing_avoids_the_429_that_a_naive_client_gets() -> None:
    # 1200 items: the first pages of both catalogs (25 is empty) and 24 chained ones, 0.2 s of operating time
    # each (plus the real processing): about 5.5 s against a budget of 2 s per second-long window.
    items, images = make_store_catalog(1200, images_per_item=0)
    budget = {"operating_limit": 2.0, "method_cost": {"catalog.product.list": 0.2}, "operating_window": 1.0}
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000, **budget) as portal:  # type: ignore[arg-type]
        naive = CatalogListing(client_for(portal))  # the default budget (480 s) never paces here
        assert len(listed(naive)) == 1200 and naive.complete
        assert portal.stats.rejected_429 > 0
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000, **budget) as portal:  # type: ignore[arg-type]
        client = client_for(portal, operating_budget=2.0, operating_window=1.0)
        began = time.monotonic()
        paced = CatalogListing(client)
        assert len(listed(paced)) == 1200 and paced.complete
        elapsed = time.monotonic() - began
        assert portal.stats.rejected_429 == 0 and client.retries == 0
        assert portal.stats.batch_commands == {"catalog.product.list": 2 + 24}  # 25 is empty
        # Paced, not crawling: within 1.5 times what the budget allows (cost / budget * window); the
        # threshold (0.9) and the headroom for costlier commands (1.25) account for most of it.
        spent = client.operating.spent["catalog.product.list"]
        assert spent == pytest.approx(26 * 0.2, rel=0.25)
        assert client.operating.waited > 0 and elapsed < 1.5 * spent / 2.0 * 1.0


# ------------------------------------------------------------------ planning


A = ListedItem(1, 23, 1, None, (5, 6))
EMPTY = ListedItem(2, 23, 1, None, ())


@pytest.mark.parametrize(
    ("item", "recorded", "deep", "needs_call"),
    [
        (A, {1: {5, 6}}, False, False),  # the same pictures, all backed up
        (A, {1: {5, 6}}, True, True),  # --deep asks anyway
        (A, {1: {5}}, False, True),  # a new picture (or one not backed up: recorded holds status ok only)
        (A, {1: {5, 6, 7}}, False, True),  # a picture deleted upstream
        (A, {1: {5, 7}}, False, True),  # a picture replaced (a new image id)
        (A, {}, False, True),  # never backed up
        (EMPTY, {}, False, False),  # no pictures, nothing recorded: nothing to do
        (EMPTY, {2: {9}}, False, True),  # its pictures are gone: the call confirms and they become missing
        (EMPTY, {}, True, True),
    ],
)
def test_plan_items(item: ListedItem, recorded: dict[int, set[int]], deep: bool, needs_call: bool) -> None:
    calls, unchanged = plan_items([item], recorded, deep)
    assert (calls, unchanged) == (([item.id], []) if needs_call else ([], [item]))


def test_plan_keeps_the_order_and_counts_id_mismatches() -> None:
    items = [ListedItem(n, 23, 1, None, (n * 10,)) for n in range(1, 6)]
    recorded = {1: {10}, 2: {999}, 3: {30}, 4: {7001}}
    assert plan_items(items, recorded, deep=False) == ([2, 4, 5], [items[0], items[2]])
    assert id_mismatches(items, recorded) == (4, 2)


def test_listing_ids_that_are_not_image_ids_are_detected(small: tuple[list, list]) -> None:
    items, images = small
    recorded: dict[int, set[int]] = {}
    for img in images:
        recorded.setdefault(img.product_id, set()).add(img.image_id)
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000, listing_ids_match=False) as portal:
        got = listed(CatalogListing(client_for(portal)))
    calls, unchanged = plan_items(got, recorded, deep=False)
    assert (len(calls), unchanged) == (75, [])  # correct, only slower: every item costs a call
    assert id_mismatches(got, recorded) == (75, 75)
