"""The Bitrix24 REST client: auth, one request path, ``batch``, the leaky bucket, retries, error codes.

Every request to the portal, download links included, goes through :meth:`Client._send`, which owns
pacing (a client-side copy of the portal's leaky bucket), retries with backoff and jitter, OAuth renewal
and the translation of the portal's error codes into :mod:`imgsync.errors`. No ``requests`` exception
leaves this module.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError, NewConnectionError, ReadTimeoutError

from . import __version__
from .errors import (
    AuthError,
    DeadlineReached,
    DownloadFailed,
    ImageDenied,
    ImageError,
    ImageGone,
    ImgsyncError,
    Interrupted,
    LinkRefused,
    NotTheFile,
    OperationTimeLimit,
    PortalAddressError,
    PortalUnavailable,
    RequestTooLarge,
    SendUnknown,
    TokenExpired,
    TransientError,
)
from .models import ImageRef, ImageUpload, PortalImage
from .redact import redact, redact_url, register_secret

log = logging.getLogger(__name__)

USER_AGENT = f"imgsync/{__version__}"
BATCH_SIZE = 50  # the documented maximum number of commands in one batch
DENIED = 200040300010  # catalog: no permission to view the catalog or the product

# Errors that mean the credentials or their scope are wrong for the whole run, with what to do about it.
_AUTH_HINTS: dict[str, str] = {
    "no_auth_found": "wrong webhook code or access token: check bitrix24.webhook_url / the OAuth tokens",
    "invalid_token": "the access token is not valid: check the OAuth tokens",
    "invalid_credentials": "the webhook's user lacks the permissions this method needs (an administrator is needed)",
    "insufficient_scope": "the webhook or app lacks the 'catalog' scope: add it in the portal",
    "access_denied": "REST is not available on this portal's plan",
    "user_access_error": "the application is restricted to other users",
    "error_oauth": "the application is not installed on the portal",
    "application_not_found": "the application is not installed on the portal",
    "authorization_error": "the user the credentials belong to cannot be authorized (deactivated?)",
    "payment_required": "the application's subscription has expired",
    "portal_deleted": "the portal is closed or deleted",
    "invalid_request": "the portal refused the request (it may require https://)",
    "error_method_not_found": "method not found: check the webhook URL (it must end with /rest/<user>/<code>/)",
    "invalid_grant": "the refresh token was refused: authorize the application again and put the new tokens "
    "in the configuration",
    "invalid_client": "the OAuth client_id/client_secret were refused",
}
_TRANSIENT = {"query_limit_exceeded", "internal_server_error", "error_unexpected_answer"}


def classify(status: int, payload: Mapping[str, Any]) -> ImgsyncError:
    """Turn a portal error answer into an exception, by its ``error`` code first and its status second.

    The docs and the official SDK disagree on statuses (403 vs 401, 500 vs 410) but agree on codes, and
    catalog errors come as numbers (``200040300010``, ``0``, ``100``), so the code decides.
    """
    code = payload.get("error")
    description = redact(str(payload.get("error_description") or ""))
    name = str(code).lower() if code is not None else ""
    text = f"{code}: {description}" if description else str(code)
    if name == "expired_token":
        return TokenExpired(text)
    if name in _TRANSIENT:
        return TransientError(text, code=str(code), status=status)
    if name == "overload_limit":
        return PortalUnavailable(
            f"the portal has blocked REST calls (OVERLOAD_LIMIT): {description}; contact Bitrix24 support"
        )
    if name == "operation_time_limit":
        return OperationTimeLimit(text)
    if name in _AUTH_HINTS:
        return AuthError(f"{_AUTH_HINTS[name]} ({text})")
    if code == DENIED or name == str(DENIED):
        return ImageDenied(f"access denied to this product ({text})")
    if name == "0":
        if "not found" in description.lower() or "not exist" in description.lower():
            return ImageGone(text)
        return ImageError(text)
    if status >= 500 or status == 429:
        return TransientError(text, code=str(code), status=status)
    return ImageError(text)


class LeakyBucket:
    """A client-side copy of the portal's leaky bucket, shared by every thread of a run.

    The portal adds one to a counter per request, drains ``rate`` per second and refuses a request when
    the counter has reached ``burst``. :meth:`acquire` reserves a slot and sleeps until the counter,
    as the portal will see it, has room; reservations are handed out in order, so threads do not spin.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        # One slot of slack: the portal measures drain at arrival, we at send; jitter could cost one slot.
        self.capacity = max(1.0, float(burst) - 1.0)
        self._clock = clock
        self._sleep = sleep
        self._level = 0.0
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def _drain(self, now: float) -> None:
        self._level = max(0.0, self._level - (now - self._last) * self.rate)
        self._last = now

    def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        with self._lock:
            self._drain(self._clock())
            self._level += 1.0
            wait = max(0.0, (self._level - self.capacity) / self.rate)
            self.waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait

    def fill(self) -> None:
        """The portal said the bucket is full (503): assume it is, so every thread slows down."""
        with self._lock:
            self._drain(self._clock())
            self._level = max(self._level, self.capacity)


#: Commands are expected to cost up to this much more than the largest recent one (the portal's load varies).
HEADROOM = 1.25


