"""The Bitrix24 REST client: auth, one request path, ``batch``, the leaky bucket, retries, error codes.

Every request to the portal, download links included, goes through :meth:`Client._send`, which owns
pacing (a client-side copy of the portal's leaky bucket), retries with backoff and jitter, OAuth renewal
and the translation of the portal's error codes into :mod:`imgsync.errors`. No ``requests`` exception
leaves this module.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import __version__
from .errors import (
    AuthError,
    ImageDenied,
    ImageError,
    ImageGone,
    ImgsyncError,
    Interrupted,
    LinkRefused,
    OperationTimeLimit,
    PortalUnavailable,
    TokenExpired,
    TransientError,
)
from .models import ImageRef, PortalImage
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


class OAuth:
    """OAuth 2.0: the access token goes in ``auth``; ``expired_token`` renews it once through ``token_url``.

    ``on_renew(access_token, refresh_token)`` is called with every new pair before it is used, so the
    rotated refresh token is saved even if the run dies right after.
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
        self.renewals = 0
        self._lock = threading.Lock()
        for secret in (client_secret, access_token, refresh_token):
            register_secret(secret)

    @property
    def portal_root(self) -> str:
        return self._root

    def method_url(self, method: str) -> str:
        return f"{self._root}rest/{method}"

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
            if self.on_renew is not None:
                self.on_renew(access, refresh)
            self.access_token, self.refresh_token = access, refresh
            self.renewals += 1
            log.info("renewed the OAuth access token")

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
            time.sleep(policy.delay(attempt, rng))
        raise PortalUnavailable(f"could not renew the OAuth token: {last}")


class Body(Protocol):
    """A streamed download body (what :mod:`imgsync.download` consumes)."""

    content_length: int | None
    content_type: str

    def chunks(self) -> Iterator[bytes]: ...


class _ResponseBody:
    def __init__(self, resp: requests.Response, chunk_size: int, stop: threading.Event | None) -> None:
        self._resp = resp
        self._chunk_size = chunk_size
        self._stop = stop
        length = resp.headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None
        self.content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()

    def chunks(self) -> Iterator[bytes]:
        try:
            for chunk in self._resp.iter_content(self._chunk_size):
                if self._stop is not None and self._stop.is_set():
                    raise Interrupted("interrupted during a download")
                yield chunk
        except requests.RequestException as exc:
            raise TransientError(f"download broke off: {type(exc).__name__}", code="DROPPED") from None


