"""What the portal answers besides results: :class:`ApiError`, nginx's pages, the canned error bodies, and
the small readers and writers every method shares (integer parameters, ``select``, PHP's arrays, the portal's
dates).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from .catalog import PORTAL_TZ

__all__ = [
    "EXPIRED",
    "HTML",
    "HTML_UTF8",
    "INTERNAL",
    "JSON_DOWNLOAD_ERROR",
    "LOGIN_PAGE",
    "NGINX_302",
    "NGINX_404",
    "NGINX_502",
    "NGINX_504",
    "OVERLOAD",
    "QUERY_LIMIT",
    "ApiError",
    "int_param",
    "iso",
    "php_array",
    "select_param",
    "truthy",
]


NGINX_404 = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
NGINX_504 = (
    b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
NGINX_302 = (
    b"<html>\r\n<head><title>302 Found</title></head>\r\n<body>\r\n"
    b"<center><h1>302 Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
#: What a download answers when the portal sends its login form instead of the file.
LOGIN_PAGE = (
    b'<!DOCTYPE html><html lang="en"><head><meta charset="UTF-8"><title>Authorization</title></head>'
    b'<body class="bx-login"><div class="login-box"><h1>Bitrix24</h1>'
    b'<form name="form_auth" method="post" target="_top" action="/auth/?login=yes">'
    b'<input type="hidden" name="AUTH_FORM" value="Y"><input type="hidden" name="TYPE" value="AUTH">'
    b'<input type="text" name="USER_LOGIN" placeholder="Login"><input type="password" name="USER_PASSWORD">'
    b'<input type="submit" name="Login" value="Log In"></form></div></body></html>'
)
HTML = "text/html"
HTML_UTF8 = "text/html; charset=UTF-8"
JSON_DOWNLOAD_ERROR = {
    "error": "ERROR_UNEXPECTED_ANSWER",
    "error_description": "Server returned an unexpected response.",
}
QUERY_LIMIT = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
OVERLOAD = {"error": "OVERLOAD_LIMIT", "error_description": "REST API is blocked due to overload"}
INTERNAL = {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}
EXPIRED = {"error": "expired_token", "error_description": "The access token provided has expired."}


class ApiError(Exception):
    """An error answer: HTTP status plus the ``{"error", "error_description"}`` body."""

    def __init__(self, status: int, code: str | int, description: str, **extra: Any) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.description, **self.extra}


@lru_cache(maxsize=256)
def iso(second: int) -> str:
    return datetime.fromtimestamp(second, PORTAL_TZ).isoformat()


def php_array(section: dict[str, Any]) -> Any:
    """How PHP's json_encode shows an array: empty or keyed 0..n-1 -> JSON list, else object."""
    if not section:
        return []
    if all(key == str(i) for i, key in enumerate(section)):
        return list(section.values())
    return section


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "y", "yes", "on")
    return bool(value)


def int_param(params: dict[str, Any], name: str) -> int:
    value = params.get(name)
    if value is None or value == "":
        raise ApiError(400, 100, f"Required parameter '{name}' is not specified")
    try:
        if isinstance(value, bool):
            raise ValueError(name)
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, 100, f"Parameter '{name}' is not a valid identifier") from None


def select_param(params: dict[str, Any]) -> set[str] | None:
    raw = params.get("select")
    if not raw:
        return None
    if isinstance(raw, str):
        return {raw}
    if isinstance(raw, dict):
        raw = list(raw.values())
    return {str(item) for item in raw} if isinstance(raw, list) else None
