"""Settings: built-in defaults < config file < environment < command-line flags.

The config file is the one named by the caller (``--config``), else ``$IMGSYNC_CONFIG``, else ``./imgsync.toml``
when it exists. Its sections and keys are listed in ``config.example.toml``; an unknown one is an error that names
the file and the dotted key. Relative paths in the file are resolved against the file's folder; relative paths
from the environment, from flags and the defaults against the working directory.

Every value is checked where it is read, so an error names its origin: ``imgsync.toml: sync.workers ...``,
``IMGSYNC_WORKERS ...`` or ``--workers ...``. Messages never contain a secret: they pass through
:func:`imgsync.redact.redact`, and the webhook code, the tokens and the client secret are registered with
:func:`imgsync.redact.register_secret` as soon as they are read.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .errors import ConfigError
from .redact import redact, redact_url, register_secret
from .units import parse_duration, parse_size

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ENV_VARS",
    "Settings",
    "load_settings",
    "parse_duration",
    "parse_size",
    "validate_for_sync",
]

DEFAULT_CONFIG_NAME = "imgsync.toml"
DEFAULT_TOKEN_URL = "https://oauth.bitrix.info/oauth/token/"
MAX_WORKERS = 64

AuthMode = Literal["webhook", "oauth"]

_DEFAULT_PATHS = {"dest": Path("images"), "db": Path("imgsync.db")}
_SECRET_FIELDS = ("client_secret", "access_token", "refresh_token")
_OAUTH_FIELDS = ("portal_url", "client_id", "client_secret", "access_token", "refresh_token")


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, after merging every source.

    ``webhook_url`` is normalised to end in ``/`` (``https://host/rest/1/code/``); ``portal_url`` to
    ``scheme://host[:port]/``. Paths from :func:`load_settings` are absolute. ``repr`` hides the secrets.
    """

    webhook_url: str | None = None
    portal_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    token_url: str = DEFAULT_TOKEN_URL
    rate_limit: float = 2.0
    burst: int = 50
    timeout: float = 30.0
    dest: Path = _DEFAULT_PATHS["dest"]
    db: Path = _DEFAULT_PATHS["db"]
    keep_local: bool = True
    s3_enabled: bool = False
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    #: Requests in flight; 0 is ``"auto"`` (sized from the measured round trip and the rate limit).
    workers: int = 0
    #: Caps of one run (``None``: no cap); see :func:`parse_duration` and :func:`parse_size`.
    max_duration_s: float | None = None
    max_downloads: int | None = None
    max_bytes: int | None = None
    #: Log lines (and a progress line a minute) are appended there too.
    log_file: Path | None = None
    #: Prometheus text format for node_exporter's textfile collector, written at the end of every run.
    metrics_file: Path | None = None
    #: Events older than this are pruned at the end of a run; 0 keeps them all.
    keep_events_days: int = 180
    #: ``imgsync restore``: base64 bytes of adds in one request (a larger image goes alone).
    restore_max_request_bytes: int = 8 * 1024 * 1024
    #: ``imgsync restore``: the longest a request may run on the portal (the cloud's 60 s; a self-hosted
    #: portal's PHP ``max_execution_time``). An add without an answer is looked for only after it.
    restore_request_limit_s: float = 60.0
    config_path: Path | None = None

    @property
    def auth_mode(self) -> AuthMode | None:
        """``"webhook"``, ``"oauth"``, or ``None`` when no portal is configured."""
        if self.webhook_url:
            return "webhook"
        if any(getattr(self, name) for name in _OAUTH_FIELDS):
            return "oauth"
        return None

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                shown = "'***'"
            elif f.name == "webhook_url" and value:
                shown = repr(redact_url(value))
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"


# --- where a value came from, for messages ------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    """Names a value's source: ``prefix`` opens a message about it, ``ref`` mentions it inside one."""

    prefix: str
    ref: str


_FLAGS = {
    "webhook_url": "--webhook",
    "s3_enabled": "--s3/--no-s3",
    "max_duration_s": "--max-duration",
}


