"""Signed download links (the ``downloadUrl`` of an image) and the download answer
(``/rest/download.json``).

The behaviour is described in the package docstring (:mod:`imgsync.emulator`), "Download links".
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from .answers import HTML, NGINX_404, ApiError
from .faults import Faults, Stats
from .server import Reply, Request, json_reply

if TYPE_CHECKING:
    from .oauth import Cred
    from .state import Stored

__all__ = ["Links"]


def _disposition(name: str) -> str:
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    value = f'attachment; filename="{plain}"'
    if plain != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def _browser_like(headers: Any) -> bool:
    """The headers the docs require on a download; without them nginx answers 404."""
    return bool(
        headers.get("Referer") and headers.get("Accept-Language") and headers.get("User-Agent", "").strip()
    )


class Links:
    """A per-portal secret signs each link; with ``one_time_links`` the nonces served are kept."""

    latency: float
    link_ttl: float
    one_time_links: bool
    count_downloads: bool
    faults: Faults
    _lock: threading.Lock
    _stats: Stats
    _state_lock: threading.Lock
    _files: dict[int, Stored]
    _denied: set[int]

    if TYPE_CHECKING:

        @property
        def url(self) -> str: ...

        def _admit(self, label: str, kind: str, counted: bool) -> tuple[Reply | None, str]: ...

        def _mangle(self, reply: Reply, mangle: str) -> Reply: ...

        def _inject(self, kind: str) -> None: ...

        def _check_access_token(self, token: str) -> None: ...

        def _webhook_key(self) -> str: ...

    def _init_links(self) -> None:
        self._used_links: set[str] = set()
        self._secret = secrets.token_bytes(32)

    def _sign(self, payload: str, issued: str, key: str) -> str:
        message = f"download|catalog|{payload}|{issued}|{key}".encode()
        return base64.b64encode(hmac.new(self._secret, message, hashlib.sha256).digest()).decode()

    def _link(self, file_id: int, cred: Cred) -> str:
        payload = base64.b64encode(f"id={file_id}&_={secrets.token_hex(16)}".encode()).decode()
        issued = f"{time.time():.6f}"
        state = base64.b64encode(f"download|catalog|{payload}|{issued}".encode()).decode()
        token = quote(f"catalog|{payload}|{state}.{self._sign(payload, issued, cred.key)}", safe="")
        auth = f"auth={cred.token}&" if cred.token else ""
        return f"{self.url}/rest/download.json?{auth}token={token}"

    def _open_link(self, query: str) -> tuple[int, str]:
        """Check a download link; return (file id, nonce) or raise the 401 it deserves."""
        args = dict(parse_qsl(query))
        auth = args.get("auth")
        failed = ApiError(401, "LINK_CHECK_FAILED", "Link check failed")
        try:
            scope, payload, signed = args["token"].split("|")
            state, signature = signed.rsplit(".", 1)
            issued = base64.b64decode(state, validate=True).decode().split("|")[3]
            fields = dict(parse_qsl(base64.b64decode(payload, validate=True).decode()))
            file_id, nonce, issued_at = int(fields["id"]), fields["_"], float(issued)
        except (KeyError, ValueError, IndexError):
            raise failed from None
        key = f"oauth|{auth}" if auth else self._webhook_key()
        # Bytes, not str: a tampered link may decode to non-ASCII text, which compare_digest refuses.
        expected = self._sign(payload, issued, key).encode()
        if scope != "catalog" or not hmac.compare_digest(signature.encode(), expected):
            raise failed
        if auth:
            self._check_access_token(auth)
        if time.time() - issued_at > self.link_ttl:
            raise ApiError(401, "LINK_EXPIRED", "Link check failed: the link has expired")
        return file_id, nonce

    def _download(self, request: Request) -> Reply:
        early, mangle = self._admit("download", "download", counted=self.count_downloads)
        if early is not None:
            return early
        return self._mangle(self._download_answer(request), mangle)

    def _download_answer(self, request: Request) -> Reply:
        delay = self.latency
        try:
            file_id, nonce = self._open_link(request.query)
            with self._state_lock:
                stored = self._files.get(file_id)
                denied = stored is not None and stored.image.product_id in self._denied
            if stored is None:
                raise ApiError(404, "ERROR_FILE_NOT_FOUND", "File is not found")
            if denied:
                raise ApiError(403, 200040300010, "Access Denied")
            image = stored.image
            headers = [("Content-Disposition", _disposition(image.name))]
            if not _browser_like(request.headers):
                return Reply(404, NGINX_404, HTML, headers, delay=delay)
            if self.one_time_links:
                with self._state_lock:
                    if nonce in self._used_links:
                        raise ApiError(401, "LINK_USED", "Link check failed: the link was already used")
                    self._used_links.add(nonce)
        except ApiError as exc:
            return json_reply(exc.status, exc.body(), delay)
        faults = self.faults
        truncate = faults.roll(faults.truncate_rate)
        slow = faults.slow_download
        chunked = faults.chunked_downloads
        if truncate:
            self._inject("truncate")
        if slow > 0:
            self._inject("slow")
        if chunked:
            self._inject("chunked")
        body: bytes | memoryview = image.content
        if faults.gzip_downloads and "gzip" in request.headers.get("Accept-Encoding", "").lower():
            self._inject("gzip")
            body = gzip.compress(bytes(body), mtime=0)
            headers.append(("Content-Encoding", "gzip"))
        return Reply(
            200,
            body,
            image.content_type,
            headers,
            delay=delay,
            truncate=truncate,
            slow=slow,
            chunked=chunked,
            on_sent=self._download_sent,
        )

    def _download_sent(self, sent: int, complete: bool) -> None:
        with self._lock:
            self._stats.download_bytes += sent
            if complete:
                self._stats.downloads_served += 1
