"""The one request path to the portal and the one retry loop.

Every request, download links included, goes through :meth:`Transport._send` (the stop and the deadline
checked, a slot of the leaky bucket taken, ``requests`` failures translated by :func:`.errors._translate`).
:meth:`Transport.call` sends a REST method: pacing by the operating-time budget, redirects of a moved
portal, OAuth renewal, the answer parsed and classified, and every retry of the request.

Retries live here and nowhere else: :meth:`Transport.call`'s loop for one REST call, and
:meth:`Transport.retrying` for a request made of steps (a download: a fresh link, then the file), where
what to do before the next attempt (renew, take a fresh link) is a decision the last error carries, not
another loop. The most one image's download can cost, with ``A = retry.attempts`` (8 by default):
``2 * A`` portal requests (16): ``A`` attempts, each at most one ``catalog.productImage.get`` sent once
and one GET of the file; plus the 302s of a moved portal (at most 3 a run) and, with OAuth, each renewal's
token requests (5 at most; the token endpoint is not the portal). Before this bound, ``download`` retried
around ``get_image`` retried around ``call``: ``2A + 1`` GETs and ``2A`` gets of up to ``A`` requests
each, 145 requests for one image (``tests/test_bitrix.py::test_one_image_costs_at_most_two_requests_an_attempt``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from ..errors import (
    AuthError,
    DeadlineReached,
    ImgsyncError,
    Interrupted,
    LinkRefused,
    OperationTimeLimit,
    PortalAddressError,
    PortalUnavailable,
    RequestTooLarge,
    SendUnknown,
    TokenExpired,
    TransientError,
)
from ..redact import redact_url
from .auth import USER_AGENT, Auth, OAuth
from .errors import _NOT_RUN, UNREACHABLE, Expired, _translate, classify
from .pacing import LeakyBucket, OperatingBudget, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Downgrade(Exception):
    """A redirect from https:// to http://, stopped before it is followed (see :func:`refuse_downgrade`)."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(source, target)
        self.source, self.target = source, target