def _flag(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


# --- the keys of the config file -----------------------------------------------------------------------------

# kind: how a value is checked; see _check().
_FILE_KEYS: dict[str, dict[str, tuple[str, str]]] = {
    "bitrix24": {
        "webhook_url": ("webhook_url", "webhook"),
        "portal_url": ("portal_url", "portal"),
        "client_id": ("client_id", "text"),
        "client_secret": ("client_secret", "secret"),
        "access_token": ("access_token", "secret"),
        "refresh_token": ("refresh_token", "secret"),
        "token_url": ("token_url", "url"),
        "rate_limit": ("rate_limit", "positive"),
        "burst": ("burst", "burst"),
        "timeout": ("timeout", "positive"),
    },
    "storage": {
        "dest": ("dest", "path"),
        "db": ("db", "path"),
        "keep_local": ("keep_local", "bool"),
        "keep_events_days": ("keep_events_days", "days"),
    },
    "s3": {
        "enabled": ("s3_enabled", "bool"),
        "bucket": ("s3_bucket", "text"),
        "prefix": ("s3_prefix", "text"),
        "endpoint_url": ("s3_endpoint_url", "url_or_empty"),
    },
    "sync": {
        "workers": ("workers", "workers"),
        "max_duration": ("max_duration_s", "duration"),
        "max_downloads": ("max_downloads", "count"),
        "max_bytes": ("max_bytes", "size"),
        "log_file": ("log_file", "optional_path"),
    },
    "metrics": {
        "textfile": ("metrics_file", "optional_path"),
    },
    "restore": {
        "max_request_bytes": ("restore_max_request_bytes", "size"),
        "request_limit": ("restore_request_limit_s", "duration"),
    },
}
_KIND = {field: kind for keys in _FILE_KEYS.values() for field, kind in keys.values()}
_DOTTED = {
    field: f"{section}.{key}" for section, keys in _FILE_KEYS.items() for key, (field, _) in keys.items()
}
_ALL_DOTTED = list(_DOTTED.values())

ENV_VARS: dict[str, str] = {
    "IMGSYNC_WEBHOOK_URL": "webhook_url",
    "IMGSYNC_PORTAL_URL": "portal_url",
    "IMGSYNC_CLIENT_ID": "client_id",
    "IMGSYNC_CLIENT_SECRET": "client_secret",
    "IMGSYNC_ACCESS_TOKEN": "access_token",
    "IMGSYNC_REFRESH_TOKEN": "refresh_token",
    "IMGSYNC_DEST": "dest",
    "IMGSYNC_DB": "db",
    "IMGSYNC_S3_BUCKET": "s3_bucket",
    "IMGSYNC_S3_ENDPOINT_URL": "s3_endpoint_url",
    "IMGSYNC_WORKERS": "workers",
    # The long form of the contract, IMGSYNC_<SECTION>_<KEY>, for the keys added with it.
    "IMGSYNC_BITRIX24_RATE_LIMIT": "rate_limit",
    "IMGSYNC_BITRIX24_BURST": "burst",
    "IMGSYNC_BITRIX24_TIMEOUT": "timeout",
    "IMGSYNC_STORAGE_KEEP_EVENTS_DAYS": "keep_events_days",
    "IMGSYNC_SYNC_MAX_DURATION": "max_duration_s",
    "IMGSYNC_SYNC_MAX_DOWNLOADS": "max_downloads",
    "IMGSYNC_SYNC_MAX_BYTES": "max_bytes",
    "IMGSYNC_SYNC_LOG_FILE": "log_file",
    "IMGSYNC_METRICS_TEXTFILE": "metrics_file",
    "IMGSYNC_RESTORE_MAX_REQUEST_BYTES": "restore_max_request_bytes",
    "IMGSYNC_RESTORE_REQUEST_LIMIT": "restore_request_limit_s",
}
_ENV_OF = {field: name for name, field in ENV_VARS.items()}


# --- checking one value --------------------------------------------------------------------------------------


def _fail(origin: _Origin, problem: str) -> ConfigError:
    return ConfigError(redact(f"{origin.prefix} {problem}"))


def _shown(value: object) -> str:
    """A value for a message: TOML spelling for booleans, short, and redacted."""
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    text = redact(text)  # before cutting, so that no part of a secret survives
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: object, *, from_text: bool) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if from_text and isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _integer(value: object, *, from_text: bool) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if from_text and isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,20}\s*", value):
        return int(value)
    return None


