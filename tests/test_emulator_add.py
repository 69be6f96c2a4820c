"""The emulator's writes (``catalog.productImage.add`` / ``.delete``), their faults, the request size limit
and the other readings of the notes' open points, spoken to over real HTTP with requests only."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
import requests

from imgsync.emulator import CatalogImage, Portal, make_catalog
from imgsync.emulator.writes import php_base64_decode, sniff_image

ADD = "catalog.productImage.add"
#: A PNG signature, then bytes whose base64 is full of "+" and "/" (and a "=" pad at the end).
PLUS = b"\x89PNG\r\n\x1a\n" + b"\xfb\xef\xbe\xff\xff" * 6 + b"\x01\x02"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def catalog() -> list[CatalogImage]:
    return make_catalog(products=3, images_per_product=3, min_size=300, max_size=900, seed=11)


@pytest.fixture
def portal(catalog: list[CatalogImage]) -> Iterator[Portal]:
    with Portal(catalog, rate_limit=1000.0, burst=10_000) as p:
        yield p
        assert p.server_errors == []


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture
def png(catalog: list[CatalogImage]) -> bytes:
    return next(i.content for i in catalog if i.name.endswith(".png"))


def call(s: requests.Session, portal: Portal, method: str, **params: object) -> requests.Response:
    return s.post(portal.webhook_url + method, json=params, timeout=5)


def ok(s: requests.Session, portal: Portal, method: str, **params: object) -> dict:
    r = call(s, portal, method, **params)
    assert r.status_code == 200, r.text
    return r.json()


def add(
    s: requests.Session, portal: Portal, pid: int, data: bytes, name: str = "a.png", **fields: str
) -> requests.Response:
    return call(s, portal, ADD, fields={"productId": pid, **fields}, fileContent=[name, b64(data)])


def added(
    s: requests.Session, portal: Portal, pid: int, data: bytes, name: str = "a.png", **fields: str
) -> dict:
    r = add(s, portal, pid, data, name, **fields)
    assert r.status_code == 200, r.text
    image: dict = r.json()["result"]["productImage"]
    return image


def download(s: requests.Session, portal: Portal, url: str) -> requests.Response:
    headers = {"User-Agent": "t/1", "Accept-Language": "en", "Referer": portal.url + "/"}
    return s.get(url, headers=headers, timeout=5)


def fetch(s: requests.Session, portal: Portal, pid: int, iid: int) -> bytes:
    image = ok(s, portal, "catalog.productImage.get", productId=pid, id=iid)["result"]["productImage"]
    r = download(s, portal, image["downloadUrl"])
    assert r.status_code == 200, r.text
    return r.content


def batch(s: requests.Session, portal: Portal, cmd: dict[str, str]) -> dict:
    result: dict = ok(s, portal, "batch", halt=0, cmd=cmd)["result"]
    return result


def add_command(pid: int, name: str, data: bytes, kind: str = "MORE_PHOTO") -> str:
    """A batch add command, every value percent-encoded (what the emulator needs)."""
    query = {
        "fields[productId]": pid,
        "fields[type]": kind,
        "fileContent[0]": name,
        "fileContent[1]": b64(data),
    }
    return f"{ADD}?{urlencode(query, quote_via=quote)}"


def listing_row(s: requests.Session, portal: Portal, pid: int) -> dict:
    select = ["id", "iblockId", "detailPicture", "previewPicture", "property120"]
    rows = ok(s, portal, "catalog.product.list", select=select, filter={"iblockId": 23, "id": pid})
    [row] = rows["result"]["products"]
    return dict(row)


# ------------------------------------------------------------------ add


def test_add_answers_like_get_and_the_bytes_come_back(
    portal: Portal, session: requests.Session, png: bytes
) -> None:
    before = {i.image_id for i in portal.images()}
    r = add(session, portal, 101, png, "back.png")
    assert r.status_code == 200, r.text
    body = r.json()
    image = body["result"]["productImage"]
    assert sorted(image) == ["createTime", "detailUrl", "downloadUrl", "id", "name", "productId", "type"]
    assert (image["name"], image["productId"], image["type"]) == ("back.png", 101, "MORE_PHOTO")
    assert image["id"] > max(before)
    assert image["detailUrl"].endswith("/back.png")
    assert {"operating", "operating_reset_at", "processing"} <= set(body["time"])
    assert sha(download(session, portal, image["downloadUrl"]).content) == sha(png)
    got = ok(session, portal, "catalog.productImage.get", productId=101, id=image["id"])
    assert {k: v for k, v in got["result"]["productImage"].items() if k != "downloadUrl"} == {
        k: v for k, v in image.items() if k != "downloadUrl"
    }
    listed = ok(session, portal, "catalog.productImage.list", productId=101)["result"]["productImages"]
    assert listed[-1]["id"] == image["id"]
    more = listing_row(session, portal, 101)["property120"]
    assert more[-1]["value"]["id"] == str(image["id"])
    assert portal.gallery(101)[-1] == (image["id"], "MORE_PHOTO", sha(png))
    stats = portal.stats
    assert (stats.adds, stats.add_bytes, stats.by_method[ADD]) == (1, len(png), 1)


def test_add_form_encoded_and_by_oauth(portal: Portal, session: requests.Session, png: bytes) -> None:
    form = {"fields[productId]": "100", "fields[type]": "MORE_PHOTO", "fileContent[0]": "f.png"}
    form["fileContent[1]"] = b64(PLUS)
    r = session.post(portal.webhook_url + ADD, data=form, timeout=5)
    assert r.status_code == 200, r.text
    assert fetch(session, portal, 100, r.json()["result"]["productImage"]["id"]) == PLUS
    access, _ = portal.issue_tokens()
    r = session.post(
        f"{portal.url}/rest/{ADD}.json",
        json={"fields": {"productId": 100}, "fileContent": ["o.png", b64(png)], "auth": access},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    assert "auth=" in r.json()["result"]["productImage"]["downloadUrl"]


def test_batch_adds_with_percent_encoded_base64(
    portal: Portal, session: requests.Session, png: bytes
) -> None:
    assert "+" in b64(PLUS) and "/" in b64(PLUS) and b64(PLUS).endswith("=")
    result = batch(
        session, portal, {"a": add_command(100, "a.png", PLUS), "b": add_command(102, "b.png", png)}
    )
    assert result["result_error"] == []
    for key, pid, data in (("a", 100, PLUS), ("b", 102, png)):
        image = result["result"][key]["productImage"]
        assert (image["productId"], image["type"]) == (pid, "MORE_PHOTO")
        assert sha(fetch(session, portal, pid, image["id"])) == sha(data)
    assert result["result_time"]["b"]["operating"] >= 2 * portal.add_operating_s
    assert portal.stats.adds == 2 and portal.stats.batch_commands[ADD] == 2


def test_batch_add_with_an_unencoded_plus_stores_other_bytes(
    portal: Portal, session: requests.Session
) -> None:
    # Brackets and "/" and "=" may stay as they are; a "+" left as it is reads as a space, as in PHP.
    raw = f"{ADD}?fields[productId]=100&fileContent[0]=p.png&fileContent[1]={b64(PLUS)}"
    result = batch(session, portal, {"p": raw})
    image = result["result"]["p"]["productImage"]
    stored = fetch(session, portal, 100, image["id"])
    assert stored != PLUS
    assert stored == php_base64_decode(b64(PLUS).replace("+", " "))


def test_more_photo_appends_the_same_bytes_twice(
    portal: Portal, session: requests.Session, png: bytes
) -> None:
    first = added(session, portal, 101, png)
    second = added(session, portal, 101, png)
    assert first["id"] != second["id"]
    assert portal.gallery(101)[-2:] == [
        (first["id"], "MORE_PHOTO", sha(png)),
        (second["id"], "MORE_PHOTO", sha(png)),
    ]
    values = [v["value"]["id"] for v in listing_row(session, portal, 101)["property120"]]
    assert values[-2:] == [str(first["id"]), str(second["id"])]


@pytest.mark.parametrize("kind", ["MORE_PHOTOS", "more_photo", "DETAIL", ""])
def test_other_types_land_in_more_photo(
    portal: Portal, session: requests.Session, png: bytes, kind: str
) -> None:
    image = added(session, portal, 100, png, type=kind)
    assert image["type"] == "MORE_PHOTO"
    assert len(portal.gallery(100)) == 4


@pytest.mark.parametrize(
    ("kind", "field"), [("DETAIL_PICTURE", "detailPicture"), ("PREVIEW_PICTURE", "previewPicture")]
)
def test_a_slot_add_replaces_the_old_picture(
    portal: Portal, session: requests.Session, png: bytes, kind: str, field: str
) -> None:
    portal.add_product(200)
    first = added(session, portal, 200, png, "one.png", type=kind)
    old_link = first["downloadUrl"]
    assert listing_row(session, portal, 200)[field]["id"] == str(first["id"])
    second = added(session, portal, 200, PLUS, "two.png", type=kind)
    assert second["id"] > first["id"]
    r = call(session, portal, "catalog.productImage.get", productId=200, id=first["id"])
    assert (r.status_code, r.json()) == (400, {"error": 0, "error_description": "Image is not found"})
    assert download(session, portal, old_link).status_code == 404
    assert portal.gallery(200) == [(second["id"], kind, sha(PLUS))]
    row = listing_row(session, portal, 200)
    assert row[field]["id"] == str(second["id"]) and row["property120"] == []


def test_an_add_of_a_made_catalog_product_replaces_every_image_of_that_type(
    portal: Portal, session: requests.Session, png: bytes
) -> None:
    # make_catalog gives product 100 two DETAIL_PICTURE images (1000 and 1002); a real product has one.
    assert [(i, t) for i, t, _ in portal.gallery(100)] == [
        (1000, "DETAIL_PICTURE"),
        (1001, "MORE_PHOTO"),
        (1002, "DETAIL_PICTURE"),
    ]
    image = added(session, portal, 100, png, type="DETAIL_PICTURE")
    assert [(i, t) for i, t, _ in portal.gallery(100)] == [
        (1001, "MORE_PHOTO"),
        (image["id"], "DETAIL_PICTURE"),
    ]


def test_ids_are_never_given_twice(portal: Portal, session: requests.Session, png: bytes) -> None:
    top = max(i.image_id for i in portal.images())
    portal.delete_image(102, top)
    image = added(session, portal, 100, png)
    assert image["id"] == top + 1
    assert portal.add_image(product_id=100).image_id == top + 2


def _deny(portal: Portal) -> None:
    portal.deny_product(100)


def _not_admin(portal: Portal) -> None:
    portal.admin = False


@pytest.mark.parametrize(
    ("params", "setup", "code", "text"),
    [
        ({"fileContent": ["a.png", b64(PLUS)]}, None, 100, "Required parameter 'fields' is not specified"),
        ({"fields": {"productId": 100}}, None, 100, "Required parameter 'fileContent' is not specified"),
        (
            {"fields": {"productId": 100}, "fileContent": []},
            None,
            100,
            "Required parameter 'fileContent' is not specified",
        ),
        (
            {"fields": {"type": "MORE_PHOTO"}, "fileContent": ["a.png", b64(PLUS)]},
            None,
            0,
            "Product identifier not specified",
        ),
        (
            {"fields": {"productId": 999}, "fileContent": ["a.png", b64(PLUS)]},
            None,
            0,
            "Product is not found",
        ),
        ({"fields": {"productId": 100}, "fileContent": ["a.png", ""]}, None, 0, "Could not save image."),
        ({"fields": {"productId": 100}, "fileContent": ["a.png", "!!!!"]}, None, 0, "Could not save image."),
        (
            {"fields": {"productId": 100}, "fileContent": ["", b64(PLUS)]},
            None,
            0,
            "The file name is not specified",
        ),
        ({"fields": {"productId": 100}, "fileContent": ["a.svg", b64(PLUS)]}, None, 0, "Invalid file type"),
        ({"fields": {"productId": 100}, "fileContent": ["a", b64(PLUS)]}, None, 0, "Invalid file type"),
        (
            {
                "fields": {"productId": 100, "type": "DETAIL_PICTURE"},
                "fileContent": ["a.png", b64(b"not a picture")],
            },
            None,
            0,
            "Invalid file type: the file is not an image",
        ),
        (
            {"fields": {"productId": 100}, "fileContent": ["a.png", b64(PLUS)]},
            _not_admin,
            200040300020,
            "Access Denied",
        ),
        (
            {"fields": {"productId": 100}, "fileContent": ["a.png", b64(PLUS)]},
            _deny,
            200040300020,
            "Access Denied",
        ),
    ],
)
def test_add_errors(
    portal: Portal, session: requests.Session, params: dict, setup: object, code: int, text: str
) -> None:
    if callable(setup):
        setup(portal)
    before = portal.images()
    r = call(session, portal, ADD, **params)
    assert (r.status_code, r.json()) == (400, {"error": code, "error_description": text})
    assert portal.images() == before and portal.stats.adds == 0


def test_more_photo_checks_only_the_extension(portal: Portal, session: requests.Session) -> None:
    image = added(session, portal, 100, b"not a picture at all", "fake.JPE")
    assert fetch(session, portal, 100, image["id"]) == b"not a picture at all"


def test_an_add_error_inside_a_batch_is_that_command_s(portal: Portal, session: requests.Session) -> None:
    result = batch(
        session, portal, {"bad": add_command(999, "a.png", PLUS), "good": add_command(100, "b.png", PLUS)}
    )
    assert result["result_error"] == {"bad": {"error": 0, "error_description": "Product is not found"}}
    assert result["result"]["good"]["productImage"]["productId"] == 100


def test_sniff_and_decode() -> None:
    assert [
        sniff_image(b) for b in (b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\nxx", b"GIF89a", b"BM" + bytes(30))
    ] == [
        "jpeg",
        "png",
        "gif",
        "bmp",
    ]
    assert sniff_image(b"RIFF\0\0\0\0WEBPVP8 ") == "webp" and sniff_image(b"<svg") is None
    assert php_base64_decode("aGVs\nbG8=") == b"hello" and php_base64_decode("a") == b""


# ------------------------------------------------------------------ limits and faults


def test_request_bigger_than_max_request_bytes_is_nginx_413(
    portal: Portal, session: requests.Session
) -> None:
    portal.max_request_bytes = 2000
    r = add(session, portal, 100, PLUS * 40)
    assert r.status_code == 413
    assert r.headers["Content-Type"] == "text/html" and "413 Request Entity Too Large" in r.text
    assert portal.stats.adds == 0 and portal.stats.requests == 0 and portal.stats.injected["413"] == 1
    assert add(session, portal, 100, PLUS).status_code == 200
    r = session.post(
        portal.webhook_url + "batch", json={"cmd": {"a": add_command(100, "a.png", PLUS * 40)}}, timeout=5
    )
    assert r.status_code == 413


def test_drop_answer_applies_the_add_but_sends_nothing(portal: Portal, session: requests.Session) -> None:
    portal.faults.add_drop_answer = 1
    before = len(portal.gallery(100))
    with pytest.raises(requests.ConnectionError):
        add(session, portal, 100, PLUS)
    assert portal.gallery(100)[before:] == [(portal.gallery(100)[-1][0], "MORE_PHOTO", sha(PLUS))]
    assert portal.stats.injected["add_drop_answer"] == 1 and portal.stats.adds == 1
    assert add(session, portal, 100, PLUS).status_code == 200


def test_drop_answer_in_a_batch_runs_every_command_first(portal: Portal, session: requests.Session) -> None:
    portal.faults.rate_add_drop_answer = 1.0
    cmd = {"a": add_command(100, "a.png", PLUS), "b": add_command(101, "b.png", PLUS)}
    with pytest.raises(requests.ConnectionError):
        session.post(portal.webhook_url + "batch", json={"cmd": cmd}, timeout=5)
    assert portal.gallery(100)[-1][2] == portal.gallery(101)[-1][2] == sha(PLUS)
    assert portal.stats.adds == 2


def test_other_bytes_are_stored_for_the_next_adds(portal: Portal, session: requests.Session) -> None:
    portal.faults.add_other_bytes = 1
    first = added(session, portal, 100, PLUS)
    second = added(session, portal, 100, PLUS)
    assert fetch(session, portal, 100, first["id"]) == PLUS + b"\0"
    assert fetch(session, portal, 100, second["id"]) == PLUS
    assert portal.stats.injected["add_other_bytes"] == 1 and portal.stats.add_bytes == 2 * len(PLUS)


def test_operating_time_grows_per_add_until_the_limit(
    catalog: list[CatalogImage], session: requests.Session
) -> None:
    with Portal(catalog, rate_limit=1000.0, burst=10_000, add_operating_s=1.0, operating_limit=2.5) as portal:
        seen = []
        for _ in range(3):
            r = add(session, portal, 100, PLUS)
            assert r.status_code == 200, r.text
            seen.append(r.json()["time"]["operating"])
        assert [round(s) for s in seen] == [1, 2, 3]
        r = add(session, portal, 100, PLUS)
        assert r.status_code == 429 and r.json()["error"] == "OPERATION_TIME_LIMIT"
        assert r.json()["operating_reset_at"] >= time.time() + portal.operating_window - 5
        assert (
            ok(session, portal, "catalog.productImage.get", productId=100, id=1000)["time"]["operating"] < 1
        )
        result = batch(session, portal, {"x": add_command(100, "x.png", PLUS)})
        assert result["result_error"]["x"]["error"] == "OPERATION_TIME_LIMIT"
        assert portal.stats.adds == 3 and portal.stats.rejected_429 == 2


def test_slow_add_is_applied_even_when_the_client_gave_up(portal: Portal, session: requests.Session) -> None:
    portal.faults.slow_add = 0.6
    before = len(portal.gallery(100))
    with pytest.raises(requests.ReadTimeout):
        session.post(
            portal.webhook_url + ADD,
            json={"fields": {"productId": 100}, "fileContent": ["s.png", b64(PLUS)]},
            timeout=(5, 0.2),
        )
    assert len(portal.gallery(100)) == before
    deadline = time.monotonic() + 5
    while len(portal.gallery(100)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(portal.gallery(100)) == before + 1
    r = add(session, portal, 100, PLUS)
    assert r.json()["time"]["processing"] >= 0.6 and portal.stats.injected["slow_add"] == 2


# ------------------------------------------------------------------ delete


def test_delete(portal: Portal, session: requests.Session, png: bytes) -> None:
    portal.add_product(200)
    detail = added(session, portal, 200, png, type="DETAIL_PICTURE")
    more = added(session, portal, 200, png)
    assert ok(session, portal, "catalog.productImage.delete", productId=200, id=more["id"])["result"] is True
    assert listing_row(session, portal, 200)["property120"] == []
    assert (
        ok(session, portal, "catalog.productImage.delete", productId=200, id=detail["id"])["result"] is True
    )
    row = listing_row(session, portal, 200)
    assert row["detailPicture"] is None and portal.gallery(200) == []
    total = ok(session, portal, "catalog.productImage.list", productId=200)["total"]
    assert total == 0 and portal.stats.deletes == 2


@pytest.mark.parametrize(
    ("params", "code", "text"),
    [
        ({"productId": 100, "id": 1003}, 0, "Image is not found"),  # an image of product 101
        ({"productId": 999, "id": 1000}, 0, "Product is not found"),
        ({"productId": 100}, 100, "Required parameter 'id' is not specified"),
        ({"id": 1000}, 100, "Required parameter 'productId' is not specified"),
    ],
)
def test_delete_errors(portal: Portal, session: requests.Session, params: dict, code: int, text: str) -> None:
    r = call(session, portal, "catalog.productImage.delete", **params)
    assert (r.status_code, r.json()) == (400, {"error": code, "error_description": text})
    assert portal.stats.deletes == 0


def test_delete_needs_rights_and_works_in_a_batch(portal: Portal, session: requests.Session) -> None:
    portal.admin = False
    r = call(session, portal, "catalog.productImage.delete", productId=100, id=1000)
    assert (r.status_code, r.json()["error"]) == (400, 200040300020)
    portal.admin = True
    result = batch(session, portal, {"d": "catalog.productImage.delete?productId=100&id=1001"})
    assert result["result"] == {"d": True} and [i for i, _, _ in portal.gallery(100)] == [1000, 1002]


# ------------------------------------------------------------------ the open points' other readings


def test_listing_ids_that_are_not_image_ids(portal: Portal, session: requests.Session) -> None:
    portal.listing_ids_match = False
    image = added(session, portal, 101, PLUS)
    value = listing_row(session, portal, 101)["property120"][-1]["value"]
    assert value["id"] != str(image["id"]) and int(value["id"]) >= 7001


def test_image_list_capped_at_50_without_next(portal: Portal, session: requests.Session) -> None:
    portal.add_product(300)
    for n in range(60):
        portal.add_picture(300, content=bytes([n]), name=f"p{n}.png")
    portal.image_list_cap = 50
    body = ok(session, portal, "catalog.productImage.list", productId=300)
    assert len(body["result"]["productImages"]) == 50 and body["total"] == 50 and "next" not in body
    assert len(portal.gallery(300)) == 60


def test_image_list_next_that_repeats_the_first_page(portal: Portal, session: requests.Session) -> None:
    portal.add_product(300)
    for n in range(25):
        portal.add_picture(300, content=bytes([n]), name=f"p{n}.png")
    portal.image_page_size = 10
    portal.image_list_ignore_start = True
    first = ok(session, portal, "catalog.productImage.list", productId=300)
    again = ok(session, portal, "catalog.productImage.list", productId=300, start=first["next"])
    assert first["next"] == again["next"] == 10
    assert [i["id"] for i in again["result"]["productImages"]] == [
        i["id"] for i in first["result"]["productImages"]
    ]
    portal.image_list_ignore_start = False
    moved = ok(session, portal, "catalog.productImage.list", productId=300, start=10)
    assert (
        moved["next"] == 20
        and moved["result"]["productImages"][0]["id"] != first["result"]["productImages"][0]["id"]
    )


@pytest.mark.parametrize("rotate", [True, False])
def test_old_refresh_token_dies_or_stays(portal: Portal, session: requests.Session, rotate: bool) -> None:
    portal.rotate_refresh_tokens = rotate
    _, refresh = portal.issue_tokens()
    args = {
        "grant_type": "refresh_token",
        "client_id": portal.client_id,
        "client_secret": portal.client_secret,
    }
    assert (
        session.get(portal.token_url, params={**args, "refresh_token": refresh}, timeout=5).status_code == 200
    )
    again = session.get(portal.token_url, params={**args, "refresh_token": refresh}, timeout=5)
    assert again.status_code == (400 if rotate else 200)


def test_webhook_links_that_expire_or_are_single_use(portal: Portal, session: requests.Session) -> None:
    image = added(session, portal, 100, PLUS)
    portal.one_time_links = True
    assert download(session, portal, image["downloadUrl"]).content == PLUS
    assert download(session, portal, image["downloadUrl"]).json()["error"] == "LINK_USED"
    portal.one_time_links = False
    portal.link_ttl = 0.2
    url = ok(session, portal, "catalog.productImage.get", productId=100, id=image["id"])["result"][
        "productImage"
    ]
    time.sleep(0.3)
    assert download(session, portal, url["downloadUrl"]).json()["error"] == "LINK_EXPIRED"
