"""Downloads: a file fetched through its ``downloadUrl``, a fresh link when the old one will not do, and
the body checked to be the file (not a login page or a JSON error) before any byte is handed on."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import requests

from ..errors import (
    DownloadFailed,
    ImageError,
    ImgsyncError,
    Interrupted,
    LinkRefused,
    NotTheFile,
    PortalUnavailable,
    TokenExpired,
    TransientError,
)
from ..models import ImageRef, PortalImage
from ..redact import redact_url
from .auth import USER_AGENT
from .errors import Expired, _translate
from .images import _image_from_result
from .transport import Transport, refuse_downgrade

log = logging.getLogger(__name__)


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


#: How many answers that are not the file (a login page) one image may get, each with a fresh link.
NOT_THE_FILE_ATTEMPTS = 4


class Downloads(Transport):
    def fresh_link(self, ref: ImageRef) -> PortalImage | None:
        """One ``catalog.productImage.get`` (a fresh ``downloadUrl``), sent once: it is one step of a
        download's attempt, and the download's budget retries it (None: the portal moved, ask again)."""
        data = self.call_once("catalog.productImage.get", {"productId": ref.product_id, "id": ref.image_id})
        return None if data is None else _image_from_result(data.get("result"), ref)

    # -- downloads ----------------------------------------------------------------------------------
    def download(self, image: PortalImage, write: Callable[[PortalImage, Body], T]) -> tuple[PortalImage, T]:
        """Download ``image``'s file and hand the body to ``write(image, body)``; return what it returned.

        Fetch fresh, use at once: a refused link is fetched anew once; a link whose access token expired
        gets its token renewed; a broken, truncated or not-the-file answer is retried with backoff and a
        new link (a one-time link may be spent). ``write`` must leave nothing under a final name when it
        raises. Returns the image as last fetched (its name may have changed meanwhile).

        One budget for the image (:meth:`~.transport.Transport.retrying`): at most ``retry.attempts``
        attempts, each at most one ``catalog.productImage.get`` for a fresh link (sent once) and one GET of
        the file, so one image costs at most ``2 * retry.attempts`` portal requests (16 by default), plus
        the answers of a moved portal (at most 3 a run) and, with OAuth, the token renewals' own requests.
        """
        ref = image.ref
        current = image
        need_link = False
        refused = pages = 0
        step = "file"  # what the attempt was doing when it failed: "link" (the get) or "file" (the GET)

        def attempt(last: ImgsyncError | None) -> tuple[PortalImage, T]:
            nonlocal current, need_link, step
            if isinstance(last, Expired):
                # Not the link's fault: renew the credential it carries (or the get's), then take a new link.
                self.auth.renew(last.credential)
            if isinstance(last, TokenExpired | LinkRefused) or (
                isinstance(last, TransientError) and last.link_spent
            ):
                need_link = True  # a one-time link may be spent, or the link was refused
            if need_link:
                step = "link"
                fresh = self.fresh_link(ref)
                if fresh is None:
                    fresh = self.fresh_link(ref)  # moved: once more, at the new address
                if fresh is None:
                    raise TransientError("the portal keeps moving", code="MOVED")
                current, need_link, step = fresh, False, "file"
            log.debug("GET %s for %s", redact_url(current.download_url), ref)
            with self.open_download(current.download_url) as body:
                return current, write(current, body)

        link_failures = 0  # attempts in a row that failed at the fresh-link get (REST, not the file)

        def give_up(exc: ImgsyncError, n: int) -> ImgsyncError | None:
            nonlocal refused, pages, link_failures
            link_failures = link_failures + 1 if step == "link" else 0
            if isinstance(exc, LinkRefused):
                refused += 1
                if refused > 1:
                    return DownloadFailed(f"{exc.message}, again with a fresh link")
            if isinstance(exc, NotTheFile):
                # A portal that keeps answering a login page will not stop soon: a few fresh links, then the
                # image fails (recorded as such; nothing of the page is kept).
                pages += 1
                if pages >= NOT_THE_FILE_ATTEMPTS:
                    return DownloadFailed(f"{exc.message}, {pages} times with fresh links")
            if n < self.retry.attempts:
                return None
            if link_failures >= self.retry.attempts - 1:
                # REST itself kept failing, every attempt since the first (which needs no get): the run stops,
                # as every call does (the image is not to blame). A budget spent on file and link failures
                # mixed, as in a storm of 503s, fails this image alone.
                return PortalUnavailable(
                    f"the portal stayed unavailable after {n} attempts (catalog.productImage.get: {exc})"
                )
            if isinstance(exc, TokenExpired):
                return DownloadFailed("download links kept expiring with their access token")
            return DownloadFailed(f"download failed after {n} attempts: {exc.message}")

        return self.retrying(f"the download of {ref}", attempt, give_up)

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
                    raise Expired(
                        f"download link refused: its access token expired (HTTP {status})",
                        credential=parse_qs(urlsplit(url).query).get("auth", [""])[0],
                    )
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


def _error_code(resp: requests.Response) -> str:
    """The ``error`` of a JSON error body, or "" (a download's error may be HTML from nginx, or cut short)."""
    if "json" not in resp.headers.get("Content-Type", ""):
        return ""
    try:
        data = resp.json()
    except (ValueError, requests.RequestException):
        return ""
    return str(data.get("error", "")) if isinstance(data, dict) else ""
