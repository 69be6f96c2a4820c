"""The one place where secrets are taken out of text.

Everything that may reach a terminal, a log, the database's ``runs``/``events`` tables or an exception shown to
the user goes through :func:`redact` (or :func:`redact_url` for a single URL). It hides:

- the webhook code in ``/rest/<user_id>/<code>/`` (also JSON-escaped, ``\\/rest\\/1\\/code\\/``);
- the values of credential parameters (``auth``, ``sessid``, ``token``, ``access_token``, ``X-Amz-Signature``,
  ...) written as ``key=value`` (query strings, form bodies, log lines) or as ``"key": "value"`` (JSON, Python
  reprs);
- ``user:password@`` in URLs and ``Bearer`` tokens;
- every string registered with :func:`register_secret` (the webhook code, OAuth tokens, the client secret), in
  plain and percent-encoded form, wherever it appears.

Redaction is idempotent: redacting redacted text changes nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote

__all__ = [
    "MASK",
    "RedactingFilter",
    "redact",
    "redact_url",
    "register_secret",
]

MASK = "***"

# Shorter strings would hide ordinary words and numbers everywhere.
MIN_SECRET_LENGTH = 6

_SECRET_KEYS = (
    "auth",
    "auth_id",
    "sessid",
    "token",
    "access_token",
    "refresh_token",
    "refresh_id",
    "client_secret",
    "password",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "Signature",
    "AWSAccessKeyId",
)
# Longest first, so that "access_token" is not read as "access_" + "token".
_KEYS = "|".join(re.escape(k) for k in sorted(_SECRET_KEYS, key=len, reverse=True))

# /rest/<user_id>/<code>/ : the code is the webhook's password. Also in JSON-escaped form (\/rest\/1\/code\/).
_WEBHOOK = re.compile(r"(\\?/rest\\?/\d+\\?/)[^/\\\s?#\"'<>&]+")

# key=value in query strings, form bodies and log lines. The key must not be the tail of a longer name, but may
# follow a JSON-escaped "&" (\u0026), as in the downloadUrl of a raw API response.
_KEY_VALUE = re.compile(rf"(?i)(?:(?<![\w.-])|(?<=\\u0026))((?:{_KEYS})=)(?:(?!\\u0026)[^&\s\"'<>#,;])+")

# "key": "value" (JSON) and 'key': 'value' (Python repr); escaped quotes inside the value are honoured.
_JSON_DQ = re.compile(rf'(?i)("(?:{_KEYS})"\s*:\s*")(?:[^"\\]|\\.)*(")')
_JSON_SQ = re.compile(rf"(?i)('(?:{_KEYS})'\s*:\s*')(?:[^'\\]|\\.)*(')")

# scheme://user:password@host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s?#\"'<>]+@")

_BEARER = re.compile(r"(?i)\b(Bearer\s+)[A-Za-z0-9._~+/=*-]+")

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Hide ``value`` from now on in everything :func:`redact` sees.

    Thread-safe. ``None``, empty and short values (under 6 characters) are ignored, as are values already
    registered. The percent-encoded form of the value is hidden too.
    """
    global _secrets_pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, quote(value, safe="")}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        # Longest first, so that a secret containing another one is hidden whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """Return ``text`` with every secret replaced by ``***``."""
    if not text:
        return text
    if not isinstance(text, str):
        text = str(text)
    pattern = _secrets_pattern  # read once: another thread may swap it
    if pattern is not None:
        text = pattern.sub(MASK, text)
    # A cheap pre-check skips the regexes for the usual log line that holds nothing secret.
    lowered = text.lower()
    if "/rest" in lowered:
        text = _WEBHOOK.sub(rf"\g<1>{MASK}", text)
    if "=" in text:
        text = _KEY_VALUE.sub(rf"\g<1>{MASK}", text)
    if ":" in text:
        if '"' in text:
            text = _JSON_DQ.sub(rf"\g<1>{MASK}\g<2>", text)
        if "'" in text:
            text = _JSON_SQ.sub(rf"\g<1>{MASK}\g<2>", text)
        if "@" in text:
            text = _USERINFO.sub(rf"\g<1>{MASK}@", text)
    if "bearer" in lowered:
        text = _BEARER.sub(rf"\g<1>{MASK}", text)
    return text


def redact_url(url: str | None) -> str:
    """Return ``url`` fit to show: userinfo (``user:pass@``) dropped, credentials hidden as in :func:`redact`."""
    if not url:
        return ""
    url = _USERINFO.sub(r"\g<1>", str(url), count=1)
    # What is left of a masked userinfo ("***@") goes too, so the result does not depend on the order of calls.
    url = re.sub(r"(?i)^([a-z][a-z0-9+.-]*://)\*\*\*@", r"\g<1>", url)
    return redact(url)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message, the exception text and the stack of each record.

    The message is formatted first (``msg % args``) and then redacted, so a secret passed as an argument is caught
    too. Attach it to handlers (filters on a logger do not see records propagated from child loggers).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not let the raw arguments through
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
