"""Who is calling: the webhook's user and code, OAuth access tokens, and the OAuth server (``/oauth/token/``,
the refresh grant only).

The behaviour is described in the package docstring (:mod:`imgsync.emulator`), "Errors" and "OAuth server".
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from .answers import ApiError
from .server import Reply, Request, json_reply

__all__ = ["Cred", "Credentials"]


@dataclass(frozen=True, slots=True)
class Cred:
    """Who is calling: ``token`` is the OAuth access token (None for the webhook); ``key`` binds links."""

    token: str | None
    key: str


class Credentials:
    """The webhook check, the OAuth tokens issued so far, and the token endpoint."""

    webhook_user: int
    webhook_code: str
    scopes: tuple[str, ...]
    client_id: str
    client_secret: str
    access_token_ttl: float
    rotate_refresh_tokens: bool
    _port: int
    _state_lock: threading.Lock

    if TYPE_CHECKING:

        @property
        def url(self) -> str: ...

        def _count(self, label: str) -> None: ...

    def _init_credentials(self) -> None:
        self._access: dict[str, float] = {}  # access token -> monotonic expiry
        self._refresh: set[str] = set()

    def issue_tokens(self) -> tuple[str, str]:
        """A fresh OAuth pair ``(access_token, refresh_token)``."""
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        with self._state_lock:
            self._access[access] = time.monotonic() + self.access_token_ttl
            self._refresh.add(refresh)
        return access, refresh

    def expire_access_tokens(self) -> None:
        """Every access token issued so far answers ``expired_token`` from now on."""
        with self._state_lock:
            for token in self._access:
                self._access[token] = -math.inf

    def _webhook_key(self) -> str:
        return f"webhook|{self.webhook_user}|{self.webhook_code}"

    def _authenticate(self, hook: tuple[str, str] | None, params: dict[str, Any]) -> Cred:
        token = params.pop("auth", None)
        if hook is not None:
            user, code = hook
            if user != str(self.webhook_user) or not hmac.compare_digest(
                code.encode(), str(self.webhook_code).encode()
            ):
                raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
            return Cred(None, self._webhook_key())
        if not token or not isinstance(token, str):
            raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
        self._check_access_token(token)
        return Cred(token, f"oauth|{token}")

    def _check_access_token(self, token: str) -> None:
        expires = self._access.get(token)
        if expires is None:
            raise ApiError(401, "invalid_token", "Unable to get application by token")
        if time.monotonic() >= expires:
            raise ApiError(401, "expired_token", "The access token provided has expired.")

    def _oauth(self, request: Request) -> Reply:
        """``/oauth/token/``: the refresh grant only. Not in the portal's bucket, never faulted or delayed."""
        self._count("oauth.token")
        args = dict(parse_qsl(request.query))
        if request.body:
            args.update(parse_qsl(request.body.decode("utf-8", "replace")))
        if args.get("client_id") != self.client_id or args.get("client_secret") != self.client_secret:
            return json_reply(
                401, {"error": "invalid_client", "error_description": "Invalid client credentials"}
            )
        if args.get("grant_type") != "refresh_token":
            return json_reply(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "Only grant_type=refresh_token is supported",
                },
            )
        with self._state_lock:
            old = args.get("refresh_token", "")
            if old not in self._refresh:
                return json_reply(
                    400,
                    {"error": "invalid_grant", "error_description": "The refresh token is invalid or used"},
                )
            if self.rotate_refresh_tokens:
                self._refresh.discard(old)
        access, refresh = self.issue_tokens()
        return json_reply(
            200,
            {
                "access_token": access,
                "client_endpoint": f"{self.url}/rest/",
                "domain": f"127.0.0.1:{self._port}",
                "expires": int(time.time() + self.access_token_ttl),
                "expires_in": math.ceil(self.access_token_ttl),
                "member_id": hashlib.md5(self.url.encode()).hexdigest(),
                "refresh_token": refresh,
                "scope": ",".join(self.scopes),
                "server_endpoint": f"{self.url}/rest/",
                "status": "L",
                "user_id": self.webhook_user,
            },
        )
