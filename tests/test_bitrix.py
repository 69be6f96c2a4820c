"""The REST client's pure parts: error classification and the client-side leaky bucket."""

from __future__ import annotations

import pytest

from imgsync.bitrix import LeakyBucket, classify
from imgsync.errors import (
    AuthError,
    ImageDenied,
    ImageError,
    ImageGone,
    OperationTimeLimit,
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