class OperatingBudget:
    """Each method's operating time as the portal reports it, so calls slow down before a 429.

    The portal sums each method's execution time over ten one-minute baskets (``window``) and refuses
    (429 ``OPERATION_TIME_LIMIT``) a call when the sum already exceeds its limit (limits.md; 480 s in the
    docs' example, the real cloud value is not published). Every answer reports the sum for its method
    (``time.operating``, or ``result_time[key].operating`` per batch command). The first answer is a
    baseline (its sum is mostly others' use: another integration, the last cron run). We keep per method
    the highest recent reported sum, the rise each later answer showed (an event ``(t, seconds)``) and the
    largest recent rise per command (``cost``). Before sending ``n`` commands of a method, :meth:`reserve` sleeps until
    ``sum + n * cost`` fits under ``threshold * limit``.

    What drops out of the portal's sum meanwhile is modelled from our own events. A basket starts with a
    call and holds the calls of the next ``window / 10``; it drops out ``window`` after its start. So an
    event noted at ``t`` is gone by ``t + window`` at the latest, and was surely still counted in a report
    made before ``t + 0.9 * window``. Only events surely in the last report and surely gone since are taken
    off it: the estimate never runs below the portal's own sum. Usage by others of the same webhook shows
    up in the next report, which replaces the estimate.
    """

    def __init__(
        self,
        limit: float = 480.0,
        *,
        threshold: float = 0.9,
        window: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.threshold = threshold
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._reported: dict[str, tuple[float, float]] = {}  # method -> (sum, reported at)
        self._events: dict[str, list[tuple[float, float]]] = {}  # method -> [(at, seconds)], oldest first
        self._costs: dict[str, list[float]] = {}  # method -> the last rises per command
        self._reserved: dict[str, float] = {}  # seconds sent but not yet answered
        self.waited = 0.0
        self.spent: dict[str, float] = {}  # method -> total rise seen (what this run cost the portal)

    def note(self, method: str, timing: Any) -> None:
        """Record one command's ``time`` object (``operating``, ``operating_reset_at``)."""
        if not isinstance(timing, dict):
            return
        used = timing.get("operating")
        if not isinstance(used, int | float) or isinstance(used, bool):
            return
        now = self._clock()
        with self._lock:
            reported = self._reported.get(method)
            if reported is None:
                # The first answer's sum holds what others used in the window (another integration, the
                # last cron run) as well as this call: a baseline to measure from, not this run's cost.
                self._reported[method] = (float(used), now)
                return
            before = self._estimate(method, now)
            costs = self._costs.setdefault(method, [])
            # A sum lower than expected: baskets dropped out meanwhile, or (parallel requests) an older
            # report read after a newer one; the call still cost about as usual.
            rise = float(used) - before if used >= before else (max(costs) if costs else 0.0)
            rise = max(0.0, rise)
            costs.append(rise)
            del costs[:-20]
            self._events.setdefault(method, []).append((now, rise))
            # Keep the highest recent report: answers arrive out of order, and a lower sum read within a
            # basket's time of a higher one is more likely older than a sign that baskets dropped out.
            if used >= before or now - reported[1] >= self.window / 10:
                self._reported[method] = (float(used), now)
            self.spent[method] = self.spent.get(method, 0.0) + rise

    def cost(self, method: str) -> float | None:
        """The largest recent operating time per command of ``method`` (None before any answer)."""
        with self._lock:
            costs = self._costs.get(method)
            return max(costs) if costs else None

    def capacity(self, method: str) -> int | None:
        """How many commands of ``method`` one request should hold (None while the cost is unknown): a tenth
        of a window's budget, one basket's worth. The portal checks each command of a batch against the
        limit, and a request waits until its whole cost fits; small requests keep the sum close under the
        threshold all the time (large ones leave it, on average, half a request below), and a command
        costlier than the last ones did less harm."""
        cost = self.cost(method)
        if cost is None:
            return None
        return max(1, int(self.threshold * self.limit / (10 * HEADROOM * cost))) if cost > 0 else BATCH_SIZE

    def _estimate(self, method: str, now: float) -> float:
        """The method's sum now: the last report minus our own events dropped out since. Lock held."""
        reported = self._reported.get(method)
        if reported is None:
            return 0.0
        used, at = reported
        events = self._events.get(method, [])
        while events and events[0][0] + self.window <= at:
            events.pop(0)  # gone before the report: the report does not hold it
        return max(
            0.0, used - sum(seconds for t, seconds in self._droppable(events, at) if t + self.window <= now)
        )

    def _droppable(self, events: list[tuple[float, float]], at: float) -> Iterator[tuple[float, float]]:
        """The events surely counted in a report made at ``at`` (their basket cannot have dropped yet)."""
        return (e for e in events if at < e[0] + 0.9 * self.window)

    def delay(self, counts: Mapping[str, int]) -> float:
        """Seconds to wait before sending ``counts`` commands per method (0: send now)."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for method, n in counts.items():
                costs = self._costs.get(method)
                if not costs:
                    continue
                need = (
                    self._estimate(method, now) + self._reserved.get(method, 0.0) + n * HEADROOM * max(costs)
                )
                if need <= self.threshold * self.limit:
                    continue
                # Wait for the first of our own events whose drop-out brings it under; if none does,
                # (the rest is someone else's use, or one request is bigger than the budget) send anyway:
                # a 429 then waits for operating_reset_at as before.
                over = need - self.threshold * self.limit
                _used, at = self._reported[method]
                for t, seconds in self._droppable(self._events.get(method, []), at):
                    if t + self.window > now:
                        over -= seconds
                        if over <= 0:
                            wait = max(wait, t + self.window - now + 0.01)
                            break
        return wait

    @contextmanager
    def reserve(self, counts: Mapping[str, int], sleep: Callable[[float], None]) -> Iterator[None]:
        """Wait (through ``sleep``) until ``counts`` fit, and hold their expected cost until answered,
        so that parallel threads do not all spend the same room."""
        for _ in range(100):  # each wait lets at least one event drop out; 100 is a guard, not a plan
            wait = self.delay(counts)
            if wait <= 0:
                break
            with self._lock:
                self.waited += wait
            log.info(
                "pacing %s: waiting %.1f s for the portal's operating-time budget", ", ".join(counts), wait
            )
            sleep(wait)
        with self._lock:
            held = {m: n * max(self._costs.get(m) or [0.0]) for m, n in counts.items()}
            for m, s in held.items():
                self._reserved[m] = self._reserved.get(m, 0.0) + s
        try:
            yield
        finally:
            with self._lock:
                for m, s in held.items():
                    self._reserved[m] = max(0.0, self._reserved.get(m, 0.0) - s)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures (exponential backoff, full jitter, a cap)."""

    attempts: int = 8
    base: float = 0.25
    cap: float = 20.0
    max_wait_for_reset: float = 600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.5, 1.0) * min(self.cap, self.base * (2**attempt))