class Client:
    """The portal client. Thread-safe: one instance serves every worker of a run."""

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
    ) -> None:
        self.auth = auth
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self.bucket = LeakyBucket(rate_limit, burst, sleep=self._sleep)
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, 2 * workers + 4), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._reset_at: float | None = None  # latest time.operating_reset_at the portal reported
        self.requests_sent = 0
        self.retries = 0
        self._count_lock = threading.Lock()

    # -- pacing and sleeping ------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted("interrupted")

    def backoff(self, attempt: int) -> None:
        with self._rng_lock:
            delay = self.retry.delay(attempt, self._rng)
        with self._count_lock:
            self.retries += 1
        self._sleep(delay)

    def _wait_for_reset(self, err: OperationTimeLimit, attempt: int) -> None:
        reset_at = err.reset_at or self._reset_at
        now = time.time()
        if reset_at and reset_at > now:
            wait = min(reset_at - now + 0.2, self.retry.max_wait_for_reset)
            log.warning("the portal's time limit for this method is reached; waiting %.1f s", wait)
            self._sleep(wait)
        else:
            self.backoff(attempt)

    # -- the one request path -----------------------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP request through the bucket; connection failures become :class:`TransientError`."""
        if self.stop.is_set():
            raise Interrupted("interrupted")
        self.bucket.acquire()
        with self._count_lock:
            self.requests_sent += 1
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise TransientError(f"{type(exc).__name__} talking to the portal", code="DROPPED") from None

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call one REST method and return the whole answer (``result``, ``time``, ...).

        Retries what may be retried; raises :class:`AuthError`, :class:`PortalUnavailable` or the
        method's own error (an :class:`ImageError`) otherwise.
        """
        renewed = False
        last: ImgsyncError | None = None
        for attempt in range(self.retry.attempts):
            body, credential = self.auth.apply(dict(params or {}))
            try:
                resp = self._send(
                    "POST",
                    self.auth.method_url(method),
                    json=body,
                    headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                )
                data = self._parse(resp)
            except TokenExpired as exc:
                if renewed:
                    raise AuthError(f"the portal refused the freshly renewed token ({exc})") from None
                self.auth.renew(credential)
                renewed = True
                continue
            except OperationTimeLimit as exc:
                last = exc
                self._wait_for_reset(exc, attempt)
                continue
            except TransientError as exc:
                last = exc
                if exc.code == "QUERY_LIMIT_EXCEEDED":
                    self.bucket.fill()
                log.debug("%s failed (%s); retrying", method, exc)
                self.backoff(attempt)
                continue
            return data
        raise PortalUnavailable(
            f"the portal stayed unavailable after {self.retry.attempts} attempts ({method}: {last})"
        )

    def _parse(self, resp: requests.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if resp.status_code >= 500 or resp.status_code == 429:
                raise TransientError(f"HTTP {resp.status_code} without a JSON body", status=resp.status_code)
            raise ImgsyncError(
                f"the portal answered HTTP {resp.status_code} without a JSON body ({redact_url(resp.url)})"
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
        for key, value in self.batch(commands).items():
            ref = by_key[key]
            if isinstance(value, ImgsyncError):
                out[ref] = value if isinstance(value, ImageError) else ImageError(value.message)
            else:
                try:
                    out[ref] = _image_from_result(value, ref)
                except ImageError as exc:
                    out[ref] = exc
        return out

    def list_images(self, product_ids: Sequence[int]) -> dict[int, list[PortalImage] | ImageError]:
        """``catalog.productImage.list`` for up to 50 products in one ``batch``."""
        commands = {
            f"p{n}": f"catalog.productImage.list?productId={pid}" for n, pid in enumerate(product_ids)
        }
        by_key = dict(zip(commands, product_ids, strict=True))
        out: dict[int, list[PortalImage] | ImageError] = {}
        for key, value in self.batch(commands).items():
            pid = by_key[key]
            if isinstance(value, ImgsyncError):
                out[pid] = value if isinstance(value, ImageError) else ImageError(value.message)
                continue
            items = value.get("productImages") if isinstance(value, dict) else None
            if not isinstance(items, list):
                out[pid] = ImageError("catalog.productImage.list: unexpected answer")
                continue
            out[pid] = [
                PortalImage.from_api(item, ImageRef(pid, 0)) for item in items if isinstance(item, dict)
            ]
        return out

    def batch(self, commands: Mapping[str, str]) -> dict[str, Any]:
        """Run up to 50 commands in one ``batch`` call (``halt=0``).

        Returns each key's result, or an exception for a command that failed. Commands that failed
        for a transient reason (a time limit, a 5xx inside the batch) are sent again in a new batch.
        """
        if len(commands) > BATCH_SIZE:
            raise ValueError(f"a batch holds at most {BATCH_SIZE} commands, got {len(commands)}")
        pending = dict(commands)
        out: dict[str, Any] = {}
        for attempt in range(self.retry.attempts):
            if not pending:
                break
            data = self.call("batch", {"halt": 0, "cmd": pending})
            result = data.get("result")
            results = _section(result, "result")
            errors = _section(result, "result_error")
            retry_later: dict[str, str] = {}
            limit: OperationTimeLimit | None = None
            for key, command in pending.items():
                if key in errors:
                    payload = errors[key] if isinstance(errors[key], dict) else {"error": errors[key]}
                    err = classify(0, payload)
                    if isinstance(err, OperationTimeLimit | TransientError):
                        retry_later[key] = command
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
                            limit = err
                    elif isinstance(err, TokenExpired | AuthError | PortalUnavailable):
                        raise err
                    else:
                        out[key] = err
                elif key in results:
                    out[key] = results[key]
                else:
                    out[key] = ImageError("the batch answer has no result for this command")
            pending = retry_later
            if pending:
                if limit is not None:
                    self._wait_for_reset(limit, attempt)
                else:
                    self.backoff(attempt)
        for key in pending:
            out[key] = ImageError("the portal kept failing this command")
        return out

    # -- downloads ----------------------------------------------------------------------------------
    def fresh_image(
        self, ref: ImageRef, refused_url: str = "", *, token_expired: bool = False
    ) -> PortalImage:
        """A new ``downloadUrl`` for ``ref``; when the old link's token expired, renew that token first."""
        if token_expired:
            used = parse_qs(urlsplit(refused_url).query).get("auth", [""])[0]
            self.auth.renew(used)
        return self.get_image(ref)

    @contextmanager
    def open_download(self, url: str, *, chunk_size: int = 256 * 1024) -> Iterator[Body]:
        """GET a ``downloadUrl`` through the bucket with the headers the docs ask for; one attempt.

        Raises :class:`LinkRefused` for 401/403/404 (fetch a new link), :class:`TransientError` for
        5xx, 503 and dropped connections.
        """
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "Accept-Language": "en-US,en;q=0.9",
            "Referer": self.auth.portal_root,
        }
        resp = self._send("GET", url, headers=headers, stream=True)
        try:
            status = resp.status_code
            code = _error_code(resp) if status != 200 else ""
            if status in (401, 403, 404, 410):
                if code.lower() == "expired_token":
                    # The link lives as long as the access token inside it: renew that token first.
                    raise TokenExpired(f"download link refused: its access token expired (HTTP {status})")
                raise LinkRefused(f"download link refused (HTTP {status}{' ' + code if code else ''})")
            if status == 503 or status == 429 or status >= 500:
                if code.upper() == "OVERLOAD_LIMIT":
                    raise PortalUnavailable("the portal has blocked REST calls (OVERLOAD_LIMIT)")
                if code.upper() == "QUERY_LIMIT_EXCEEDED":
                    self.bucket.fill()
                raise TransientError(
                    f"download answered HTTP {status} {code}".strip(), code=code, status=status
                )
            if status != 200:
                raise ImageError(f"download answered HTTP {status}")
            yield _ResponseBody(resp, chunk_size, self.stop)
        finally:
            resp.close()


def _error_code(resp: requests.Response) -> str:
    """The ``error`` of a JSON error body, or "" (a download's error may be HTML from nginx)."""
    if "json" not in resp.headers.get("Content-Type", ""):
        return ""
    try:
        data = resp.json()
    except ValueError:
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
    image = PortalImage.from_api(item, ref)
    if (image.product_id, image.image_id) != (ref.product_id, ref.image_id):
        raise ImageError(f"the portal answered for image {image.product_id}:{image.image_id}, asked {ref}")
    return image
