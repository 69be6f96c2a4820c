"""The emulator's whole catalog (catalogs, items, typed lists, properties, chained batches, operating
time), spoken to over real HTTP with requests only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from imgsync.emulator import CatalogImage, CatalogItem, Portal, make_catalog, make_store_catalog

P, V = 23, 25  # the product and the variation catalog
SELECT = ["id", "iblockId", "type", "name", "detailPicture", "previewPicture", "property120", "property121"]


@pytest.fixture
def store() -> tuple[list[CatalogItem], list[CatalogImage]]:
    # 60 simple products, 2 sets, 3 parents with 2 variations each, 4 services: ids 100..177.
    return make_store_catalog(
        60,
        sets=2,
        parents=3,
        variations_per_parent=2,
        services=4,
        images_per_item=3,
        min_size=200,
        max_size=600,
    )


@pytest.fixture
def portal(store: tuple[list[CatalogItem], list[CatalogImage]]) -> Iterator[Portal]:
    items, images = store
    with Portal(images, items=items, rate_limit=1000.0, burst=10_000) as p:
        yield p
        assert p.server_errors == []


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def call(s: requests.Session, portal: Portal, method: str, **params: object) -> requests.Response:
    return s.post(portal.webhook_url + method, json=params, timeout=5)


def ok(s: requests.Session, portal: Portal, method: str, **params: object) -> dict:
    r = call(s, portal, method, **params)
    assert r.status_code == 200, r.text
    return r.json()


def batch(s: requests.Session, portal: Portal, cmd: object) -> dict:
    r = s.post(portal.webhook_url + "batch", json={"halt": 0, "cmd": cmd}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def products(s: requests.Session, portal: Portal, **params: object) -> dict:
    params.setdefault("select", ["id", "iblockId"])
    return ok(s, portal, "catalog.product.list", **params)


def ids(body: dict, key: str = "products") -> list[int]:
    return [row["id"] for row in body["result"][key]]


# ------------------------------------------------------------------ catalogs and items


def test_make_store_catalog(store: tuple[list[CatalogItem], list[CatalogImage]]) -> None:
    items, images = store
    assert [i.type for i in items] == [1] * 60 + [2] * 2 + [3, 4, 4] * 3 + [7] * 4
    assert {i.iblock_id for i in items if i.type == 4} == {V} and {
        i.iblock_id for i in items if i.type != 4
    } == {P}
    assert [i.parent_id for i in items[62:65]] == [None, 162, 162]
    assert len(images) == 3 * len(items) and {img.product_id for img in images} == {i.id for i in items}
    assert [img.type for img in images[:3]] == ["DETAIL_PICTURE", "PREVIEW_PICTURE", "MORE_PHOTO"]
    assert make_store_catalog(2, parents=1, variations_per_parent=0)[0][2].type == 6  # an empty parent
    assert make_store_catalog(3, seed=4) == make_store_catalog(3, seed=4)


def test_catalog_list(portal: Portal, session: requests.Session) -> None:
    body = ok(session, portal, "catalog.catalog.list")
    assert body["total"] == 2
    products_, offers = body["result"]["catalogs"]
    assert (
        products_["id"],
        products_["iblockId"],
        products_["productIblockId"],
        products_["skuPropertyId"],
    ) == (
        P,
        P,
        None,
        None,
    )
    assert (offers["iblockId"], offers["productIblockId"], offers["skuPropertyId"]) == (V, P, 97)
    assert offers["iblockTypeId"] == "CRM_PRODUCT_CATALOG" and offers["lid"] == "s1"
    only = ok(session, portal, "catalog.catalog.list", select=["id", "productIblockId"], filter={">id": P})
    assert only["result"] == {"catalogs": [{"id": V, "productIblockId": P}]}
    portal.admin = False
    denied = call(session, portal, "catalog.catalog.list")
    assert (denied.status_code, denied.json()["error"]) == (400, 200040300010)


def test_product_list_paging(portal: Portal, session: requests.Session) -> None:
    # The product catalog holds the 60 products, 2 sets, 3 parents and 4 services: 69 items.
    first = products(session, portal, filter={"iblockId": P})
    assert (first["total"], first["next"], len(ids(first))) == (69, 50, 50)
    assert ids(first) == list(range(100, 150))
    second = products(session, portal, filter={"iblockId": P}, start=50)
    assert (second["total"], "next" in second) == (69, False)
    assert ids(second) == [*range(150, 162), 162, 165, 168, *range(171, 175)]
    fast = products(session, portal, filter={"iblockId": P, ">id": 149}, order={"id": "asc"}, start=-1)
    assert "total" not in fast and "next" not in fast and ids(fast) == ids(second)
    assert ids(products(session, portal, filter={"iblockId": P, ">=id": 173}, start=-1)) == [173, 174]
    desc = products(session, portal, filter={"iblockId": P}, order={"id": "desc"})
    assert ids(desc)[:3] == [174, 173, 172]
    by_ids = products(session, portal, filter={"iblockId": P, "id": [101, 105, 999]})
    assert (ids(by_ids), by_ids["total"]) == ([101, 105], 2)
    assert ids(products(session, portal, filter={"iblockId": P, "id": 107})) == [107]
    typed = products(
        session, portal, filter={"iblockId": P, "type": [2, 7]}, select=["id", "iblockId", "type"]
    )
    assert [(r["id"], r["type"]) for r in typed["result"]["products"]] == [(160, 2), (161, 2)] + [
        (i, 7) for i in range(171, 175)
    ]
    variations = products(session, portal, filter={"iblockId": V})
    assert ids(variations) == [163, 164, 166, 167, 169, 170]
    assert products(session, portal, filter={"iblockId": 99})["result"] == {"products": []}


def test_product_list_form_and_batch_syntax(portal: Portal, session: requests.Session) -> None:
    query = "select[]=id&select[]=iblockId&filter[iblockId]=23&filter[>id]=170&order[id]=asc&start=-1"
    r = session.post(portal.webhook_url + "catalog.product.list", data=query)
    assert ids(r.json()) == [171, 172, 173, 174]
    body = batch(session, portal, {"a": "catalog.product.list?" + query})
    assert [p["id"] for p in body["result"]["result"]["a"]["products"]] == [171, 172, 173, 174]


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"filter": {"iblockId": P}}, "Required select fields: id, iblockId"),
        ({"select": ["id"], "filter": {"iblockId": P}}, "Required select fields: id, iblockId"),
        ({"select": ["id", "iblockId"]}, "Required filter fields: iblockId"),
        ({"select": ["id", "iblockId"], "filter": {">id": 3}}, "Required filter fields: iblockId"),
        ({"select": ["id", "iblockId"], "filter": {"iblockId": P, "@id": [1]}}, "Unknown filter field: @id"),
    ],
)
def test_product_list_required_fields(
    portal: Portal, session: requests.Session, params: dict, text: str
) -> None:
    for method in ("catalog.product.list", "catalog.product.offer.list"):
        r = call(session, portal, method, **params)
        assert (r.status_code, r.json()) == (400, {"error": 0, "error_description": text})


def test_listing_shape_and_picture_ids(portal: Portal, session: requests.Session) -> None:
    body = products(session, portal, filter={"iblockId": P, "id": 100}, select=SELECT)
    (row,) = body["result"]["products"]
    assert set(row) == {"id", "iblockId", "type", "name", "detailPicture", "previewPicture", "property120"}
    assert (row["id"], row["iblockId"], row["type"], row["name"]) == (100, P, 1, "Product 100")
    images = ok(session, portal, "catalog.productImage.list", productId=100)["result"]["productImages"]
    by_type = {i["type"]: i["id"] for i in images}
    assert row["detailPicture"] == {
        "id": str(by_type["DETAIL_PICTURE"]),
        "url": f"/rest/catalog.product.download?fields%5BfieldName%5D=detailPicture&fields%5BfileId%5D={by_type['DETAIL_PICTURE']}&fields%5BproductId%5D=100",
        "urlMachine": row["detailPicture"]["url"],
    }
    assert row["previewPicture"]["id"] == str(by_type["PREVIEW_PICTURE"])
    (more,) = row["property120"]
    assert more["value"]["id"] == str(by_type["MORE_PHOTO"]) and more["valueId"].isdigit()
    assert "fieldName%5D=property120" in more["value"]["url"]

    # Without pictures, and after changes, the listing follows the images.
    portal.add_item(CatalogItem(500))
    bare = products(session, portal, filter={"iblockId": P, "id": 500}, select=SELECT)["result"]["products"][
        0
    ]
    assert (bare["detailPicture"], bare["previewPicture"], bare["property120"]) == (None, None, [])
    old = by_type["DETAIL_PICTURE"]
    new = portal.replace_picture(100, old, content=b"v2")
    added = portal.add_picture(100, "MORE_PHOTO", content=b"more")
    portal.delete_picture(100, by_type["PREVIEW_PICTURE"])
    row = products(session, portal, filter={"iblockId": P, "id": 100}, select=SELECT)["result"]["products"][0]
    assert new.image_id != old and row["detailPicture"]["id"] == str(new.image_id)
    assert row["previewPicture"] is None
    assert [v["value"]["id"] for v in row["property120"]] == [str(by_type["MORE_PHOTO"]), str(added.image_id)]
    listed = {
        i["id"]
        for i in ok(session, portal, "catalog.productImage.list", productId=100)["result"]["productImages"]
    }
    assert listed == {new.image_id, by_type["MORE_PHOTO"], added.image_id}
    portal.delete_item(500)
    assert products(session, portal, filter={"iblockId": P, "id": 500})["total"] == 0


def test_listing_ids_can_differ_from_image_ids(store: tuple[list[CatalogItem], list[CatalogImage]]) -> None:
    items, images = store
    with Portal(images, items=items, listing_ids_match=False) as portal, requests.Session() as s:
        row = products(s, portal, filter={"iblockId": P, "id": 100}, select=SELECT)["result"]["products"][0]
        image_ids = {str(i.image_id) for i in images if i.product_id == 100}
        shown = {
            row["detailPicture"]["id"],
            row["previewPicture"]["id"],
            row["property120"][0]["value"]["id"],
        }
        assert len(shown) == 3 and shown.isdisjoint(image_ids)


def test_old_catalogs_become_simple_products(session: requests.Session) -> None:
    with Portal(make_catalog(products=3, images_per_product=3)) as portal:
        body = products(
            session,
            portal,
            filter={"iblockId": P},
            select=["id", "iblockId", "type", "detailPicture", "property120"],
        )
        assert [(r["id"], r["type"]) for r in body["result"]["products"]] == [(100, 1), (101, 1), (102, 1)]
        # make_catalog alternates DETAIL_PICTURE/MORE_PHOTO: the second DETAIL_PICTURE is listed in MORE_PHOTO.
        first = body["result"]["products"][0]
        assert first["detailPicture"]["id"] == "1000"
        assert [v["value"]["id"] for v in first["property120"]] == ["1001", "1002"]


def test_typed_lists(portal: Portal, session: requests.Session) -> None:
    base = {"select": ["id", "iblockId", "type", "parentId"]}
    units = ok(session, portal, "catalog.product.sku.list", **base, filter={"iblockId": P})
    assert [(u["id"], u["type"]) for u in units["result"]["units"]] == [(162, 3), (165, 3), (168, 3)]
    assert units["total"] == 3
    offers = ok(session, portal, "catalog.product.offer.list", **base, filter={"iblockId": V})
    assert [(o["id"], o["type"], o["parentId"]["value"]) for o in offers["result"]["offers"]] == [
        (163, 4, "162"),
        (164, 4, "162"),
        (166, 4, "165"),
        (167, 4, "165"),
        (169, 4, "168"),
        (170, 4, "168"),
    ]
    assert offers["result"]["offers"][0]["parentId"]["valueId"].isdigit()
    services = ok(session, portal, "catalog.product.service.list", **base, filter={"iblockId": P, ">id": 172})
    assert ids(services, "services") == [173, 174]
    # The forced type filter holds whatever the caller filters on.
    forced = ok(session, portal, "catalog.product.service.list", **base, filter={"iblockId": P, "type": 1})
    assert forced["result"] == {"services": []}
    portal.admin = False
    for method in ("catalog.product.sku.list", "catalog.product.offer.list", "catalog.product.service.list"):
        assert call(session, portal, method, **base, filter={"iblockId": P}).json()["error"] == 200040300010
    assert products(session, portal, filter={"iblockId": P})["total"] == 69  # not admin-only


def test_property_list(portal: Portal, session: requests.Session) -> None:
    body = ok(session, portal, "catalog.productProperty.list", filter={"code": "MORE_PHOTO"})
    props = body["result"]["productProperties"]
    assert [(p["id"], p["iblockId"], p["propertyType"], p["multiple"]) for p in props] == [
        (120, P, "F", "Y"),
        (121, V, "F", "Y"),
    ]
    assert body["total"] == 2 and props[0]["code"] == "MORE_PHOTO"
    one = ok(
        session,
        portal,
        "catalog.productProperty.list",
        filter={"code": "MORE_PHOTO", "iblockId": V},
        start=-1,
    )
    assert [p["id"] for p in one["result"]["productProperties"]] == [121] and "total" not in one
    link = ok(session, portal, "catalog.productProperty.list", filter={"id": 97})["result"][
        "productProperties"
    ][0]
    assert (link["code"], link["propertyType"], link["linkIblockId"]) == ("CML2_LINK", "E", P)


# ------------------------------------------------------------------ batch


def chain(pages: int, iblock: int = P) -> dict[str, str]:
    base = (
        f"catalog.product.list?select[]=id&select[]=iblockId&filter[iblockId]={iblock}&order[id]=asc&start=-1"
    )
    cmd = {"p0": base}
    for n in range(1, pages):
        cmd[f"p{n}"] = base + f"&filter[>id]=$result[p{n - 1}][products][49][id]"
    return cmd


def test_batch_chain_reads_every_page(store: tuple[list[CatalogItem], list[CatalogImage]]) -> None:
    items, images = make_store_catalog(149, images_per_item=0)  # 149 products: pages of 50, 50, 49
    with Portal(images, items=items) as portal, requests.Session() as s:
        body = batch(s, portal, chain(3))["result"]
        got = [p["id"] for key in ("p0", "p1", "p2") for p in body["result"][key]["products"]]
        assert got == list(range(100, 249))
        assert body["result_total"] == [] and body["result_next"] == [] and body["result_error"] == []
        # A chain longer than the catalog: the reference behind the short page resolves to nothing, the
        # filter falls away, and the page after it reads from the start again.
        long = batch(s, portal, chain(5))["result"]["result"]
        assert [len(long[k]["products"]) for k in ("p0", "p1", "p2", "p3", "p4")] == [50, 50, 49, 50, 50]
        assert long["p3"]["products"][0]["id"] == 100  # a client that did not stop at p2 sees duplicates
        assert portal.stats.batch_commands["catalog.product.list"] == 8


def test_batch_result_total_and_next(portal: Portal, session: requests.Session) -> None:
    q = "select[]=id&select[]=iblockId&filter[iblockId]=23"
    body = batch(
        session,
        portal,
        {
            "a": f"catalog.product.list?{q}",
            "b": f"catalog.product.list?{q}&start=50",
            "c": f"catalog.product.list?{q}&start=-1",
            "i": "catalog.productImage.list?productId=100",
            "g": "catalog.productImage.get?productId=100&id=1000",
        },
    )["result"]
    assert body["result_total"] == {"a": 69, "b": 69, "i": 3}
    assert body["result_next"] == {"a": 50}
    times = body["result_time"]
    assert set(times) == {"a", "b", "c", "i", "g"}
    assert all({"operating", "operating_reset_at"} <= set(t) for t in times.values())
    # Each command's operating is its own method's running total.
    assert times["c"]["operating"] >= times["b"]["operating"] >= times["a"]["operating"] > 0


# ------------------------------------------------------------------ paged productImage.list


def test_product_image_list_pages_when_asked(session: requests.Session) -> None:
    items, images = make_store_catalog(1, images_per_item=7, min_size=100, max_size=200)
    with Portal(images, items=items) as portal:
        whole = ok(session, portal, "catalog.productImage.list", productId=100)
        assert (len(whole["result"]["productImages"]), whole["total"], "next" in whole) == (7, 7, False)
        portal.image_page_size = 3
        seen, start = [], 0
        while True:
            page = ok(session, portal, "catalog.productImage.list", productId=100, start=start, select=["id"])
            assert page["total"] == 7
            seen += [i["id"] for i in page["result"]["productImages"]]
            if "next" not in page:
                break
            start = page["next"]
        assert seen == list(range(1000, 1007))
        first = ok(session, portal, "catalog.productImage.list", productId=100)
        assert (len(first["result"]["productImages"]), first["next"]) == (3, 3)
        body = batch(session, portal, {"x": "catalog.productImage.list?productId=100&start=3"})["result"]
        assert (body["result_next"], body["result_total"]) == ({"x": 6}, {"x": 7})


# ------------------------------------------------------------------ operating time


def test_operating_time_budget_blocks_and_lifts(store: tuple[list[CatalogItem], list[CatalogImage]]) -> None:
    items, images = store
    with (
        Portal(
            images,
            items=items,
            operating_limit=1.0,
            method_cost={"catalog.product.list": 0.3},
            operating_window=1.0,
        ) as portal,
        requests.Session() as s,
    ):
        seen = []
        for _ in range(4):  # 0.3, 0.6, 0.9, 1.2: the fourth call puts it over, and still runs
            body = products(s, portal, filter={"iblockId": P}, start=-1)
            seen.append(body["time"]["operating"])
        assert seen == pytest.approx([0.3, 0.6, 0.9, 1.2], abs=0.05)
        r = call(s, portal, "catalog.product.list", select=["id", "iblockId"], filter={"iblockId": P})
        assert r.status_code == 429
        blocked = r.json()
        assert blocked["error"] == "OPERATION_TIME_LIMIT"
        assert blocked["operating_reset_at"] <= time.time() + 2
        # Other methods keep working; inside a batch the blocked method fails command by command.
        assert ok(s, portal, "catalog.productImage.list", productId=100)["total"] == 3
        inner = batch(s, portal, {"l": chain(1)["p0"], "i": "catalog.productImage.list?productId=100"})[
            "result"
        ]
        assert inner["result_error"]["l"]["error"] == "OPERATION_TIME_LIMIT" and set(inner["result"]) == {"i"}
        assert portal.stats.rejected_429 == 2
        time.sleep(max(0.0, blocked["operating_reset_at"] - time.time()) + 0.1)
        assert products(s, portal, filter={"iblockId": P}, start=-1)["time"]["operating"] <= 0.65


def test_a_client_that_reads_operating_avoids_the_429(
    store: tuple[list[CatalogItem], list[CatalogImage]],
) -> None:
    items, images = store
    kwargs = {"items": items, "operating_limit": 0.5, "cost_per_call": 0.1, "operating_window": 1.0}
    with Portal(images, **kwargs) as portal, requests.Session() as s:  # type: ignore[arg-type]
        statuses = [
            call(s, portal, "catalog.productImage.list", productId=100).status_code for _ in range(10)
        ]
        assert statuses.count(429) > 0  # the naive client
    with Portal(images, **kwargs) as portal, requests.Session() as s:  # type: ignore[arg-type]
        for _ in range(10):
            r = call(s, portal, "catalog.productImage.list", productId=100)
            assert r.status_code == 200
            timing = r.json()["time"]
            if timing["operating"] >= 0.4:  # close to the limit: wait for the oldest basket to drop out
                time.sleep(max(0.0, timing["operating_reset_at"] - time.time()) + 0.05)
        assert portal.stats.rejected_429 == 0


def test_module_cli_serves_a_whole_catalog() -> None:
    args = [sys.executable, "-m", "imgsync.emulator", "--products", "2", "--parents", "1", "--services", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        r = requests.post(
            info["webhook_url"] + "catalog.product.offer.list",
            json={"select": ["id", "iblockId"], "filter": {"iblockId": V}},
            timeout=5,
        )
        assert [o["id"] for o in r.json()["result"]["offers"]] == [103, 104]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