def _check_cap(kind: str, value: object, origin: _Origin, *, from_text: bool) -> object:
    """The caps and counts: a positive duration, size or whole number (``days`` may be 0)."""
    if kind == "duration":
        seconds = parse_duration(value) if isinstance(value, str) else None
        if seconds is None or seconds <= 0:
            raise _fail(
                origin, f"must be a duration like 90m, 6h or 1h30m (units d, h, m, s), got {_shown(value)}"
            )
        return seconds
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool):
            size: int | None = value
        else:
            size = parse_size(value) if isinstance(value, str) else None
        if size is None or size <= 0:
            raise _fail(
                origin,
                f"must be a size like 20G, 512M or a number of bytes (K, M, G, T are powers of 1024), "
                f"got {_shown(value)}",
            )
        return size
    integer = _integer(value, from_text=from_text)
    least = 0 if kind == "days" else 1
    if integer is None or integer < least:
        raise _fail(origin, f"must be a whole number of at least {least}, got {_shown(value)}")
    return integer


_WEBHOOK_PATH = re.compile(r"/rest/(\d+)/([^/]+)/?(.*)")


def _check_webhook(value: str, origin: _Origin) -> str:
    shape = "must look like https://<portal>/rest/<user_id>/<code>/"
    try:
        parts = urlsplit(value)
    except ValueError:
        raise _fail(origin, shape) from None
    match = _WEBHOOK_PATH.fullmatch(parts.path)
    if match:
        register_secret(match.group(2))
    if parts.scheme.lower() not in ("http", "https"):
        raise _fail(origin, f"{shape} (http:// or https://)")
    if not parts.hostname:
        raise _fail(origin, f"{shape}; the portal's host name is missing")
    if "@" in parts.netloc:
        raise _fail(origin, f"{shape}, without a user name or password")
    if parts.query or parts.fragment:
        raise _fail(origin, f"{shape}, without a query string")
    if match is None:
        raise _fail(origin, shape)
    method = match.group(3).strip("/")
    if method:
        raise _fail(origin, f"{shape}, without a method name: remove {_shown(method)} from the end")
    return f"{parts.scheme.lower()}://{parts.netloc}/rest/{match.group(1)}/{match.group(2)}/"


def _check_url(value: str, origin: _Origin) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _fail(origin, f"must be an http:// or https:// URL, got {_shown(value)}")
    return value


def _check_portal(value: str, origin: _Origin) -> str:
    _check_url(value, origin)
    parts = urlsplit(value)
    if "@" in parts.netloc or parts.path.strip("/") or parts.query or parts.fragment:
        raise _fail(
            origin,
            f"must be the portal's address only, like https://example.bitrix24.com/, got {_shown(value)}",
        )
    return f"{parts.scheme.lower()}://{parts.netloc}/"