class Auth(Protocol):
    """How requests are authorized: a webhook URL, or OAuth with renewal."""

    def method_url(self, method: str) -> str: ...

    def apply(self, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Return the params to send and the credential used (for :meth:`renew`)."""
        ...

    def renew(self, used: str) -> None: ...

    def relocate(self, root: str) -> None:
        """The portal moved (a 302 to ``root``, ``scheme://host[:port]/``): send every later call there."""
        ...

    @property
    def portal_root(self) -> str: ...


class WebhookAuth:
    """An incoming webhook: ``https://portal/rest/<user>/<code>/``; it cannot be renewed."""

    def __init__(self, webhook_url: str) -> None:
        self.base = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
        parts = urlsplit(self.base)
        self._root = f"{parts.scheme}://{parts.netloc}/"
        segments = [s for s in parts.path.split("/") if s]
        if segments:
            register_secret(segments[-1])

    @property
    def portal_root(self) -> str:
        return self._root

    def method_url(self, method: str) -> str:
        return f"{self.base}{method}"

    def apply(self, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return params, ""

    def renew(self, used: str) -> None:
        raise AuthError(
            "the portal answered expired_token to a webhook call: check the webhook's expiry date"
        )

    def relocate(self, root: str) -> None:
        self.base = root.rstrip("/") + urlsplit(self.base).path
        self._root = root


class OAuth:
    """OAuth 2.0: the access token goes in ``auth``; ``expired_token`` renews it once through ``token_url``.

    ``on_renew(access_token, refresh_token)`` is called with every new pair as soon as it arrives, so the
    rotated refresh token is saved even if the run dies right after; the pair is kept in memory first, so
    a failing callback never loses it. ``sleep`` waits between retries of the token endpoint: pass a
    stop-aware one (the client's) so that Ctrl-C ends a renewal too.

    One pair per database: other processes (``check``, a dry run, a sync) renew the same pair, and the
    portal retires a refresh token once it is used. So a renewal runs inside ``renew_lock()`` (a lock
    every process on the database shares) and starts with ``load_stored()``, the pair stored now: when
    it is not the one this client last saw stored (``stored``, what it started from or wrote), another
    process renewed meanwhile, and that newer pair is adopted instead of spending a retired token.
    """

    def __init__(
        self,
        portal_url: str,
        *,
        client_id: str,
        client_secret: str,
        access_token: str,
        refresh_token: str,
        token_url: str,
        on_renew: Callable[[str, str], None] | None = None,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        load_stored: Callable[[], tuple[str, str] | None] | None = None,
        renew_lock: Callable[[], AbstractContextManager[Any]] | None = None,
        stored: tuple[str, str] | None = None,
    ) -> None:
        root = portal_url.rstrip("/")
        if root.endswith("/rest"):
            root = root[: -len("/rest")]
        self._root = root + "/"
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.token_url = token_url
        self.on_renew = on_renew
        self.session = session or requests.Session()
        self.timeout = timeout
        self.sleep = sleep
        self.renewals = 0
        self.adopted = 0  # pairs another process renewed and this one took over
        self.load_stored = load_stored
        self.renew_lock = renew_lock or nullcontext
        self._stored = stored
        self._lock = threading.Lock()
        for secret in (client_secret, access_token, refresh_token):
            register_secret(secret)

    @property
    def portal_root(self) -> str:
        return self._root

    def method_url(self, method: str) -> str:
        return f"{self._root}rest/{method}"

    def relocate(self, root: str) -> None:
        self._root = root

    def apply(self, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        token = self.access_token
        if not token:
            self.renew("")
            token = self.access_token
        return {**params, "auth": token}, token

    def renew(self, used: str) -> None:
        """Renew the access token, unless another thread already replaced ``used``."""
        with self._lock:
            if self.access_token and self.access_token != used:
                return
            with self.renew_lock():
                self._renew()

    def _renew(self) -> None:
        """Adopt the stored pair if another process renewed it, else renew it. Both locks held."""
        stored = self.load_stored() if self.load_stored is not None else None
        if stored is not None and stored != self._stored and stored[0] != self.access_token:
            self._stored = stored
            self.access_token, self.refresh_token = stored
            register_secret(stored[0])
            register_secret(stored[1])
            self.adopted += 1
            log.info("took over the OAuth tokens another imgsync process renewed")
            return
        if not self.refresh_token:
            raise AuthError("the access token expired and no refresh token is configured")
        query = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": self.refresh_token,
        }
        data = self._token_request(query)
        access, refresh = data.get("access_token"), data.get("refresh_token")
        if not access or not refresh:
            raise AuthError("the OAuth server's answer has no access_token/refresh_token")
        register_secret(access)
        register_secret(refresh)
        # In memory first: the old refresh token may be spent now, so this pair must never be lost.
        self.access_token, self.refresh_token = access, refresh
        self.renewals += 1
        log.info("renewed the OAuth access token")
        if self.on_renew is not None:
            try:
                self.on_renew(access, refresh)
            except ImgsyncError as exc:
                log.error("the renewed OAuth tokens could not be saved: %s", exc.message)
            else:
                self._stored = (access, refresh)

    def _token_request(self, query: dict[str, str]) -> dict[str, Any]:
        rng = random.Random()
        policy = RetryPolicy(attempts=5)
        last: Exception | None = None
        for attempt in range(policy.attempts):
            try:
                resp = self.session.get(
                    self.token_url,
                    params=query,
                    timeout=self.timeout,
                    headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                )
            except requests.RequestException as exc:
                last = TransientError(f"token endpoint unreachable: {redact(str(exc))}")
            else:
                try:
                    data = resp.json()
                except ValueError:
                    data = {}
                if resp.status_code == 200 and isinstance(data, dict) and "error" not in data:
                    return data
                if resp.status_code < 500 and isinstance(data, dict) and data.get("error"):
                    code = str(data["error"])
                    hint = _AUTH_HINTS.get(code.lower(), "the OAuth server refused to renew the token")
                    raise AuthError(f"{hint} ({code})")
                last = TransientError(f"token endpoint answered HTTP {resp.status_code}")
            log.info("retrying the token endpoint: %s", last)
            self.sleep(policy.delay(attempt, rng))
        raise PortalUnavailable(f"could not renew the OAuth token: {last}")


class Body(Protocol):
    """A streamed download body (what :mod:`imgsync.download` consumes)."""

    content_length: int | None
    content_type: str

    def chunks(self) -> Iterator[bytes]: ...


T = TypeVar("T")

# What a download answered instead of the file: the web tier's pages and the portal's JSON errors. A genuine
# image of any type (SVG included: it starts "<?xml" or "<svg") never starts like these.
_NOT_THE_FILE_TYPES = ("text/html", "application/xhtml+xml", "application/json")
_HTML_START = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body|<title)", re.IGNORECASE)
_JSON_ERROR_START = re.compile(rb'^\s*\{\s*"(error|error_description)"\s*:')


def not_the_file(content_type: str, first_bytes: bytes) -> str:
    """Why a download answer is not an image file ("" when it may be one): by its type, then its first bytes."""
    if content_type.lower() in _NOT_THE_FILE_TYPES:
        return f"the download answered {content_type}, not the file (a login or error page?)"
    head = first_bytes[:512].removeprefix(b"\xef\xbb\xbf")
    if _HTML_START.match(head):
        return "the download answered an HTML page, not the file (a login or error page?)"
    if _JSON_ERROR_START.match(head):
        return "the download answered a JSON error, not the file"
    return ""


class _ResponseBody:
    def __init__(self, resp: requests.Response, chunk_size: int, stop: threading.Event | None) -> None:
        self._resp = resp
        self._chunk_size = chunk_size
        self._stop = stop
        length = resp.headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None
        self.content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()

    def chunks(self) -> Iterator[bytes]:
        """The body's bytes; the first chunk is checked to be no page or error before any byte is given."""
        reason = not_the_file(self.content_type, b"")
        if reason:
            raise NotTheFile(reason)
        first = True
        try:
            for chunk in self._resp.iter_content(self._chunk_size):
                if self._stop is not None and self._stop.is_set():
                    raise Interrupted("interrupted during a download")
                if first and chunk:
                    first = False
                    reason = not_the_file("", chunk)
                    if reason:
                        raise NotTheFile(reason)
                yield chunk
        except requests.RequestException as exc:
            raise _translate(exc, self._resp.url or "", reached=True) from None


def _root_causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (urllib3 keeps the socket error as ``reason`` and in the chain)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        wrapped = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        todo += [w for w in wrapped if isinstance(w, BaseException)]


def _translate(exc: requests.RequestException, url: str, *, reached: bool) -> ImgsyncError:
    """The one place a ``requests`` exception becomes ours.

    A TLS failure and a host name that does not resolve will not get better by retrying: they stop the
    run at once, naming the host (``reached`` says the portal has answered before in this run: then a
    failure of this kind is a passing network fault, retried like the others). A refused connection is
    :data:`UNREACHABLE` (retried briefly by the caller) until the portal has answered, and a dropped
    connection (the full backoff) after.
    """
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    causes = list(_root_causes(exc))
    if isinstance(exc, requests.exceptions.SSLError) and not reached:
        other = "http://" if parts.scheme == "https" else "https://"
        return PortalAddressError(
            f"TLS with {host}:{port} failed: check the portal URL's scheme (does {host} serve {other}?) "
            "and its certificate"
        )
    if any(isinstance(c, socket.gaierror | NameResolutionError) for c in causes) and not reached:
        return PortalAddressError(
            f"the portal's host name {host!r} does not resolve: check bitrix24.webhook_url / portal_url"
        )
    # Once the portal has answered, a refused connection is a proxy or the portal restarting: a passing fault
    # that gets the whole backoff ladder, like a dropped connection. Before that it is a wrong address.
    unreachable = "DROPPED" if reached else UNREACHABLE
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransientError(f"no connection to {host}:{port} within the timeout", code=unreachable)
    if isinstance(exc, requests.exceptions.Timeout) or any(isinstance(c, ReadTimeoutError) for c in causes):
        return TransientError(f"{host}:{port} stopped answering (read timeout)", code="TIMEOUT")
    if any(isinstance(c, NewConnectionError | ConnectionRefusedError) for c in causes):
        return TransientError(f"connection to {host}:{port} refused", code=unreachable)
    return TransientError(f"{type(exc).__name__} talking to {host}:{port}", code="DROPPED")


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


#: A connection could not be made at all (refused, or no answer to the connect).
UNREACHABLE = "UNREACHABLE"
#: How many answers that are not the file (a login page) one image may get, each with a fresh link.
NOT_THE_FILE_ATTEMPTS = 4
#: How many times in a row a portal that cannot be reached is tried before the run gives up (about 2 s).
UNREACHABLE_ATTEMPTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_RELOCATIONS = 3


class Client:
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

    def wait_before_retry(self, exc: TransientError, attempt: int, what: str) -> None:
        """Wait as the portal asked (or back off) before sending again what ``exc`` proved was not run:
        for callers that resend themselves (the adds of a restore, which are never resent blindly)."""
        self._pause(exc, attempt, what)

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
                        continue
                    if resp.status_code == 413:
                        resp.close()
                        raise RequestTooLarge(f"HTTP 413 for a {method} request of {_body_size(body)} bytes")
                    data = self._parse(resp)
                if method != "batch":
                    self.operating.note(method, data.get("time"))
                return data
            except TokenExpired as exc:
                # Twice: a pair taken over from another process may have expired too, and is renewed then.
                if renewals >= 2:
                    raise AuthError(f"the portal refused the freshly renewed token ({exc})") from None
                self.auth.renew(credential)
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
                    parts = urlsplit(url)
                    raise PortalUnavailable(
                        f"the portal cannot be reached at {parts.hostname}:"
                        f"{parts.port or (443 if parts.scheme == 'https' else 80)} ({exc.message})"
                    ) from None
                self._pause(exc, attempt if exc.code != UNREACHABLE else 0, method)
        raise PortalUnavailable(
            f"the portal stayed unavailable after {self.retry.attempts} attempts ({method}: {last})"
        )

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

    # -- catalog methods ----------------------------------------------------------------------------
    def get_image(self, ref: ImageRef) -> PortalImage:
        """One ``catalog.productImage.get`` call (a fresh ``downloadUrl``)."""
        data = self.call("catalog.productImage.get", {"productId": ref.product_id, "id": ref.image_id})
        return _image_from_result(data.get("result"), ref)

    def get_images(self, refs: Sequence[ImageRef]) -> dict[ImageRef, PortalImage | ImageError]:
        """``catalog.productImage.get`` for up to 50 images in one ``batch``; errors stay per image."""
        commands = {
            f"i{n}": f"catalog.productImage.get?productId={ref.product_id}&id={ref.image_id}"
            for n, ref in enumerate(refs)
        }
        by_key = dict(zip(commands, refs, strict=True))
        out: dict[ImageRef, PortalImage | ImageError] = {}
        for key, answer in self.batch(commands).items():
            ref = by_key[key]
            if isinstance(answer.value, ImageError):
                out[ref] = answer.value
            else:
                try:
                    out[ref] = _image_from_result(answer.value, ref)
                except ImageError as exc:
                    out[ref] = exc
        return out

    def list_images(self, product_ids: Sequence[int]) -> dict[int, Listing | ImageError]:
        """Every image of up to 50 products: ``catalog.productImage.list`` commands in ``batch`` calls.

        A product whose answer says there is more (``next``) is asked again from there until it is
        complete; a listing that could not be completed comes back with ``complete=False``, so nothing is
        concluded from what it does not show.
        """
        out: dict[int, Listing | ImageError] = {}
        collected: dict[int, list[PortalImage]] = {pid: [] for pid in dict.fromkeys(product_ids)}
        problems: dict[int, str] = {}
        start: dict[int, int] = dict.fromkeys(collected, 0)
        stalled: set[int] = set()  # a next that brought the same page again: the rest is unknown
        for _page in range(MAX_LIST_PAGES):
            if not start:
                break
            commands = {
                f"p{n}": f"catalog.productImage.list?productId={pid}" + (f"&start={at}" if at else "")
                for n, (pid, at) in enumerate(start.items())
            }
            by_key = dict(zip(commands, start, strict=True))
            try:
                answers = self.batch(commands)
            except DeadlineReached:
                if _page == 0:
                    raise
                break  # the pages still to read stay unread: those listings are incomplete
            asked, start = start, {}
            for key, answer in answers.items():
                pid = by_key[key]
                if isinstance(answer.value, ImageError):
                    out[pid] = answer.value
                    continue
                items = answer.value.get("productImages") if isinstance(answer.value, dict) else None
                if not isinstance(items, list):
                    out[pid] = ImageError("catalog.productImage.list: unexpected answer")
                    continue
                known = {image.image_id for image in collected[pid]}
                fresh: list[PortalImage] = []
                for item in items:
                    if not isinstance(item, dict):
                        continue
                    try:
                        image = PortalImage.from_api(item, ImageRef(pid, 0))
                    except (TypeError, ValueError):
                        # An image the answer does not identify fails alone; the others are used.
                        problems[pid] = (
                            f"catalog.productImage.list answered an image with the id {_shown(item)}"
                        )
                        continue
                    if image.image_id not in known:
                        fresh.append(image)
                collected[pid] += fresh
                if answer.next and items:
                    if not fresh or answer.next <= asked[pid]:
                        # The portal does not page this method as asked: the same page came again. Asking
                        # on would bring it MAX_LIST_PAGES times; what lies beyond it is unknown.
                        log.info(
                            "product %d: catalog.productImage.list answered the same page again for start=%d; "
                            "its listing is incomplete (what it leaves out is asked for by id)",
                            pid,
                            asked[pid],
                        )
                        stalled.add(pid)
                    else:
                        start[pid] = answer.next
        for pid, images in collected.items():
            if pid not in out:
                # Still pages to read after MAX_LIST_PAGES: use what came, infer nothing from the rest.
                # An image left out (not identified) makes the listing incomplete too: nothing is inferred.
                out[pid] = Listing(
                    tuple(images),
                    complete=pid not in start and pid not in stalled and pid not in problems,
                    problem=problems.get(pid, ""),
                )
        return out

    def batch(self, commands: Mapping[str, str], *, chained: bool = False) -> dict[str, Answer]:
        """Run up to 50 commands in one ``batch`` call.

        Returns each key's :class:`Answer`: its result (or, for a command that failed, the error as an
        :class:`ImageError`) with the ``total`` and ``next`` of a list command. Commands that failed for
        a reason that may pass (a time limit, a 5xx inside the batch) are sent again in a new batch; an
        error that concerns the whole run (credentials, an unavailable portal) is raised.

        ``chained=True`` is for commands that reference earlier ones (``$result[key][...]``): a failed
        command is then never sent again on its own, since its references would resolve to nothing and it
        would read the wrong page. The batch runs with ``halt=1`` and the answers stop at the first failed
        command: keys after it are absent (not run). A transient failure of the *first* command is retried
        here (the whole batch again); a transient failure further on returns the answers before it, after
        the usual wait, and its error (a :class:`TransientError`) as its answer, so that the caller
        continues the chain from what it got.

        Before each attempt the commands wait for their methods' operating-time budget
        (:class:`OperatingBudget`); each command's ``result_time`` is noted for it.
        """
        if len(commands) > BATCH_SIZE:
            raise ValueError(f"a batch holds at most {BATCH_SIZE} commands, got {len(commands)}")
        methods = {key: command.partition("?")[0].strip() for key, command in commands.items()}
        pending = dict(commands)
        out: dict[str, Answer] = {}
        for attempt in range(self.retry.attempts):
            if not pending:
                break
            counts: dict[str, int] = {}
            for key in pending:
                counts[methods[key]] = counts.get(methods[key], 0) + 1
            try:
                with self.operating.reserve(counts, self._sleep):
                    data = self.call("batch", {"halt": 1 if chained else 0, "cmd": pending})
            except DeadlineReached as exc:
                if not out:
                    raise  # nothing answered: the whole batch is deferred
                return self._deferred(out, pending, exc, chained)
            result = data.get("result")
            results = _section(result, "result")
            errors = _section(result, "result_error")
            totals = _section(result, "result_total")
            nexts = _section(result, "result_next")
            for key, timing in _section(result, "result_time").items():
                if key in methods:
                    self.operating.note(methods[key], timing)
            retry_later: dict[str, str] = {}
            worst: TransientError | None = None
            for key, command in pending.items():
                if key in errors:
                    payload = errors[key] if isinstance(errors[key], dict) else {"error": errors[key]}
                    err = classify(0, payload)
                    if isinstance(err, OperationTimeLimit):
                        # This batch's own answer says when the block lifts, whatever other
                        # threads' answers have noted in self._reset_at meanwhile.
                        timing = data.get("time")
                        err.reset_at = (
                            _unix_time(payload.get("operating_reset_at"))
                            or _unix_time(
                                timing.get("operating_reset_at") if isinstance(timing, dict) else None
                            )
                            or self._reset_at
                        )
                    if err.fatal or isinstance(err, TokenExpired):
                        raise err
                    if chained:
                        if isinstance(err, TransientError):
                            if not out:  # nothing came: the whole chain may be sent again as it is
                                retry_later = dict(pending)
                                worst = err
                                break
                            try:
                                self._pause(err, attempt, f"a chain of {len(pending)} batch commands")
                            except DeadlineReached as exc:
                                return self._deferred(out, {key: command}, exc, chained)
                            out[key] = Answer(err)
                        else:
                            out[key] = Answer(_as_image_error(err))
                        return out
                    if isinstance(err, TransientError):
                        retry_later[key] = command
                        if worst is None or isinstance(err, OperationTimeLimit):
                            worst = err
                    else:
                        out[key] = Answer(_as_image_error(err))
                elif key in results:
                    out[key] = Answer(results[key], _count(totals.get(key)), _count(nexts.get(key)))
                elif chained:
                    # Not run (halt=1 after a failure we were not told about): the caller sends it again.
                    return out
                else:
                    out[key] = Answer(ImageError("the batch answer has no result for this command"))
            pending = retry_later
            if pending and worst is not None:
                try:
                    self._pause(worst, attempt, f"{len(pending)} batch commands")
                except DeadlineReached as exc:
                    if not out:
                        raise
                    # What the portal did answer is kept (an unchanged image needs no more work); only the
                    # commands still waiting for their turn are deferred.
                    return self._deferred(out, pending, exc, chained)
        for key in pending:
            out[key] = Answer(ImageError("the portal kept failing this command"))
            if chained:
                break
        return out

    @staticmethod
    def _deferred(
        out: dict[str, Answer], pending: Mapping[str, str], exc: DeadlineReached, chained: bool
    ) -> dict[str, Answer]:
        """``out`` with the commands not run by the deadline answered :class:`DeadlineReached` (a chain:
        its first one, where the caller stops)."""
        for key in pending:
            out[key] = Answer(exc)
            if chained:
                break
        return out

    # -- adds: sent once ------------------------------------------------------------------------------
    def add_images(self, adds: Sequence[ImageUpload]) -> list[PortalImage | ImgsyncError]:
        """``catalog.productImage.add`` for each of ``adds``, in ONE request: a direct call for one, else
        ``batch`` commands (in order: the portal runs a batch's commands one after another), whose
        parameters travel as a URL-encoded query string (notes §15).

        Returns, per add in order, the new image (its new id, the name the portal gave it, a fresh link)
        or the error: an :class:`ImageError` the portal answered (nothing was added), or a
        :class:`TransientError` that proves the command was not run (it may be sent again). The request
        is never sent twice: without a sure answer it raises :class:`SendUnknown`, and the adds may have
        happened. Waits for the add method's operating-time budget first, as every call does.
        """
        if not adds or len(adds) > BATCH_SIZE:
            raise ValueError(f"add_images takes 1 to {BATCH_SIZE} adds, got {len(adds)}")
        method = "catalog.productImage.add"
        if len(adds) == 1:
            add = adds[0]
            try:
                data = self.call(method, _add_params(add), once=True)
            except ImageError as exc:
                return [exc]
            except TransientError as exc:  # proven not run, and out of attempts
                return [exc]
            return [_added_image(data.get("result"), add)]
        commands = {f"a{n}": f"{method}?{urlencode(_flat(_add_params(add)))}" for n, add in enumerate(adds)}
        with self.operating.reserve({method: len(adds)}, self._sleep):
            data = self.call("batch", {"halt": 0, "cmd": commands}, once=True)
        result = data.get("result")
        results, errors = _section(result, "result"), _section(result, "result_error")
        for timing in _section(result, "result_time").values():
            self.operating.note(method, timing)
        out: list[PortalImage | ImgsyncError] = []
        for key, add in zip(commands, adds, strict=True):
            if key in errors:
                payload = errors[key] if isinstance(errors[key], dict) else {"error": errors[key]}
                err = classify(0, payload)
                if err.fatal:
                    raise err
                if isinstance(err, OperationTimeLimit):
                    # This command's own answer says when the block lifts (as in batch()).
                    err.reset_at = _unix_time(payload.get("operating_reset_at")) or self._reset_at
                if isinstance(err, TransientError) and err.code.upper() not in _NOT_RUN:
                    # e.g. INTERNAL_SERVER_ERROR inside the batch: the add may have been made.
                    raise SendUnknown(f"{method} in a batch: {err.message}; it may have been run")
                out.append(err if isinstance(err, TransientError) else _as_image_error(err))
            elif key in results:
                out.append(_added_image(results[key], add))
            else:
                raise SendUnknown(f"{method} in a batch: the answer says nothing of command {key}")
        return out

    # -- downloads ----------------------------------------------------------------------------------
    def download(self, image: PortalImage, write: Callable[[PortalImage, Body], T]) -> tuple[PortalImage, T]:
        """Download ``image``'s file and hand the body to ``write(image, body)``; return what it returned.

        Fetch fresh, use at once: a refused link is fetched anew once; a link whose access token expired
        gets its token renewed; a broken, truncated or not-the-file answer is retried with backoff and a
        new link (a one-time link may be spent). ``write`` must leave nothing under a final name when it
        raises. Returns the image as last fetched (its name may have changed meanwhile).
        """
        ref = image.ref
        refreshed = False
        attempt = renewals = pages = 0
        while True:
            log.debug("GET %s for %s", redact_url(image.download_url), ref)
            try:
                with self.open_download(image.download_url) as body:
                    return image, write(image, body)
            except TokenExpired:
                # Not the link's fault: renew the credential it carries and take a new link.
                renewals += 1
                if renewals > self.retry.attempts:
                    raise DownloadFailed("download links kept expiring with their access token") from None
                used = parse_qs(urlsplit(image.download_url).query).get("auth", [""])[0]
                self.auth.renew(used)
                image = self.get_image(ref)
            except LinkRefused as exc:
                if refreshed:
                    raise DownloadFailed(f"{exc.message}, again with a fresh link") from None
                refreshed = True
                image = self.get_image(ref)
            except TransientError as exc:
                attempt += 1
                if isinstance(exc, NotTheFile):
                    # A portal that keeps answering a login page will not stop soon: a few fresh links, then
                    # the image fails (recorded as such; nothing of the page is kept).
                    pages += 1
                    if pages >= NOT_THE_FILE_ATTEMPTS:
                        raise DownloadFailed(f"{exc.message}, {pages} times with fresh links") from None
                if attempt >= self.retry.attempts:
                    raise DownloadFailed(f"download failed after {attempt} attempts: {exc.message}") from None
                self._pause(exc, attempt, f"the download of {ref}")
                if exc.link_spent:
                    image = self.get_image(ref)

    @contextmanager
    def open_download(self, url: str, *, chunk_size: int = 256 * 1024) -> Iterator[Body]:
        """GET a ``downloadUrl`` through the bucket with the headers the docs ask for; one attempt.

        Raises :class:`LinkRefused` for 401/403/404 (fetch a new link), :class:`TransientError` for
        5xx, 503 and dropped connections, :class:`NotTheFile` (from the body) for a page or an error
        answered in place of the file.
        """
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            # The file as stored: a proxy that compresses it (SVG, say) would send a Content-Length of the
            # compressed bytes, and every such image would fail its size check as truncated.
            "Accept-Encoding": "identity",
            "Accept-Language": "en-US,en;q=0.9",
            "Referer": self.auth.portal_root,
        }
        resp = self._send("GET", url, headers=headers, stream=True, hooks={"response": refuse_downgrade})
        try:
            status = resp.status_code
            code = _error_code(resp) if status != 200 else ""
            if status in (401, 403, 404, 410):
                # Only a link that carries an access token (OAuth) can have it renewed; a webhook's link that
                # is said to have expired is refused like any other: a fresh link is fetched.
                if code.lower() == "expired_token" and parse_qs(urlsplit(url).query).get("auth"):
                    # The link lives as long as the access token inside it: renew that token first.
                    raise TokenExpired(f"download link refused: its access token expired (HTTP {status})")
                raise LinkRefused(f"download link refused (HTTP {status}{' ' + code if code else ''})")
            if status == 503 or status == 429 or status >= 500:
                if code.upper() == "OVERLOAD_LIMIT":
                    raise PortalUnavailable("the portal has blocked REST calls (OVERLOAD_LIMIT)")
                raise TransientError(
                    f"download answered HTTP {status} {code}".strip(), code=code, status=status
                )
            if status != 200:
                raise ImageError(f"download answered HTTP {status}")
            yield _ResponseBody(resp, chunk_size, self.stop)
        finally:
            resp.close()


#: A product with more images than this many pages is used as listed, and nothing is inferred from it.
MAX_LIST_PAGES = 20


@dataclass(frozen=True)
class Answer:
    """One command's answer in a ``batch``: its result (or error), and a list command's ``total``/``next``."""

    value: Any
    total: int | None = None
    next: int | None = None


@dataclass(frozen=True)
class Listing:
    """The images a product listing showed; ``complete`` is false when pages are known to be missing."""

    images: tuple[PortalImage, ...]
    complete: bool = True
    #: Why an image of the answer was left out (an id that is no number): that image fails.
    problem: str = ""


#: Failures that prove a request was not run: the bucket's 503, the time limit's 429, no connection made.
_NOT_RUN = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", UNREACHABLE})


def _body_size(body: Any) -> int:
    try:
        return len(json.dumps(body))
    except (TypeError, ValueError):
        return 0


def _add_params(add: ImageUpload) -> dict[str, Any]:
    encoded = base64.b64encode(add.content).decode("ascii")
    return {"fields": {"productId": add.product_id, "type": add.type}, "fileContent": [add.name, encoded]}


def _flat(params: Mapping[Any, Any], prefix: str = "") -> list[tuple[str, str]]:
    """PHP-style query pairs (``fields[productId]=12``, ``fileContent[0]=a.png``) of nested params."""
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            out += _flat(value, name)
        elif isinstance(value, list | tuple):
            out += _flat(dict(enumerate(value)), name)
        else:
            out.append((name, str(value)))
    return out


def _added_image(result: Any, add: ImageUpload) -> PortalImage | ImgsyncError:
    item = result.get("productImage") if isinstance(result, dict) else None
    if not isinstance(item, dict):
        return SendUnknown(
            "catalog.productImage.add: an answer without the new image; it may have been added"
        )
    try:
        image = PortalImage.from_api(item, ImageRef(add.product_id, 0))
    except (TypeError, ValueError):
        return SendUnknown(
            "catalog.productImage.add: an answer with a malformed image; it may have been added"
        )
    if not image.image_id:
        return SendUnknown("catalog.productImage.add: an answer without the new image's id")
    return image


def _as_image_error(err: ImgsyncError) -> ImageError:
    return err if isinstance(err, ImageError) else ImageError(err.message)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _error_code(resp: requests.Response) -> str:
    """The ``error`` of a JSON error body, or "" (a download's error may be HTML from nginx, or cut short)."""
    if "json" not in resp.headers.get("Content-Type", ""):
        return ""
    try:
        data = resp.json()
    except (ValueError, requests.RequestException):
        return ""
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _unix_time(value: Any) -> float | None:
    """A unix time from an answer (``operating_reset_at``), or None when it is absent or not a number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _section(result: Any, name: str) -> dict[str, Any]:
    """A batch result section; empty ones come as ``[]`` and numeric keys may come as a list."""
    if not isinstance(result, dict):
        return {}
    value = result.get(name)
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {str(n): v for n, v in enumerate(value)}
    return {}


def _image_from_result(result: Any, ref: ImageRef) -> PortalImage:
    item = result.get("productImage") if isinstance(result, dict) else None
    if not isinstance(item, dict):
        raise ImageError("catalog.productImage.get: unexpected answer")
    try:
        image = PortalImage.from_api(item, ref)
    except (TypeError, ValueError):
        raise ImageError(f"catalog.productImage.get answered the image with the id {_shown(item)}") from None
    if (image.product_id, image.image_id) != (ref.product_id, ref.image_id):
        raise ImageError(f"the portal answered for image {image.product_id}:{image.image_id}, asked {ref}")
    return image


def _shown(item: Mapping[str, Any]) -> str:
    """An answer's ``productId``/``id`` pair for a message, short and without control characters."""
    text = f"{item.get('productId')!r}:{item.get('id')!r}"
    return redact("".join(c for c in text if c.isprintable())[:80])
