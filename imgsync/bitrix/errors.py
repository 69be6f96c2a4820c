"""What the portal's answers and ``requests``' failures mean, as :mod:`imgsync.errors` classes.

:func:`classify` reads a portal error answer (its ``error`` code first, its status second); :func:`_translate`
is the one place a ``requests`` exception becomes ours. Each resulting error carries the decision about it
(``fatal``, ``retryable``, ``retry_after``, ``link_spent``): the transport asks it instead of keeping lists.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NameResolutionError, NewConnectionError, ReadTimeoutError

from ..errors import (
    AuthError,
    ImageDenied,
    ImageError,
    ImageGone,
    ImgsyncError,
    OperationTimeLimit,
    PortalAddressError,
    PortalUnavailable,
    TokenExpired,
    TransientError,
)
from ..redact import redact

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


class Expired(TokenExpired):
    """``expired_token``, with the credential that was sent: the one :meth:`~.auth.Auth.renew` replaces."""

    def __init__(self, message: str | None = None, *, credential: str = "") -> None:
        super().__init__(message)
        self.credential = credential


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


#: A connection could not be made at all (refused, or no answer to the connect).
UNREACHABLE = "UNREACHABLE"

#: Failures that prove a request was not run: the bucket's 503, the time limit's 429, no connection made.
_NOT_RUN = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", UNREACHABLE})