def _check(field: str, value: object, origin: _Origin, base: Path, *, from_text: bool) -> object:
    """Check and normalise one value for ``field``; ``from_text``: it came as a string (env, flags)."""
    kind = _KIND[field]
    if kind in ("duration", "size", "count", "days"):
        return _check_cap(kind, value, origin, from_text=from_text)
    if kind in ("positive", "burst", "workers"):
        if kind == "positive":
            number = _number(value, from_text=from_text)
            if number is None or not math.isfinite(number) or number <= 0:
                raise _fail(origin, f"must be a positive number, got {_shown(value)}")
            return number
        if kind == "workers" and isinstance(value, str) and value.strip().lower() == "auto":
            return 0
        integer = _integer(value, from_text=from_text)
        if kind == "burst":
            if integer is None or integer < 1:
                raise _fail(origin, f"must be a whole number of at least 1, got {_shown(value)}")
            return integer
        if integer is None or not 1 <= integer <= MAX_WORKERS:
            raise _fail(
                origin, f'must be "auto" or a whole number from 1 to {MAX_WORKERS}, got {_shown(value)}'
            )
        return integer
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(origin, f"must be true or false, got {_shown(value)}")
        return value
    if kind == "optional_path" and isinstance(value, str) and not value.strip():
        return None  # "" turns off what the file or the environment set
    if kind in ("path", "optional_path"):
        if isinstance(value, str | os.PathLike) and str(value).strip():
            path = Path(value).expanduser()
            return path if path.is_absolute() else base / path
        raise _fail(origin, f"must be a non-empty path, got {_shown(value)}")
    # The rest are strings.
    if not isinstance(value, str):
        if kind == "secret" or kind == "webhook":
            raise _fail(origin, "must be a string")
        raise _fail(origin, f"must be a string, got {_shown(value)}")
    if kind == "secret":
        register_secret(value.strip())
        return value.strip() or None
    text = value.strip()
    if kind == "webhook":
        return _check_webhook(text, origin) if text else None
    if kind == "portal":
        return _check_portal(text, origin) if text else None
    if kind == "url":
        return _check_url(text, origin)
    if kind == "url_or_empty":
        return _check_url(text, origin) if text else ""
    if field == "client_id":
        return text or None
    return text


# --- the config file -----------------------------------------------------------------------------------------


def _suggest(section: str, key: str | None) -> str:
    """``"; did you mean 'storage.dest'?"`` for the nearest valid key, or ``""``.

    ``key`` is ``None`` for an unknown section or a key outside any section. Names are compared leaf to leaf:
    comparing dotted names would make every key of a section look close to every other.
    """
    leaf = section if key is None else key
    leaves: dict[str, list[str]] = {}
    for dotted in _ALL_DOTTED:
        leaves.setdefault(dotted.split(".", 1)[1], []).append(dotted)
    if leaf in leaves:  # the right key in the wrong place
        best = leaves[leaf][0]
    elif key is None:
        close = difflib.get_close_matches(section, list(_FILE_KEYS), n=1, cutoff=0.6)
        if not close:
            return ""
        best = close[0]
    else:
        own = [d.split(".", 1)[1] for d in _ALL_DOTTED if d.startswith(section + ".")]
        near = difflib.get_close_matches(key, own, n=1, cutoff=0.6)
        if near:
            best = f"{section}.{near[0]}"
        else:
            near = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.6)
            if not near:
                return ""
            best = leaves[near[0]][0]
    return f"; did you mean '{best}'?"