def refuse_downgrade(resp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """A ``requests`` response hook (it sees every answer of a redirect chain): an answer from https://
    that redirects to http:// raises instead of being followed, so no link or credential goes in clear text."""
    location = resp.headers.get("Location", "") if resp.is_redirect else ""
    if location and urlsplit(resp.url).scheme == "https":
        target = urljoin(resp.url, location)
        if urlsplit(target).scheme == "http":
            resp.close()
            raise _Downgrade(resp.url, target)
    return resp


#: How many times in a row a portal that cannot be reached is tried before the run gives up (about 2 s).
UNREACHABLE_ATTEMPTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_RELOCATIONS = 3


class Transport:
    """The portal client. Thread-safe: one instance serves every worker of a run.

    It owns every retry of a portal request: :meth:`call` and :meth:`batch` for REST, :meth:`download`
    for files (with fresh links). Each error says whether it may be retried and when
    (:mod:`imgsync.errors`); the client asks it, waits through one stop-aware sleep, and gives up with
    :class:`PortalUnavailable` after ``retry.attempts``.
    """

    def __init__(
        self,
        auth: Auth,
        *,
        rate_limit: float = 2.0,
        burst: int = 50,
        timeout: float = 30.0,
        workers: int = 4,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        operating_budget: float = 480.0,
        operating_threshold: float = 0.9,
        operating_window: float = 600.0,
    ) -> None:
        self.auth = auth
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self._clock = clock
        self._injected_sleep = sleep
        #: When the run must stop taking work (``time.monotonic()``; None: never). Every wait of the client
        #: (the bucket, the operating-time budget, retries) ends there, and no request leaves after it:
        #: :class:`DeadlineReached`. Set by the sync for ``--max-duration``.
        self.deadline: float | None = None
        self.bucket = LeakyBucket(rate_limit, burst, sleep=self._sleep)
        # Per-method operating time (limits.md): slow a method down before the portal answers 429.
        self.operating = OperatingBudget(
            operating_budget, threshold=operating_threshold, window=operating_window, clock=clock
        )
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, 2 * workers + 4), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._reset_at: float | None = None  # latest time.operating_reset_at the portal reported
        self._reached = False  # the portal has answered at least once in this run
        self.round_trip: float | None = None
        self._relocations = 0
        self.requests_sent = 0
        self.retries = 0
        self.answers_503 = 0  # HTTP 503 (QUERY_LIMIT_EXCEEDED, a proxy's 503) and 429 (OPERATION_TIME_LIMIT)
        self.answers_429 = 0  # answers seen, for the summary and the metrics
        self._count_lock = threading.Lock()
        if isinstance(auth, OAuth):
            auth.sleep = self._sleep  # a renewal's retries stop with the run too

    def _note_round_trip(self, seconds: float) -> None:
        """The time to an answer's headers, smoothed: what ``workers = "auto"`` sizes concurrency from."""
        with self._count_lock:
            self.round_trip = seconds if self.round_trip is None else 0.8 * self.round_trip + 0.2 * seconds

    def concurrency(self, ceiling: int = 32) -> int:
        """How many requests to keep in flight so that the bucket's rate is used, not exceeded: Little's
        law (rate x round trip) with room for bodies that take longer than their headers, at least 4. The
        bucket still paces every request, so more in flight never means more than the portal allows."""
        rtt = self.round_trip
        if rtt is None:
            return 4
        return max(4, min(ceiling, int(self.bucket.capacity), math.ceil(self.rate * rtt * 4) + 2))

    @property
    def rate(self) -> float:
        """Requests per second the client allows itself (the bucket's drain)."""
        return self.bucket.rate

    # -- pacing and sleeping ------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        """The one sleep of the client: ends early, raising :class:`Interrupted`, when the run is stopped, and
        :class:`DeadlineReached` when the run's deadline passes during the wait (it waits no longer)."""
        deadline = self.deadline
        cut = False
        if deadline is not None:
            left = deadline - time.monotonic()
            if seconds >= left:
                seconds, cut = max(0.0, left), True
        if self._injected_sleep is not None:
            if self.stop.is_set():
                raise Interrupted("interrupted")
            self._injected_sleep(seconds)
        elif self.stop.wait(seconds):
            raise Interrupted("interrupted")
        if cut:
            raise DeadlineReached("the run's --max-duration passed while a request waited for its turn")

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineReached("the run's --max-duration has passed: no new request is sent")

    def wait_before_retry(self, exc: TransientError, attempt: int, what: str) -> None:
        """Wait as the portal asked (or back off) before sending again what ``exc`` proved was not run:
        for callers that resend themselves (the adds of a restore, which are never resent blindly)."""
        self._pause(exc, attempt, what)

    def _pause(self, exc: TransientError, attempt: int, what: str) -> None:
        """Wait before retrying after ``exc``: as long as the portal asked, else a backoff with jitter."""
        if exc.bucket_full:
            self.bucket.fill()
        with self._count_lock:
            self.retries += 1
        wait = exc.retry_after(self._clock())
        if wait is None and isinstance(exc, OperationTimeLimit) and self._reset_at:
            wait = OperationTimeLimit(reset_at=self._reset_at).retry_after(self._clock())
        if wait is not None:
            wait = min(wait, self.retry.max_wait_for_reset)
            log.warning("the portal's time limit for %s is reached; waiting %.1f s", what, wait)
        else:
            with self._rng_lock:
                wait = self.retry.delay(attempt, self._rng)
            log.info("retrying %s in %.1f s: %s", what, wait, exc.message)
        self._sleep(wait)

    # -- the one request path -----------------------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP request through the bucket; ``requests`` failures become ours (:func:`_translate`)."""
        if self.stop.is_set():
            raise Interrupted("interrupted")
        self._check_deadline()
        self.bucket.acquire()
        with self._count_lock:
            self.requests_sent += 1
        sent = time.monotonic()
        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise _translate(exc, url, reached=self._reached) from None
        except _Downgrade as exc:
            raise PortalAddressError(
                f"a download from {redact_url(exc.source)} was redirected to {redact_url(exc.target)}: refused, "
                "an https:// link is never followed to http:// (its credentials would travel in clear text)"
            ) from None
        self._note_round_trip(time.monotonic() - sent)
        self._reached = True
        if resp.status_code in (503, 429):
            with self._count_lock:
                self.answers_503 += resp.status_code == 503
                self.answers_429 += resp.status_code == 429
        return resp

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, once: bool = False
    ) -> dict[str, Any]:
        """Call one REST method and return the whole answer (``result``, ``time``, ...).

        Retries what may be retried; raises :class:`AuthError`, :class:`PortalUnavailable` or the
        method's own error (an :class:`ImageError`) otherwise.

        ``once=True`` is for a request that changes the portal (an add): it is sent again only after an
        answer that proves it was not run (the bucket's 503, the time limit's 429, an expired token, a
        connection never made). Any other failure (a dropped connection, a timeout, a 5xx, a body that is
        not JSON) raises :class:`SendUnknown`: the portal may have run it, and the caller looks first.
        """
        renewals = 0
        unreachable = 0
        last: ImgsyncError | None = None
        for attempt in range(self.retry.attempts):
            try:
                data = self.call_once(method, params)
                if data is None:
                    continue  # the portal moved: the same call again at its new address
                return data
            except Expired as exc:
                # Twice: a pair taken over from another process may have expired too, and is renewed then.
                if renewals >= 2:
                    raise AuthError(f"the portal refused the freshly renewed token ({exc})") from None
                self.auth.renew(exc.credential)
                renewals += 1
                continue
            except TransientError as exc:
                if once and exc.code.upper() not in _NOT_RUN:
                    raise SendUnknown(
                        f"{method}: no sure answer ({exc.message}); it may have been run"
                    ) from None
                last = exc
                unreachable = unreachable + 1 if exc.code == UNREACHABLE else 0
                if unreachable >= UNREACHABLE_ATTEMPTS:
                    parts = urlsplit(self.auth.method_url(method))
                    raise PortalUnavailable(
                        f"the portal cannot be reached at {parts.hostname}:"
                        f"{parts.port or (443 if parts.scheme == 'https' else 80)} ({exc.message})"
                    ) from None
                self._pause(exc, attempt if exc.code != UNREACHABLE else 0, method)
        raise PortalUnavailable(
            f"the portal stayed unavailable after {self.retry.attempts} attempts ({method}: {last})"
        )

    def retrying(
        self,
        what: str,
        attempt: Callable[[ImgsyncError | None], T],
        give_up: Callable[[ImgsyncError, int], ImgsyncError | None],
    ) -> T:
        """The retry loop of a request made of steps (a download: a fresh link, then the file), under ONE
        budget of ``retry.attempts`` attempts whatever failed.

        ``attempt(last)`` makes one attempt, sending each of its requests once; it is told the error of the
        attempt before (None at first) and first does what that error asks (renew a token, take a fresh
        link: the decision the error carries). ``give_up(error, n)`` returns the error to stop with (a kind
        of failure seen too often, or ``n`` at the budget), else None. A transient error waits before the
        next attempt (as long as the portal asked, else a backoff); a refused or expired link goes again at
        once. Anything else is raised as it is.
        """
        last: ImgsyncError | None = None
        for n in range(1, self.retry.attempts + 1):
            try:
                return attempt(last)
            except (TransientError, TokenExpired, LinkRefused) as exc:
                last = exc
            stop = give_up(last, n)
            if stop is not None:
                raise stop from None
            if isinstance(last, TransientError):
                self._pause(last, n, what)
        raise PortalUnavailable(f"{what}: no answer after {self.retry.attempts} attempts ({last})")

    def call_once(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """One attempt of :meth:`call`, no retry: the answer, or None when the portal has moved (the call is
        to be sent again, to its new address). ``expired_token`` raises :class:`Expired` (with the credential
        to renew), the rest as :meth:`call` classifies it."""
        body, credential = self.auth.apply(dict(params or {}))
        url = self.auth.method_url(method)
        try:
            # The outer batch is not counted in operating time: batch() paces its commands itself.
            with self.operating.reserve({} if method == "batch" else {method: 1}, self._sleep):
                resp = self._send(
                    "POST",
                    url,
                    json=body,
                    headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                    allow_redirects=False,
                )
                if resp.status_code in _REDIRECTS:
                    self._follow_move(url, resp)
                    return None
                if resp.status_code == 413:
                    resp.close()
                    raise RequestTooLarge(f"HTTP 413 for a {method} request of {_body_size(body)} bytes")
                data = self._parse(resp)
        except Expired:
            raise
        except TokenExpired as exc:
            raise Expired(exc.message, credential=credential) from None
        if method != "batch":
            self.operating.note(method, data.get("time"))
        return data

    def _follow_move(self, url: str, resp: requests.Response) -> None:
        """A renamed portal answers 302 to its new address: move the calls there, never anywhere else.

        The call is repeated at the new address (same path, same body), as the docs advise, instead of
        letting the HTTP library turn the POST into a GET that loses its body. A redirect to another path
        (a login page, say) is not a move of the portal.
        """
        location = resp.headers.get("Location", "")
        resp.close()
        target = urlsplit(urljoin(url, location))
        old = urlsplit(url)
        if old.scheme == "https" and target.scheme == "http":
            raise PortalAddressError(
                f"the portal answered HTTP {resp.status_code} to {redact_url(url)}, redirecting from https:// to "
                f"{redact_url(urljoin(url, location))}: refused, the credentials would travel in clear text; "
                "check bitrix24.webhook_url / portal_url"
            )
        if not location or target.path != old.path or target.scheme not in ("http", "https"):
            raise PortalAddressError(
                f"the portal answered HTTP {resp.status_code} to {redact_url(url)}, redirecting to "
                f"{redact_url(urljoin(url, location)) or 'nowhere'}: check bitrix24.webhook_url / portal_url"
            )
        with self._count_lock:
            self._relocations += 1
            if self._relocations > _MAX_RELOCATIONS:
                raise PortalAddressError(
                    "the portal keeps redirecting: check bitrix24.webhook_url / portal_url"
                )
        root = f"{target.scheme}://{target.netloc}/"
        if root != self.auth.portal_root:
            self.auth.relocate(root)
            log.warning(
                "the portal has moved to %s: update bitrix24.webhook_url / portal_url (this run uses the new "
                "address)",
                root,
            )

    def _parse(self, resp: requests.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except (ValueError, requests.RequestException):
            data = None
        if not isinstance(data, dict):
            # The web tier's own answers: a proxy's 502/504 page, a 200 cut short, an empty body. All pass.
            status = resp.status_code
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip() or "no type"
            what = "an empty body" if not resp.content else f"{ctype} that is not complete JSON"
            if status < 400 or status >= 500 or status == 429:
                raise TransientError(f"HTTP {status} with {what}", code="NOT_JSON", status=status)
            raise PortalAddressError(
                f"the portal answered HTTP {status} with {what} ({redact_url(resp.url)}): "
                "check bitrix24.webhook_url / portal_url"
            )
        self._note_time(data.get("time"))
        if "error" in data:
            err = classify(resp.status_code, data)
            if isinstance(err, OperationTimeLimit):
                # The 429's own operating_reset_at (when sent) is when *this* block lifts. The last
                # answer's time.operating_reset_at may belong to another method, or be the end of a
                # 10-minute accounting window: waiting for it stalled a run for minutes.
                err.reset_at = _unix_time(data.get("operating_reset_at")) or self._reset_at
            raise err
        if resp.status_code >= 400:
            raise classify(resp.status_code, {"error": f"HTTP_{resp.status_code}"})
        return data

    def _note_time(self, t: Any) -> None:
        if isinstance(t, dict):
            reset = t.get("operating_reset_at")
            if isinstance(reset, int | float):
                self._reset_at = float(reset)


def _body_size(body: Any) -> int:
    try:
        return len(json.dumps(body))
    except (TypeError, ValueError):
        return 0


def _unix_time(value: Any) -> float | None:
    """A unix time from an answer (``operating_reset_at``), or None when it is absent or not a number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
