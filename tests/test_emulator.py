"""The portal emulator, spoken to over real HTTP with requests only."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
import urllib3
from PIL import Image

from imgsync.emulator import CatalogImage, Faults, Portal, make_catalog
from imgsync.emulator.catalog import content_type_for

CODE = "k3y5ecr3tw3bh00k"


def browser_headers(portal: Portal) -> dict[str, str]:
    return {
        "User-Agent": "imgsync-test/1.0",
        "Accept": "*/*",
        "Accept-Language": "en-US,en;q=0.9",
        "Referer": portal.url + "/",
    }


@pytest.fixture
def catalog() -> list[CatalogImage]:
    return make_catalog(products=3, images_per_product=3, min_size=1000, max_size=5000, seed=7)


@pytest.fixture
def portal(catalog: list[CatalogImage]) -> Iterator[Portal]:
    with Portal(catalog, rate_limit=1000.0, burst=10_000) as p:
        yield p
        assert p.server_errors == []


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def call(s: requests.Session, portal: Portal, method: str, **params: object) -> requests.Response:
    return s.post(portal.webhook_url + method, json=params, timeout=5)


def get_image(s: requests.Session, portal: Portal, pid: int, iid: int) -> dict:
    r = call(s, portal, "catalog.productImage.get", productId=pid, id=iid)
    assert r.status_code == 200, r.text
    return r.json()["result"]["productImage"]


def download(s: requests.Session, portal: Portal, url: str) -> requests.Response:
    return s.get(url, headers=browser_headers(portal), timeout=5)


# ------------------------------------------------------------------ catalog


def test_make_catalog_is_deterministic_and_well_formed() -> None:
    a = make_catalog(products=2, images_per_product=3, min_size=100, max_size=200, seed=5)
    b = make_catalog(products=2, images_per_product=3, min_size=100, max_size=200, seed=5)
    assert a == b and [i.sha256 for i in a] == [i.sha256 for i in b]
    assert make_catalog(products=2, images_per_product=3, seed=6)[0].content != a[0].content
    assert [(i.product_id, i.image_id) for i in a] == [
        (100, 1000),
        (100, 1001),
        (100, 1002),
        (101, 1003),
        (101, 1004),
        (101, 1005),
    ]
    assert [i.type for i in a[:3]] == ["DETAIL_PICTURE", "MORE_PHOTO", "DETAIL_PICTURE"]
    assert (a[0].name, a[0].content_type) == ("photo-1000.jpg", "image/jpeg")
    assert (a[1].name, a[1].content_type) == ("photo-1001.png", "image/png")
    for image in a:
        assert 100 <= len(image.content) <= 200
        assert image.sha256 == hashlib.sha256(image.content).hexdigest()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+02:00", image.create_time)
        assert re.fullmatch(rf"/upload/iblock/[0-9a-f]{{3}}/[a-z0-9]{{32}}/{image.name}", image.detail_url)


@pytest.mark.parametrize(("min_size", "max_size"), [(100, 200), (1000, 20000), (70_001, 70_001)])
def test_make_catalog_pictures_are_real(min_size: int, max_size: int) -> None:
    images = make_catalog(products=6, images_per_product=4, min_size=min_size, max_size=max_size, seed=3)
    formats = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
    seen = set()
    for image in images:
        with Image.open(io.BytesIO(image.content)) as picture:
            picture.load()
            assert picture.format == formats[image.name.rsplit(".", 1)[1]], image.name
            assert picture.width >= 1 and picture.mode in ("L", "RGB")
            seen.add((picture.format, picture.size, picture.getpixel((picture.width // 2, 0))))
        assert min_size <= image.size <= max_size, (image.name, image.size)
        assert content_type_for(image.name) == image.content_type
        if image.name.endswith(".png"):  # libpng checks every chunk's CRC; Pillow skips some
            data, at = image.content, 8
            while at < len(data):
                length = int.from_bytes(data[at : at + 4], "big")
                body = data[at + 4 : at + 8 + length]
                assert zlib.crc32(body) == int.from_bytes(data[at + 8 + length : at + 12 + length], "big")
                at += 12 + length
            assert body == b"IEND"
    assert len({image.content for image in images}) == len(images)
    assert {name.rsplit(".", 1)[1] for name in (i.name for i in images)} == {"jpg", "png", "webp"}
    assert len(seen) > 3  # different colours and sizes, not one picture padded many times
    again = make_catalog(products=6, images_per_product=4, min_size=min_size, max_size=max_size, seed=3)
    assert [i.content for i in again] == [i.content for i in images]


# ------------------------------------------------------------------ get / list


def test_get_shape(portal: Portal, session: requests.Session, catalog: list[CatalogImage]) -> None:
    first = catalog[0]
    r = call(session, portal, "catalog.productImage.get", productId=first.product_id, id=first.image_id)
    assert r.status_code == 200
    body = r.json()
    image = body["result"]["productImage"]
    assert set(image) == {"createTime", "detailUrl", "downloadUrl", "id", "name", "productId", "type"}
    assert (image["id"], image["productId"], image["name"], image["type"]) == (
        first.image_id,
        first.product_id,
        first.name,
        first.type,
    )
    assert (image["createTime"], image["detailUrl"]) == (first.create_time, first.detail_url)
    assert image["downloadUrl"].startswith(portal.url + "/rest/download.json?token=catalog%7C")
    assert set(body["time"]) == {
        "start",
        "finish",
        "duration",
        "processing",
        "date_start",
        "date_finish",
        "operating",
        "operating_reset_at",
    }
    assert body["time"]["operating_reset_at"] > time.time()


def test_get_via_get_query_string_json_suffix_and_form_body(
    portal: Portal, session: requests.Session
) -> None:
    by_query = session.get(portal.webhook_url + "catalog.productImage.get.json?productId=100&id=1000")
    by_form = session.post(
        portal.webhook_url + "catalog.productImage.get", data={"productId": "100", "id": "1000"}
    )
    for r in (by_query, by_form):
        assert r.status_code == 200, r.text
        assert r.json()["result"]["productImage"]["id"] == 1000
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("params", "code", "text"),
    [
        ({"id": 1000}, 100, "productId"),
        ({"productId": 100}, 100, "'id'"),
        ({"productId": 999, "id": 1000}, 0, "Product is not found"),
        ({"productId": 100, "id": 5}, 0, "Image is not found"),
    ],
)
def test_get_errors(portal: Portal, session: requests.Session, params: dict, code: int, text: str) -> None:
    r = call(session, portal, "catalog.productImage.get", **params)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == code and type(body["error"]) is int
    assert text in body["error_description"]


def test_denied_and_failing_images(portal: Portal, session: requests.Session) -> None:
    portal.deny_product(101)
    portal.fail_image(100, 1001)
    denied = call(session, portal, "catalog.productImage.get", productId=101, id=1003)
    assert (denied.status_code, denied.json()) == (
        400,
        {"error": 200040300010, "error_description": "Access Denied"},
    )
    assert call(session, portal, "catalog.productImage.list", productId=101).json()["error"] == 200040300010
    failing = call(session, portal, "catalog.productImage.get", productId=100, id=1001)
    assert (failing.status_code, failing.json()) == (400, {"error": 0, "error_description": "Internal error"})
    assert call(session, portal, "catalog.productImage.get", productId=100, id=1000).status_code == 200
    portal.deny_product(101, denied=False)
    assert call(session, portal, "catalog.productImage.get", productId=101, id=1003).status_code == 200


def test_list_shape_select_and_empty_product(portal: Portal, session: requests.Session) -> None:
    r = call(session, portal, "catalog.productImage.list", productId=100)
    body = r.json()
    assert r.status_code == 200 and body["total"] == 3 and "time" in body
    images = body["result"]["productImages"]
    assert [i["id"] for i in images] == [1000, 1001, 1002]
    assert all(i["downloadUrl"].startswith(portal.url) for i in images)

    r = session.post(
        portal.webhook_url + "catalog.productImage.list", data="productId=100&select[]=id&select[]=name"
    )
    assert r.json()["result"]["productImages"][0] == {"id": 1000, "name": "photo-1000.jpg"}

    portal.add_product(555)
    empty = call(session, portal, "catalog.productImage.list", productId=555).json()
    assert (empty["result"], empty["total"]) == ({"productImages": []}, 0)
    missing = call(session, portal, "catalog.productImage.list", productId=556)
    assert (missing.status_code, missing.json()["error"]) == (400, 0)


def test_catalog_changes_while_running(portal: Portal, session: requests.Session) -> None:
    before = get_image(session, portal, 100, 1000)
    portal.replace_image(100, 1000, content=b"new bytes", name="renamed.png")
    after = get_image(session, portal, 100, 1000)
    assert after["detailUrl"] != before["detailUrl"] and after["detailUrl"].endswith("/renamed.png")
    assert (after["createTime"], after["name"]) == (before["createTime"], "renamed.png")
    assert download(session, portal, after["downloadUrl"]).content == b"new bytes"
    assert portal.image(100, 1000).content_type == "image/png"

    added = portal.add_image(product_id=100, content=b"xyz")
    assert (added.image_id, added.name) == (1009, "photo-1009.jpg")
    assert get_image(session, portal, 100, 1009)["name"] == "photo-1009.jpg"

    portal.delete_image(100, 1001)
    assert call(session, portal, "catalog.productImage.get", productId=100, id=1001).json()["error"] == 0
    portal.delete_product(102)
    gone = call(session, portal, "catalog.productImage.get", productId=102, id=1006).json()
    assert gone == {"error": 0, "error_description": "Product is not found"}
    assert [(i.product_id, i.image_id) for i in portal.images()] == [
        (100, 1000),
        (100, 1002),
        (100, 1009),
        (101, 1003),
        (101, 1004),
        (101, 1005),
    ]


# ------------------------------------------------------------------ auth and system errors


def test_auth_and_system_errors(portal: Portal, session: requests.Session) -> None:
    def post(path: str, **body: object) -> tuple[int, dict]:
        r = session.post(portal.url + path, json=body)
        return r.status_code, r.json()

    assert post("/rest/1/wrong/catalog.productImage.get", productId=100, id=1000) == (
        401,
        {"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"},
    )
    assert post(f"/rest/2/{CODE}/catalog.productImage.get")[1]["error"] == "NO_AUTH_FOUND"
    assert post("/rest/catalog.productImage.get", productId=100, id=1000)[1]["error"] == "NO_AUTH_FOUND"
    assert post("/rest/catalog.productImage.get", auth="nope" * 8) == (
        401,
        {"error": "invalid_token", "error_description": "Unable to get application by token"},
    )
    assert post(f"/rest/1/{CODE}/catalog.nothing") == (
        404,
        {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"},
    )
    portal.scopes = ("crm",)
    status, body = post(f"/rest/1/{CODE}/catalog.productImage.get", productId=100, id=1000)
    assert (status, body["error"]) == (403, "insufficient_scope")
    assert session.get(portal.url + "/nowhere").status_code == 404


# ------------------------------------------------------------------ batch

GET = "catalog.productImage.get?productId={}&id={}"


def batch(s: requests.Session, portal: Portal, cmd: object, halt: int = 0) -> requests.Response:
    return s.post(portal.webhook_url + "batch", json={"halt": halt, "cmd": cmd}, timeout=5)


def test_batch_shape_and_per_command_errors(portal: Portal, session: requests.Session) -> None:
    portal.deny_product(101)
    r = batch(
        session,
        portal,
        {
            "ok": GET.format(100, 1000),
            "gone": GET.format(100, 5),
            "denied": GET.format(101, 1003),
            "list": "catalog.productImage.list?productId=102&select[]=id",
            "nested": "batch?cmd[x]=scope",
            "unknown": "no.such.method",
        },
    )
    assert r.status_code == 200
    body = r.json()["result"]
    assert set(body["result"]) == {"ok", "list"}
    assert body["result"]["ok"]["productImage"]["id"] == 1000
    assert body["result"]["list"] == {"productImages": [{"id": 1006}, {"id": 1007}, {"id": 1008}]}
    assert body["result_error"] == {
        "gone": {"error": 0, "error_description": "Image is not found"},
        "denied": {"error": 200040300010, "error_description": "Access Denied"},
        "nested": {
            "error": "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "error_description": "Method is not allowed for batch usage",
        },
        "unknown": {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"},
    }
    assert body["result_total"] == {"list": 3}
    assert body["result_next"] == []
    assert set(body["result_time"]) == {"ok", "list"}
    assert "operating_reset_at" in r.json()["time"]


def test_batch_empty_sections_are_lists(portal: Portal, session: requests.Session) -> None:
    ok = batch(session, portal, {"a": GET.format(100, 1000)}).json()["result"]
    assert (ok["result_error"], ok["result_total"], ok["result_next"]) == ([], [], [])
    bad = batch(session, portal, {"a": GET.format(100, 1), "b": GET.format(100, 2)}).json()["result"]
    assert (bad["result"], bad["result_time"], bad["result_total"]) == ([], [], [])
    assert set(bad["result_error"]) == {"a", "b"}


def test_batch_list_cmd_and_halt(portal: Portal, session: requests.Session) -> None:
    body = batch(session, portal, [GET.format(100, 1000), GET.format(100, 1001)]).json()["result"]
    assert isinstance(body["result"], list) and [x["productImage"]["id"] for x in body["result"]] == [
        1000,
        1001,
    ]

    mixed = batch(session, portal, [GET.format(100, 1000), GET.format(100, 9), GET.format(100, 1002)]).json()
    assert set(mixed["result"]["result"]) == {"0", "2"} and set(mixed["result"]["result_error"]) == {"1"}

    halted = batch(
        session, portal, {"a": GET.format(100, 1000), "b": GET.format(9, 9), "c": GET.format(100, 1002)}, 1
    )
    result = halted.json()["result"]
    assert set(result["result"]) == {"a"} and set(result["result_error"]) == {"b"}


def test_batch_form_encoded(portal: Portal, session: requests.Session) -> None:
    data = {"halt": "0", "cmd[x]": GET.format(100, 1000), "cmd[y]": GET.format(100, 1001)}
    r = session.post(portal.webhook_url + "batch", data=data)
    assert set(r.json()["result"]["result"]) == {"x", "y"}


def test_batch_of_51_is_rejected_and_batch_counts_once(portal: Portal, session: requests.Session) -> None:
    r = batch(session, portal, {f"k{i}": GET.format(100, 1000) for i in range(51)})
    assert (r.status_code, r.json()["error"]) == (400, "ERROR_BATCH_LENGTH_EXCEEDED")
    assert portal.stats.batch_commands == {}
    portal.rate_limit = 0.0
    portal.reset_bucket()
    r = batch(session, portal, {f"k{i}": GET.format(100, 1000) for i in range(50)})
    assert r.status_code == 200 and len(r.json()["result"]["result"]) == 50
    assert portal.bucket_level() == 1.0
    assert portal.stats.batch_commands["catalog.productImage.get"] == 50


# ------------------------------------------------------------------ downloads


def test_download_matches_and_links_differ(
    portal: Portal, session: requests.Session, catalog: list[CatalogImage]
) -> None:
    first = catalog[0]
    url1 = get_image(session, portal, 100, 1000)["downloadUrl"]
    url2 = get_image(session, portal, 100, 1000)["downloadUrl"]
    assert url1 != url2
    for url in (url1, url2):
        r = download(session, portal, url)
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == first.sha256
        assert r.headers["Content-Type"] == "image/jpeg"
        assert r.headers["Content-Length"] == str(len(first.content))
        assert r.headers["Content-Disposition"] == 'attachment; filename="photo-1000.jpg"'


def test_big_download_streams(session: requests.Session) -> None:
    big = CatalogImage(1, 2, "big.png", content=bytes(range(256)) * 20_000)  # 5 MB
    with Portal([big]) as portal:
        url = get_image(session, portal, 1, 2)["downloadUrl"]
        r = download(session, portal, url)
        assert r.content == big.content
        assert portal.stats.download_bytes == len(big.content)


@pytest.mark.parametrize("missing", ["Referer", "Accept-Language", "User-Agent"])
def test_download_without_browser_headers_is_nginx_404(
    portal: Portal, session: requests.Session, missing: str
) -> None:
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    headers = browser_headers(portal)
    if missing == "User-Agent":
        headers["User-Agent"] = ""
    else:
        del headers[missing]
    r = session.get(url, headers=headers)
    assert r.status_code == 404
    assert "<center>nginx</center>" in r.text and r.headers["Content-Type"] == "text/html"
    assert r.headers["Content-Disposition"] == 'attachment; filename="photo-1000.jpg"'
    assert download(session, portal, url).status_code == 200


def test_tampered_links_are_refused(portal: Portal, session: requests.Session) -> None:
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    other = get_image(session, portal, 100, 1001)["downloadUrl"]
    # The file-id part of one link with the signature of another.
    token = parse_qs(urlsplit(url).query)["token"][0].split("|")
    forged = token[0] + "|" + parse_qs(urlsplit(other).query)["token"][0].split("|")[1] + "|" + token[2]
    for bad in (url[:-6] + "AAAA%3D", f"{portal.url}/rest/download.json?token={quote(forged)}", url + "x"):
        r = download(session, portal, bad)
        assert (r.status_code, r.json()) == (
            401,
            {"error": "LINK_CHECK_FAILED", "error_description": "Link check failed"},
        )
    assert download(session, portal, f"{portal.url}/rest/download.json").status_code == 401


def test_webhook_link_is_bound_to_the_webhook(portal: Portal, session: requests.Session) -> None:
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    portal.webhook_code = "an0therc0de"
    assert download(session, portal, url).json()["error"] == "LINK_CHECK_FAILED"


def test_expired_and_one_time_links(catalog: list[CatalogImage], session: requests.Session) -> None:
    with Portal(catalog, link_ttl=0.2, one_time_links=True) as portal:
        url = get_image(session, portal, 100, 1000)["downloadUrl"]
        assert download(session, portal, url).status_code == 200
        used = download(session, portal, url)
        assert (used.status_code, used.json()["error"]) == (401, "LINK_USED")
        stale = get_image(session, portal, 100, 1001)["downloadUrl"]
        time.sleep(0.25)
        expired = download(session, portal, stale)
        assert (expired.status_code, expired.json()["error"]) == (401, "LINK_EXPIRED")
        assert "Link check failed" in expired.json()["error_description"]


def test_replaced_or_deleted_file_link_is_404(portal: Portal, session: requests.Session) -> None:
    replaced = get_image(session, portal, 100, 1000)["downloadUrl"]
    deleted = get_image(session, portal, 100, 1001)["downloadUrl"]
    portal.replace_image(100, 1000, content=b"v2")
    portal.delete_image(100, 1001)
    for url in (replaced, deleted):
        r = download(session, portal, url)
        assert (r.status_code, r.json()["error"]) == (404, "ERROR_FILE_NOT_FOUND")


# ------------------------------------------------------------------ OAuth


def test_oauth_expiry_refresh_and_rotation(portal: Portal, session: requests.Session) -> None:
    access, refresh = portal.issue_tokens()
    assert len(access) >= 16 and len(refresh) >= 16
    endpoint = portal.url + "/rest/catalog.productImage.get"
    r = session.post(endpoint, json={"auth": access, "productId": 100, "id": 1000})
    assert r.status_code == 200
    link = r.json()["result"]["productImage"]["downloadUrl"]
    assert parse_qs(urlsplit(link).query)["auth"] == [access]
    assert download(session, portal, link).status_code == 200
    assert session.get(endpoint + f"?auth={access}&productId=100&id=1000").status_code == 200

    portal.expire_access_tokens()
    r = session.post(endpoint, json={"auth": access, "productId": 100, "id": 1000})
    assert (r.status_code, r.json()) == (
        401,
        {"error": "expired_token", "error_description": "The access token provided has expired."},
    )
    assert download(session, portal, link).json()["error"] == "expired_token"

    args = {"grant_type": "refresh_token", "client_id": "local.app1", "client_secret": "s3cr3tcl1ent"}
    r = session.get(portal.token_url, params={**args, "refresh_token": refresh})
    assert r.status_code == 200
    pair = r.json()
    assert pair["client_endpoint"] == portal.url + "/rest/"
    assert pair["expires_in"] == 3600 and pair["scope"] == "catalog"
    assert {pair["access_token"], pair["refresh_token"]}.isdisjoint({access, refresh})
    assert session.post(endpoint, json={"auth": pair["access_token"], "productId": 100, "id": 1000}).ok

    reused = session.get(portal.token_url, params={**args, "refresh_token": refresh})
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    wrong = session.get(
        portal.token_url, params={**args, "client_secret": "x", "refresh_token": pair["refresh_token"]}
    )
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert portal.stats.by_method["oauth.token"] == 3
    assert portal.bucket_level() < 10  # the OAuth server is not the portal: never in its bucket


def test_access_tokens_expire_by_ttl_and_rotation_can_be_off(
    catalog: list[CatalogImage], session: requests.Session
) -> None:
    with Portal(catalog, access_token_ttl=0.2, rotate_refresh_tokens=False) as portal:
        access, refresh = portal.issue_tokens()
        time.sleep(0.25)
        r = session.post(portal.url + "/rest/scope", json={"auth": access})
        assert r.json()["error"] == "expired_token"
        args = {"grant_type": "refresh_token", "client_id": "local.app1", "client_secret": "s3cr3tcl1ent"}
        for _ in range(2):
            assert session.get(portal.token_url, params={**args, "refresh_token": refresh}).status_code == 200


# ------------------------------------------------------------------ bucket


def test_bucket_rejects_exactly_what_exceeds_burst(
    catalog: list[CatalogImage], session: requests.Session
) -> None:
    with Portal(catalog, rate_limit=0.0, burst=20) as portal:
        statuses = [call(session, portal, "scope").status_code for _ in range(30)]
        assert statuses == [200] * 20 + [503] * 10
        assert call(session, portal, "scope").json() == {
            "error": "QUERY_LIMIT_EXCEEDED",
            "error_description": "Too many requests",
        }
        stats = portal.stats
        assert (stats.rejected_503, stats.requests, stats.max_bucket_level) == (11, 31, 20)
        assert stats.injected == {}


def test_bucket_under_concurrency(catalog: list[CatalogImage]) -> None:
    with Portal(catalog, rate_limit=0.0, burst=37) as portal:
        codes: list[int] = []

        def worker() -> None:
            with requests.Session() as s:
                codes.extend(call(s, portal, "scope").status_code for _ in range(20))

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (codes.count(200), codes.count(503)) == (37, 120 - 37)


def test_bucket_drains_and_downloads_count_when_asked(
    catalog: list[CatalogImage], session: requests.Session
) -> None:
    with Portal(catalog, rate_limit=10.0, burst=50, count_downloads=False) as portal:
        url = get_image(session, portal, 100, 1000)["downloadUrl"]
        for _ in range(3):
            download(session, portal, url)
        assert portal.bucket_level() <= 1.0
        portal.count_downloads = True
        for _ in range(5):
            download(session, portal, url)
        level = portal.bucket_level()
        assert 4.0 < level <= 6.0
        time.sleep(0.2)
        assert portal.bucket_level() <= level - 1.5


# ------------------------------------------------------------------ faults and limits


def test_injected_faults_at_rate_one(portal: Portal, session: requests.Session) -> None:
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    portal.faults = Faults(rate_503=1.0)
    r = call(session, portal, "scope")
    assert (r.status_code, r.json()["error"]) == (503, "QUERY_LIMIT_EXCEEDED")
    portal.faults = Faults(rate_500=1.0)
    r = call(session, portal, "scope")
    assert (r.status_code, r.json()["error"]) == (500, "INTERNAL_SERVER_ERROR")
    portal.faults = Faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        call(session, portal, "scope")
    portal.faults = Faults(truncate_rate=1.0)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        download(session, portal, url)
    portal.faults = Faults(slow_download=0.3)
    started = time.monotonic()
    assert download(session, portal, url).status_code == 200
    assert time.monotonic() - started >= 0.3
    portal.faults = Faults(rate_500=1.0, apply_to="download")
    assert call(session, portal, "scope").status_code == 200
    assert download(session, portal, url).status_code == 500
    portal.faults = Faults()
    assert call(session, portal, "scope").status_code == 200

    stats = portal.stats
    assert stats.injected == {"503": 1, "500": 2, "drop": 1, "truncate": 1, "slow": 1}
    assert stats.rejected_503 == 0
    assert stats.downloads_served == 1  # the slow one; the truncated body does not count


def test_faults_are_repeatable() -> None:
    def rolls(seed: int) -> list[bool]:
        faults = Faults(rate_503=0.5, seed=seed)
        return [faults.roll(faults.rate_503) for _ in range(50)]

    assert rolls(3) == rolls(3) and rolls(3) != rolls(4) and 10 < sum(rolls(3)) < 40
    with pytest.raises(ValueError):
        Faults(apply_to="sometimes")


def test_overload(portal: Portal, session: requests.Session) -> None:
    portal.overload = True
    r = call(session, portal, "catalog.productImage.get", productId=100, id=1000)
    assert (r.status_code, r.json()["error"]) == (503, "OVERLOAD_LIMIT")
    portal.overload = False
    assert call(session, portal, "scope").status_code == 200


def test_operation_limit(portal: Portal, session: requests.Session) -> None:
    portal.operation_limit(seconds=0.5, method="catalog.productImage.get")
    lifts = time.time() + 0.5
    r = call(session, portal, "catalog.productImage.get", productId=100, id=1000)
    assert r.status_code == 429
    body = r.json()
    assert body["error"] == "OPERATION_TIME_LIMIT" and lifts <= body["operating_reset_at"] <= lifts + 1.1

    r = batch(session, portal, {"a": GET.format(100, 1000), "l": "catalog.productImage.list?productId=100"})
    assert r.status_code == 200
    result = r.json()
    assert result["result"]["result_error"]["a"]["error"] == "OPERATION_TIME_LIMIT"
    assert set(result["result"]["result"]) == {"l"}
    assert lifts <= result["time"]["operating_reset_at"] <= lifts + 1.1

    time.sleep(max(0.0, lifts - time.time()) + 0.05)
    ok = call(session, portal, "catalog.productImage.get", productId=100, id=1000).json()
    assert ok["time"]["operating"] > 0
    assert portal.stats.injected["operation_limit"] == 2


def test_latency(catalog: list[CatalogImage], session: requests.Session) -> None:
    with Portal(catalog, latency=0.2) as portal:
        started = time.monotonic()
        assert call(session, portal, "scope").status_code == 200
        assert time.monotonic() - started >= 0.2


# ------------------------------------------------------------------ HTTP details and stats


def test_keep_alive_reuses_the_connection(portal: Portal) -> None:
    port = int(portal.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.connect()
    sock = conn.sock
    for _ in range(3):
        conn.request(
            "POST", f"/rest/1/{CODE}/scope", body=b"{}", headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        assert response.status == 200 and not response.will_close
        assert json.loads(response.read())["result"] == ["catalog"]
        assert conn.sock is sock
    conn.close()


def test_stop_cuts_kept_alive_connections(catalog: list[CatalogImage], session: requests.Session) -> None:
    portal = Portal(catalog).start()
    assert call(session, portal, "scope").status_code == 200
    portal.stop()
    with pytest.raises(requests.ConnectionError):
        call(session, portal, "scope")
    url = portal.url
    with portal:  # a restart listens on the same port
        assert portal.url == url and call(session, portal, "scope").status_code == 200


def test_stats_counters(portal: Portal, session: requests.Session, catalog: list[CatalogImage]) -> None:
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    download(session, portal, url)
    call(session, portal, "catalog.productImage.list", productId=100)
    batch(session, portal, [GET.format(100, 1000), "catalog.productImage.list?productId=101"])
    stats = portal.stats
    assert stats.requests == 4
    assert stats.by_method == {
        "catalog.productImage.get": 1,
        "download": 1,
        "catalog.productImage.list": 1,
        "batch": 1,
    }
    assert stats.batch_commands == {"catalog.productImage.get": 1, "catalog.productImage.list": 1}
    assert (stats.downloads_served, stats.download_bytes) == (1, len(catalog[0].content))
    as_dict = stats.as_dict()
    assert as_dict["by_method"]["download"] == 1 and stats["requests"] == 4
    json.dumps(as_dict)
    portal.reset_stats()
    assert portal.stats.requests == 0 and portal.stats.by_method == {}


def test_module_cli_prints_urls_and_stats() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgsync.emulator",
            "--products",
            "2",
            "--images-per-product",
            "1",
            "--rate-limit",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["webhook_url"] == info["url"] + f"/rest/1/{CODE}/"
        assert info["token_url"] == info["url"] + "/oauth/token/"
        r = requests.post(
            info["webhook_url"] + "catalog.productImage.get", json={"productId": 101, "id": 1001}
        )
        assert r.json()["result"]["productImage"]["name"] == "photo-1001.png"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert json.loads(err)["by_method"] == {"catalog.productImage.get": 1}


# ------------------------------------------------------------------ web-tier faults


def test_download_answered_with_login_page_or_json_error(portal: Portal, session: requests.Session) -> None:
    image = portal.image(100, 1000)
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    portal.faults = Faults(html_downloads=2)
    for _ in range(2):
        r = download(session, portal, url)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/html; charset=UTF-8"
        assert r.text.startswith("<!DOCTYPE html><html") and "<form" in r.text and "USER_LOGIN" in r.text
        assert r.headers["Content-Length"] == str(len(r.content))
    assert download(session, portal, url).content == image.content  # only the next two
    portal.faults = Faults(rate_html_download=1.0)
    assert download(session, portal, url).headers["Content-Type"].startswith("text/html")
    portal.faults = Faults(rate_json_download=1.0)
    r = download(session, portal, url)
    assert (r.status_code, r.headers["Content-Type"]) == (200, "application/json; charset=utf-8")
    assert set(r.json()) == {"error", "error_description"}
    portal.faults = Faults(rate_html_download=1.0, rate_json_download=1.0)
    assert call(session, portal, "scope").status_code == 200  # REST is not touched
    assert portal.stats.injected == {"html": 3, "json_error": 1}
    assert portal.stats.downloads_served == 1


@pytest.mark.parametrize(
    ("fault", "status", "title"),
    [("rate_502", 502, "502 Bad Gateway"), ("rate_504", 504, "504 Gateway Time-out")],
)
def test_proxy_error_pages(
    portal: Portal, session: requests.Session, fault: str, status: int, title: str
) -> None:
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    portal.faults = Faults(**{fault: 1.0})
    for r in (call(session, portal, "scope"), download(session, portal, url)):
        assert (r.status_code, r.headers["Content-Type"]) == (status, "text/html")
        assert f"<title>{title}</title>" in r.text and "<center>nginx</center>" in r.text
    portal.faults = Faults(**{fault: 1.0}, apply_to="download")
    assert call(session, portal, "scope").status_code == 200
    assert portal.stats.injected == {str(status): 2}


def test_cut_and_empty_json_answers(portal: Portal, session: requests.Session) -> None:
    whole = call(session, portal, "catalog.productImage.list", productId=100, select=["id", "name"]).content
    portal.faults = Faults(rate_cut_json=1.0)
    r = call(session, portal, "catalog.productImage.list", productId=100, select=["id", "name"])
    assert r.status_code == 200 and r.headers["Content-Length"] == str(len(r.content))
    assert 0 < len(r.content) < len(whole) and r.content[:60] == whole[:60]
    with pytest.raises(ValueError):
        r.json()
    portal.faults = Faults(rate_empty=1.0)
    r = call(session, portal, "scope")
    assert (r.status_code, r.content, r.headers["Content-Length"]) == (200, b"", "0")
    assert portal.stats.injected == {"cut_json": 1, "empty": 1}


def test_fault_rates_are_exact_in_stats_and_skip_the_bucket(catalog: list[CatalogImage]) -> None:
    with Portal(catalog, rate_limit=0.0, burst=100) as portal, requests.Session() as s:
        portal.faults = Faults(rate_502=0.1, rate_504=0.1, rate_cut_json=0.1, rate_empty=0.1, seed=5)
        seen: Counter[str] = Counter()
        for _ in range(100):
            r = call(s, portal, "scope")
            if r.status_code in (502, 504):
                seen[str(r.status_code)] += 1
            elif not r.content:
                seen["empty"] += 1
            else:
                try:
                    r.json()
                except ValueError:
                    seen["cut_json"] += 1
                else:
                    seen["ok"] += 1
        injected = portal.stats.injected
        assert dict(injected) == {k: v for k, v in seen.items() if k != "ok"}
        assert 20 < sum(injected.values()) < 60
        # Only the answers that were not faulted went into the bucket (a cut answer did not either).
        assert portal.bucket_level() == seen["ok"]


def test_stalled_answers_need_a_read_timeout(portal: Portal, session: requests.Session) -> None:
    image = portal.image(100, 1000)
    url = get_image(session, portal, 100, 1000)["downloadUrl"]
    portal.faults = Faults(rate_stall=1.0, stall_seconds=30.0)
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError, match="timed out"):
        session.post(portal.webhook_url + "scope", json={}, timeout=0.5)
    r = session.get(url, headers=browser_headers(portal), timeout=0.5, stream=True)
    assert r.status_code == 200 and r.headers["Content-Length"] == str(image.size)
    with pytest.raises(requests.ConnectionError, match="timed out"):
        r.content  # noqa: B018
    assert time.monotonic() - started < 5
    assert portal.stats.injected == {"stall": 2}
    portal.faults = Faults(rate_stall=1.0, stall_seconds=0.3)  # a short stall: the rest follows
    assert download(session, portal, url).content == image.content


def test_stop_ends_a_stall_at_once(catalog: list[CatalogImage]) -> None:
    portal = Portal(catalog).start()
    image = portal.image(100, 1000)
    r = requests.post(portal.webhook_url + "catalog.productImage.get", json={"productId": 100, "id": 1000})
    link = r.json()["result"]["productImage"]["downloadUrl"]
    portal.faults = Faults(rate_stall=1.0, stall_seconds=60.0)
    r = requests.get(link, headers=browser_headers(portal), stream=True, timeout=30)
    assert r.raw.read(image.size // 2) == image.content[: image.size // 2]  # then nothing comes
    started = time.monotonic()
    threading.Timer(0.2, portal.stop).start()
    with pytest.raises(urllib3.exceptions.ProtocolError, match="IncompleteRead"):
        r.raw.read()
    assert 0.2 <= time.monotonic() - started < 3
    # The server's thread stopped waiting too (it does not sleep out the 60 s).
    while any("process_request" in t.name for t in threading.enumerate()) and time.monotonic() - started < 3:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if "process_request" in t.name]


def test_chunked_downloads(portal: Portal, session: requests.Session) -> None:
    big = portal.add_image(product_id=100, content=bytes(range(256)) * 1000)  # several chunks
    for image in (portal.image(100, 1000), big):
        url = get_image(session, portal, 100, image.image_id)["downloadUrl"]
        portal.faults = Faults(chunked_downloads=True)
        r = download(session, portal, url)
        assert r.status_code == 200 and "Content-Length" not in r.headers
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert r.content == image.content
    assert portal.stats.injected == {"chunked": 2}
    # The server counts a body once its last chunk has gone out, which may be just after the client has read it.
    deadline = time.monotonic() + 10
    while portal.stats.downloads_served < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert portal.stats.downloads_served == 2


def test_renamed_portal_redirects_from_the_old_address(portal: Portal, session: requests.Session) -> None:
    with pytest.raises(RuntimeError):
        portal.old_url  # noqa: B018
    old = portal.rename()
    assert old == portal.old_webhook_url != portal.webhook_url
    assert old.startswith(portal.old_url + "/rest/1/")
    r = session.post(
        old + "catalog.productImage.get?x=1", json={"productId": 100, "id": 1000}, allow_redirects=False
    )
    assert r.status_code == 302
    assert r.headers["Location"] == portal.webhook_url + "catalog.productImage.get?x=1"
    assert call(session, portal, "catalog.productImage.get", productId=100, id=1000).status_code == 200
    stats = portal.stats
    new, moved = portal.url.split("//")[1], portal.old_url.split("//")[1]
    assert stats.by_address == {moved: 1, new: 1}
    assert (stats.redirected, stats.requests) == (1, 1)
    assert portal.old_address_requests == [("POST", f"/rest/1/{CODE}/catalog.productImage.get?x=1")]
    # The old address answers every path, and stays across a restart.
    assert session.get(portal.old_url + "/anything", allow_redirects=False).status_code == 302
    portal.stop()
    portal.start()
    assert (
        session.get(old + "scope", allow_redirects=False).headers["Location"] == portal.webhook_url + "scope"
    )
