"""The REST client's pure parts: error classification and the client-side leaky bucket."""

from __future__ import annotations

import io
import json as _json
import socket
from collections.abc import Callable
from typing import Any

import pytest
import requests
from urllib3.exceptions import NameResolutionError

from imgsync.bitrix import (
    Client,
    LeakyBucket,
    OperatingBudget,
    RetryPolicy,
    WebhookAuth,
    classify,
    not_the_file,
)
from imgsync.errors import (
    AuthError,
    DownloadFailed,
    ImageDenied,
    ImageError,
    ImageGone,
    LinkRefused,
    OperationTimeLimit,
    PortalAddressError,
    PortalUnavailable,
    TokenExpired,
    TransientError,
)


@pytest.mark.parametrize(
    ("status", "payload", "kind"),
    [
        (401, {"error": "expired_token"}, TokenExpired),
        (503, {"error": "QUERY_LIMIT_EXCEEDED"}, TransientError),
        (503, {"error": "OVERLOAD_LIMIT"}, PortalUnavailable),
        (429, {"error": "OPERATION_TIME_LIMIT"}, OperationTimeLimit),
        (500, {"error": "INTERNAL_SERVER_ERROR"}, TransientError),
        (401, {"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"}, AuthError),
        # The SDK and the docs disagree on statuses: the code decides.
        (401, {"error": "insufficient_scope"}, AuthError),
        (403, {"error": "insufficient_scope"}, AuthError),
        (410, {"error": "PORTAL_DELETED"}, AuthError),
        (404, {"error": "ERROR_METHOD_NOT_FOUND"}, AuthError),
        (400, {"error": 200040300010, "error_description": "Access Denied"}, ImageDenied),
        (400, {"error": "200040300010", "error_description": "Access Denied"}, ImageDenied),
        (400, {"error": 0, "error_description": "Image is not found"}, ImageGone),
        (400, {"error": 0, "error_description": "product NOT FOUND"}, ImageGone),
        (400, {"error": 0, "error_description": "Internal error"}, ImageError),
        (502, {"error": "SOMETHING_NEW"}, TransientError),
    ],
)
def test_classify_by_code(status: int, payload: dict[str, object], kind: type) -> None:
    err = classify(status, payload)
    assert type(err) is kind


def test_classify_never_repeats_a_secret_from_the_description() -> None:
    err = classify(
        400, {"error": 0, "error_description": "bad link https://p/rest/download.json?auth=SeCrEtToKeN1"}
    )
    assert "SeCrEtToKeN1" not in err.message


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_bucket_allows_the_burst_then_paces_at_the_rate() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(2.0, 50, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(60)]
    assert waits[:49] == [0.0] * 49  # one slot of slack below the portal's 50
    assert waits[49] == pytest.approx(0.5)
    # From then on, one request every 1/rate seconds: the portal's counter never passes 49.
    assert all(w == pytest.approx(0.5) for w in waits[50:])
    assert clock.now == pytest.approx(11 * 0.5)


