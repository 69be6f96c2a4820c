"""How requests are authorized: an incoming webhook, or OAuth with renewal, and a portal that moved.

The transport asks the :class:`Auth` for each method's URL and the credential to send, renews it after
``expired_token`` and moves it after a 302 to a new portal address.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from .. import __version__
from ..errors import (
    AuthError,
    ImgsyncError,
    PortalUnavailable,
    TransientError,
)
from ..redact import redact, register_secret
from .errors import _AUTH_HINTS
from .pacing import RetryPolicy

log = logging.getLogger(__name__)

USER_AGENT = f"imgsync/{__version__}"


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