def _read_file(path: Path, name: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
        if where:
            problem = text[: where.start()]
            raise ConfigError(
                redact(f"{name}:{where.group(1)}: invalid TOML: {problem} (column {where.group(2)})")
            ) from None
        raise ConfigError(redact(f"{name}: invalid TOML: {text}")) from None
    except UnicodeDecodeError:
        raise ConfigError(redact(f"{name}: not valid UTF-8 text")) from None
    except OSError as exc:
        raise ConfigError(redact(f"cannot read config file {name}: {exc.strerror or exc}")) from None


def _file_values(path: Path, name: str) -> dict[str, tuple[object, _Origin]]:
    data = _read_file(path, name)
    base = path.parent
    values: dict[str, tuple[object, _Origin]] = {}
    for section, table in data.items():
        keys = _FILE_KEYS.get(section)
        if keys is None:
            raise ConfigError(redact(f"{name}: unknown key '{section}'{_suggest(section, None)}"))
        if not isinstance(table, dict):
            raise ConfigError(redact(f"{name}: {section} must be a table ([{section}]), got {_shown(table)}"))
        for key, value in table.items():
            if key not in keys:
                raise ConfigError(redact(f"{name}: unknown key '{section}.{key}'{_suggest(section, key)}"))
            field = keys[key][0]
            origin = _Origin(f"{name}: {section}.{key}", f"{section}.{key} in {name}")
            values[field] = (_check(field, value, origin, base, from_text=False), origin)
    return values


def _find_config(
    config_path: str | Path | None, env: Mapping[str, str], cwd: Path
) -> tuple[Path, str] | None:
    """The config file to read and its name for messages, or ``None``."""
    if config_path is not None and str(config_path) != "":
        named: str | Path | None = config_path
    else:
        named = env.get("IMGSYNC_CONFIG") or None
    if named is None:
        default = cwd / DEFAULT_CONFIG_NAME
        return (default, DEFAULT_CONFIG_NAME) if default.is_file() else None
    path = Path(named).expanduser()
    path = path if path.is_absolute() else cwd / path
    if not path.exists():
        raise ConfigError(redact(f"cannot read config file {named}: No such file or directory"))
    return path, str(named)


# --- merging and the checks across keys ----------------------------------------------------------------------


def _ref(field: str, origins: Mapping[str, _Origin]) -> str:
    return origins[field].ref if field in origins else _DOTTED[field]


def _check_auth(values: Mapping[str, object], origins: Mapping[str, _Origin]) -> None:
    oauth_set = [f for f in _OAUTH_FIELDS if values.get(f)]
    if values.get("webhook_url") and oauth_set:
        raise ConfigError(
            redact(
                f"both a webhook ({_ref('webhook_url', origins)}) and OAuth settings "
                f"({_ref(oauth_set[0], origins)}) are configured; use one or the other"
            )
        )
    if not oauth_set:
        return
    missing = [
        f"{_DOTTED[f]} ({_ENV_OF[f]})"
        for f in ("portal_url", "client_id", "client_secret")
        if not values.get(f)
    ]
    if not values.get("access_token") and not values.get("refresh_token"):
        missing.append(
            "bitrix24.access_token or bitrix24.refresh_token (IMGSYNC_ACCESS_TOKEN, IMGSYNC_REFRESH_TOKEN)"
        )
    if missing:
        raise ConfigError(
            redact(f"incomplete OAuth settings ({_ref(oauth_set[0], origins)}): missing {', '.join(missing)}")
        )


def load_settings(
    config_path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults < config file < environment < ``overrides``.

    ``config_path``: the file named by ``--config``; else ``env["IMGSYNC_CONFIG"]``; else ``<cwd>/imgsync.toml``
    when it exists. A named file that does not exist is an error. ``env`` defaults to ``os.environ``; empty
    variables count as unset. ``overrides`` holds command-line values by :class:`Settings` field name; ``None``
    values (flags not given) are skipped. ``cwd`` defaults to the working directory.

    Raises :class:`~imgsync.errors.ConfigError` naming the file and key, the variable or the flag.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    values: dict[str, object] = {}
    origins: dict[str, _Origin] = {}

    found = _find_config(config_path, env, cwd)
    if found is not None:
        for field, (value, origin) in _file_values(*found).items():
            values[field], origins[field] = value, origin

    for name, field in ENV_VARS.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        origin = _Origin(name, name)
        values[field], origins[field] = _check(field, raw, origin, cwd, from_text=True), origin

    known = set(_KIND)
    for field, raw_value in (overrides or {}).items():
        if raw_value is None:
            continue
        if field not in known:
            raise TypeError(f"load_settings() got an unknown override {field!r}")
        origin = _Origin(_flag(field), _flag(field))
        values[field], origins[field] = _check(field, raw_value, origin, cwd, from_text=True), origin

    _check_auth(values, origins)

    for field, default in _DEFAULT_PATHS.items():
        values.setdefault(field, cwd / default)
    values["config_path"] = found[0] if found is not None else None
    return Settings(**values)  # type: ignore[arg-type]


def validate_for_sync(settings: Settings) -> None:
    """Raise :class:`~imgsync.errors.ConfigError` unless ``settings`` can run a sync: a portal to talk to, and
    a bucket when S3 is enabled."""
    name = settings.config_path.name if settings.config_path else DEFAULT_CONFIG_NAME
    if settings.auth_mode is None:
        raise ConfigError(
            f"no portal configured: set bitrix24.webhook_url in {name}, IMGSYNC_WEBHOOK_URL or --webhook"
        )
    if settings.auth_mode == "oauth":
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        _check_auth(fields, {})
    if settings.s3_enabled and not settings.s3_bucket:
        raise ConfigError(
            f"S3 is enabled but no bucket is set: set s3.bucket in {name}, IMGSYNC_S3_BUCKET or --s3-bucket"
        )