def test_bucket_drains_while_idle() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(10.0, 5, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        bucket.acquire()
    clock.now += 10.0
    assert [bucket.acquire() for _ in range(4)] == [0.0] * 4


def test_bucket_fill_after_a_503_slows_everyone() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(2.0, 50, clock=clock, sleep=clock.sleep)
    bucket.fill()
    assert bucket.acquire() == pytest.approx(0.5)


def test_operating_budget_takes_the_first_answer_as_a_baseline_and_keeps_the_highest_recent_report() -> None:
    clock = FakeClock()
    clock.now = 1_000_000.0
    budget = OperatingBudget(480.0, clock=clock)  # room up to 0.9 * 480 = 432 s
    budget.note("m", {"operating": 200.0})  # mostly others' use: not this run's cost
    assert budget.cost("m") is None and budget.spent.get("m", 0.0) == 0.0
    clock.now += 1
    budget.note("m", {"operating": 210.0})  # this call cost 10 s
    assert budget.cost("m") == 10.0
    budget.note("m", {"operating": 205.0})  # an older answer read late (parallel requests)
    # 18 commands of 10 s (x 1.25 headroom) fit on top of 205 s, not on top of the 210 s reported first.
    assert budget.delay({"m": 18}) > 0
    clock.now += 61  # a basket's time later, a lower sum means baskets dropped out: it replaces the report
    budget.note("m", {"operating": 100.0})
    assert budget.delay({"m": 18}) == 0


# -- the client through a fake session: one function's behaviour, no server -------------------------------

HOOK = "http://portal.test/rest/1/abc123secret/"


def response(
    status: int, body: bytes, content_type: str = "application/json", url: str = HOOK
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.raw = io.BytesIO(body)
    resp.headers["Content-Type"] = content_type
    resp.url = url
    return resp


class FakeSession(requests.Session):
    """Answers each request with the next of ``answers`` (a response, or an exception to raise)."""

    def __init__(self, answers: list[Any] | Callable[[str, dict[str, Any]], Any]) -> None:
        super().__init__()
        self.answers = answers
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.sent.append((url, kwargs))
        answer = self.answers(url, kwargs) if callable(self.answers) else self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def client(session: FakeSession, attempts: int = 4) -> Client:
    return Client(
        WebhookAuth(HOOK),
        rate_limit=1000.0,
        burst=1000,
        session=session,
        retry=RetryPolicy(attempts=attempts),
        sleep=lambda s: None,
    )


@pytest.mark.parametrize(
    "bad",
    [
        response(502, b"<html><head><title>502 Bad Gateway</title></head></html>", "text/html"),
        response(504, b"<html><body>504 Gateway Time-out</body></html>", "text/html"),
        response(200, b'{"result": {"productImage": {"id": 1', "application/json"),
        response(200, b"", "application/json"),
    ],
    ids=["502 page", "504 page", "200 cut short", "empty 200"],
)
def test_an_answer_that_is_not_complete_json_is_retried(bad: requests.Response) -> None:
    good = response(200, _json.dumps({"result": {"ok": True}, "time": {}}).encode())
    session = FakeSession([bad, good])
    c = client(session)
    assert c.call("server.time")["result"] == {"ok": True}
    assert len(session.sent) == 2 and c.retries == 1


def test_answers_that_stay_broken_end_in_portal_unavailable_not_a_traceback() -> None:
    session = FakeSession(lambda url, kw: response(200, b'{"result": [', "application/json"))
    with pytest.raises(PortalUnavailable, match="not complete JSON"):
        client(session, attempts=3).call("server.time")


def test_a_host_that_does_not_resolve_stops_at_once_naming_it() -> None:
    cause = NameResolutionError("portal.test", None, socket.gaierror(-2, "Name or service not known"))  # type: ignore[arg-type]
    session = FakeSession([requests.ConnectionError(cause)])
    with pytest.raises(PortalAddressError) as caught:
        client(session).call("server.time")
    assert "'portal.test' does not resolve" in caught.value.message
    assert "abc123secret" not in caught.value.message
    assert caught.value.exit_code == 2 and len(session.sent) == 1


def test_a_tls_mismatch_stops_at_once_naming_the_host_and_the_scheme() -> None:
    session = FakeSession([requests.exceptions.SSLError("wrong version number")])
    auth = WebhookAuth("https://portal.test/rest/1/abc123secret/")
    c = Client(auth, session=session, sleep=lambda s: None)
    with pytest.raises(PortalAddressError, match=r"TLS with portal.test:443 failed.*http://"):
        c.call("server.time")
    assert len(session.sent) == 1


def test_a_streamed_error_body_cut_short_stays_a_refused_link() -> None:
    class Cut(io.BytesIO):
        def read(self, *args: Any, **kwargs: Any) -> bytes:
            raise requests.exceptions.ChunkedEncodingError("connection broken")

    resp = response(404, b"", "application/json")
    resp.raw = Cut()
    session = FakeSession([resp])
    with pytest.raises(LinkRefused), client(session).open_download("http://portal.test/rest/download.json"):
        pass


@pytest.mark.parametrize(
    ("content_type", "first", "refused"),
    [
        ("text/html", b"", True),
        ("application/json", b"", True),
        ("", b"<!DOCTYPE html><html><form>login</form>", True),
        ("application/octet-stream", b"\n  <html lang=ru><head>", True),
        ("image/jpeg", b'{"error": "expired_token", "error_description": "x"}', True),
        ("image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF", False),
        ("image/png", b"\x89PNG\r\n\x1a\n", False),
        ("image/svg+xml", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">', False),
        ("image/svg+xml", b"<svg viewBox='0 0 1 1'></svg>", False),
        ("image/webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ", False),
        ("application/octet-stream", b"GIF89a", False),
    ],
)
def test_what_is_not_the_file(content_type: str, first: bytes, refused: bool) -> None:
    assert bool(not_the_file(content_type, first)) is refused


def test_product_image_pages_are_followed_and_an_unfinished_listing_says_so() -> None:
    """``catalog.productImage.list`` with ``next``: the client asks again from there, in the next batch."""
    pages = {0: ([1, 2], 2), 2: ([3, 4], 4), 4: ([5], None)}

    def answer(url: str, kwargs: dict[str, Any]) -> requests.Response:
        cmd = kwargs["json"]["cmd"]
        results, nexts, totals = {}, {}, {}
        for key, command in cmd.items():
            start = int(command.split("start=")[1]) if "start=" in command else 0
            ids, nxt = pages[start]
            results[key] = {"productImages": [{"id": i, "productId": 7, "name": f"{i}.jpg"} for i in ids]}
            totals[key] = 5
            if nxt is not None:
                nexts[key] = nxt
        body = {
            "result": {"result": results, "result_error": [], "result_total": totals, "result_next": nexts}
        }
        return response(200, _json.dumps(body).encode())

    session = FakeSession(answer)
    listing = client(session).list_images([7])[7]
    assert not isinstance(listing, ImageError)
    assert [img.image_id for img in listing.images] == [1, 2, 3, 4, 5] and listing.complete
    assert len(session.sent) == 3

    import imgsync.bitrix.images as bitrix

    old, bitrix.MAX_LIST_PAGES = bitrix.MAX_LIST_PAGES, 2
    try:
        listing = client(FakeSession(answer)).list_images([7])[7]
    finally:
        bitrix.MAX_LIST_PAGES = old
    assert not isinstance(listing, ImageError)
    assert [img.image_id for img in listing.images] == [1, 2, 3, 4] and not listing.complete


def test_a_refused_connection_is_retried_briefly_then_names_host_and_port() -> None:
    from urllib3.exceptions import NewConnectionError

    refused = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")  # type: ignore[arg-type]
    session = FakeSession(lambda url, kw: requests.ConnectionError(refused))
    with pytest.raises(PortalUnavailable, match=r"cannot be reached at portal.test:80"):
        client(session, attempts=8).call("server.time")
    assert len(session.sent) == 3


def test_a_redirect_from_https_to_http_is_refused_before_anything_goes_in_clear_text() -> None:
    secure = HOOK.replace("http://", "https://")
    moved = "http://portal.test/rest/1/abc123secret/server.time"
    answer = response(302, b"", "text/html", url=secure + "server.time")
    answer.headers["Location"] = moved
    session = FakeSession([answer])
    c = Client(WebhookAuth(secure), session=session, retry=RetryPolicy(attempts=4), sleep=lambda s: None)
    with pytest.raises(PortalAddressError, match="from https:// to") as caught:
        c.call("server.time")
    assert len(session.sent) == 1  # never sent to the http:// address
    assert "abc123secret" not in caught.value.message


class Redirecting(requests.adapters.BaseAdapter):
    """A transport that answers every request with ``status`` and ``Location: location``; it keeps the URLs."""

    def __init__(self, location: str, status: int = 302) -> None:
        super().__init__()
        self.location, self.status, self.urls = location, status, []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.urls.append(request.url)
        resp = requests.Response()
        resp.status_code, resp.url, resp.request = self.status, str(request.url), request
        resp.headers["Location"] = self.location
        resp.raw = io.BytesIO(b"")
        return resp

    def close(self) -> None:
        pass


def test_a_download_link_redirected_from_https_to_http_is_not_followed() -> None:
    secure = HOOK.replace("http://", "https://")
    c = Client(WebhookAuth(secure), retry=RetryPolicy(attempts=2), sleep=lambda s: None)
    https = Redirecting("http://cdn.test/file.jpg?token=abc")
    plain = Redirecting("http://cdn.test/never")
    c.session.mount("https://", https)
    c.session.mount("http://", plain)
    with (
        pytest.raises(PortalAddressError, match="never followed to http://"),
        c.open_download("https://portal.test/rest/download.json?token=abc"),
    ):
        pass
    assert (
        len(https.urls) == 1 and plain.urls == []
    )  # requests' own redirect loop stopped at the first answer
    # A redirect that stays on https:// is followed as before (this fake redirects until requests gives up).
    looping = Redirecting("https://cdn.test/file.jpg")
    c.session.mount("https://", looping)
    with (
        pytest.raises(TransientError, match="TooManyRedirects"),
        c.open_download("https://portal.test/rest/download.json?token=abc"),
    ):
        pass
    assert len(looping.urls) > 1


def test_auto_concurrency_follows_the_round_trip_and_the_rate() -> None:
    c = Client(WebhookAuth(HOOK), rate_limit=25.0, burst=250, session=FakeSession([]), sleep=lambda s: None)
    assert c.concurrency() == 4  # nothing measured yet
    c.round_trip = 0.150  # a far portal: 25/s x 150 ms = 3.75 requests in the air, x4 for bodies, +2
    assert c.concurrency() == 17
    c.round_trip = 0.002  # a near one: the floor
    assert c.concurrency() == 4
    c.round_trip = 5.0  # very far: the ceiling
    assert c.concurrency(ceiling=32) == 32
    small = Client(WebhookAuth(HOOK), rate_limit=25.0, burst=8, session=FakeSession([]), sleep=lambda s: None)
    small.round_trip = 0.150
    assert small.concurrency() == 7  # never more in flight than the bucket holds


# -- one image, one budget (over real HTTP) -----------------------------------------------------------
ATTEMPTS = 8  # RetryPolicy's default; the backoff is shortened, not the budget


@pytest.mark.parametrize(
    ("faults", "raised", "sent"),
    [
        # Every GET of the file answers 500 (a one-time link may be spent): each retry takes a fresh link.
        (dict(rate_500=1.0, apply_to="download"), DownloadFailed, 2 * ATTEMPTS - 1),
        # Every request answers 500, the fresh-link gets too: before, each get was a call of 8 attempts.
        (dict(rate_500=1.0), PortalUnavailable, ATTEMPTS),
        # Every link is refused (expired_token on a webhook's link): one fresh link, then the image fails.
        (dict(expired_downloads=10_000), DownloadFailed, 3),
        # Most requests answer 500: before, fresh-link gets that passed late multiplied the GETs' budget.
        (dict(rate_500=0.8, seed=1), (DownloadFailed, PortalUnavailable), None),
    ],
)
def test_one_image_costs_at_most_two_requests_an_attempt(
    faults: dict[str, Any], raised: type[Exception] | tuple[type[Exception], ...], sent: int | None
) -> None:
    """The bound of :meth:`Client.download`'s docstring: ``2 * retry.attempts`` portal requests for one image
    whatever fails (before this bound: ``2A + 1`` GETs and ``2A`` fresh-link gets of up to ``A`` requests each,
    145 requests for A = 8)."""
    from imgsync.emulator import Faults, Portal, make_catalog
    from imgsync.models import ImageRef

    catalog = make_catalog(products=1, images_per_product=1, min_size=500, max_size=600, seed=3)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        c = Client(
            WebhookAuth(portal.webhook_url),
            rate_limit=1000.0,
            burst=1000,
            retry=RetryPolicy(attempts=ATTEMPTS, base=0.001, cap=0.002),
        )
        img = portal.images()[0]
        image = c.get_images([ImageRef(img.product_id, img.image_id)])[ImageRef(img.product_id, img.image_id)]
        assert not isinstance(image, ImageError)
        portal.faults = Faults(**faults)
        before, on_the_wire = c.requests_sent, sum(portal.stats.by_address.values())
        try:
            c.download(image, lambda image, body: b"".join(body.chunks()))
        except raised:
            pass
        else:
            assert sent is None  # only the case that lets some requests pass may end with the file
        cost = c.requests_sent - before
        assert cost == sum(portal.stats.by_address.values()) - on_the_wire
        assert cost == (sent or cost) <= 2 * ATTEMPTS


def test_a_budget_spent_on_mixed_failures_fails_the_image_not_the_run() -> None:
    """In a storm of 503s an image's budget may end on a failed fresh-link get after file failures in between:
    that image fails (``DownloadFailed``). Only a REST that failed on every attempt since the first stops the run
    (``PortalUnavailable``); before, the last failure's step alone decided, and one image could end a night."""
    from imgsync.emulator import Faults, Portal, make_catalog
    from imgsync.errors import TransientError
    from imgsync.models import ImageRef

    catalog = make_catalog(products=1, images_per_product=1, min_size=500, max_size=600, seed=3)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        c = Client(
            WebhookAuth(portal.webhook_url),
            rate_limit=1000.0,
            burst=1000,
            retry=RetryPolicy(attempts=ATTEMPTS, base=0.001, cap=0.002),
        )
        img = portal.images()[0]
        ref = ImageRef(img.product_id, img.image_id)
        image = c.get_images([ref])[ref]
        assert not isinstance(image, ImageError)
        portal.faults = Faults(rate_500=1.0, apply_to="download")  # every file request fails
        real, calls = c.fresh_link, []

        def every_other_get_fails(r: ImageRef) -> Any:  # the portal's 503 for every second get
            calls.append(r)
            if len(calls) % 2:
                raise TransientError("QUERY_LIMIT_EXCEEDED: Too many requests", code="QUERY_LIMIT_EXCEEDED")
            return real(r)

        c.fresh_link = every_other_get_fails  # type: ignore[method-assign]
        with pytest.raises(DownloadFailed, match=f"after {ATTEMPTS} attempts"):
            c.download(image, lambda image, body: b"".join(body.chunks()))
        assert len(calls) == ATTEMPTS - 1  # the first attempt used the batch's link; the last get failed
