"""The emulated portal: catalog state, auth, the leaky bucket, faults and the REST methods.

The behaviour, and every choice made where the docs are silent, is described in the package docstring
(:mod:`imgsync.emulator`).
"""

from __future__ import annotations

import base64
import bisect
import gzip
import hashlib
import hmac
import itertools
import json
import math
import random
import re
import secrets
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote

from . import listing, readings, writes
from .catalog import (
    EMPTY_SKU,
    FREE_OFFER,
    MORE_PHOTO_PROPERTY_ID,
    OFFER,
    OFFER_IBLOCK_ID,
    PORTAL_TZ,
    PRODUCT_IBLOCK_ID,
    SERVICE,
    SKU,
    SKU_PROPERTY_ID,
    CatalogImage,
    CatalogItem,
    content_type_for,
    random_detail_url,
)
from .server import PortalServer, Reply, Request, json_reply, php_parse

__all__ = ["Faults", "Portal", "Stats", "MAX_BATCH", "OPERATING_WINDOW"]

MAX_BATCH = 50
OPERATING_WINDOW = 600.0  # seconds: ten one-minute baskets
FIRST_FILE_ID = 7001

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
_HTML = "text/html"
_HTML_UTF8 = "text/html; charset=UTF-8"
_JSON_DOWNLOAD_ERROR = {
    "error": "ERROR_UNEXPECTED_ANSWER",
    "error_description": "Server returned an unexpected response.",
}
_QUERY_LIMIT = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
_OVERLOAD = {"error": "OVERLOAD_LIMIT", "error_description": "REST API is blocked due to overload"}
_INTERNAL = {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}
_EXPIRED = {"error": "expired_token", "error_description": "The access token provided has expired."}


@dataclass
class Faults:
    """Injected failures. Rates are fractions of requests (1.0 = every one); the RNG is seeded.

    ``rate_503``, ``rate_500``, ``drop_rate``, ``rate_502``, ``rate_504`` (nginx's HTML error pages) and
    ``rate_stall`` hit REST calls and/or downloads as ``apply_to`` says. REST only: ``rate_cut_json`` (the
    real answer, its body cut in half, Content-Length matching the cut) and ``rate_empty`` (200 with an
    empty body). Downloads only: ``truncate_rate``, ``slow_download``, ``rate_html_download`` and
    ``html_downloads`` (200 ``text/html`` login page; ``html_downloads`` = the next N downloads, counted
    down), ``rate_json_download`` (200 ``application/json`` error body) and ``chunked_downloads`` (the
    file without Content-Length, ``Transfer-Encoding: chunked``). A stall sends the real answer's headers
    and half its body, then waits ``stall_seconds`` before the rest (the wait ends, and the connection
    drops, when the portal stops). The OAuth endpoint is never faulted.

    ``catalog.productImage.add`` only (see :mod:`.writes`): ``add_other_bytes`` (the next N adds) and
    ``rate_add_other_bytes`` store the sent bytes with one zero byte appended; ``add_drop_answer`` (the
    next N adds) and ``rate_add_drop_answer`` apply the add, then drop the connection without an answer
    (a batch runs all its commands first); ``slow_add`` sleeps that many seconds in each add before it is
    applied (no lock held). Counted in ``stats.injected`` as ``"add_other_bytes"``, ``"add_drop_answer"``,
    ``"slow_add"``.
    """

    rate_503: float = 0.0
    rate_500: float = 0.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    slow_download: float = 0.0
    apply_to: str = "all"
    seed: int = 0
    rate_502: float = 0.0
    rate_504: float = 0.0
    rate_cut_json: float = 0.0
    rate_empty: float = 0.0
    rate_stall: float = 0.0
    stall_seconds: float = 30.0
    rate_html_download: float = 0.0
    html_downloads: int = 0
    rate_json_download: float = 0.0
    chunked_downloads: bool = False
    add_other_bytes: int = 0
    rate_add_other_bytes: float = 0.0
    add_drop_answer: int = 0
    rate_add_drop_answer: float = 0.0
    slow_add: float = 0.0
    #: The next N downloads answer 401 ``expired_token`` whatever their credential (a webhook's link too).
    expired_downloads: int = 0
    #: Downloads whose request accepts gzip are sent gzip-compressed (``Content-Encoding: gzip``, the
    #: compressed body's Content-Length), as a compressing proxy in front of the portal does.
    gzip_downloads: bool = False
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.apply_to not in ("all", "rest", "download"):
            raise ValueError(f"apply_to must be 'all', 'rest' or 'download', not {self.apply_to!r}")
        self._rng = random.Random(self.seed)

    def roll(self, rate: float) -> bool:
        """True for a ``rate`` fraction of calls (exactly never at 0, always at 1)."""
        if rate <= 0:
            return False
        return rate >= 1 or self._rng.random() < rate

    def applies_to(self, kind: str) -> bool:
        return self.apply_to == "all" or self.apply_to == kind


@dataclass
class Stats:
    """What the portal has seen. ``portal.stats`` is a snapshot; ``as_dict()`` gives plain JSON types.

    ``injected`` counts by kind: ``"503"``, ``"500"``, ``"502"``, ``"504"``, ``"drop"``, ``"cut_json"``,
    ``"empty"``, ``"stall"``, ``"html"``, ``"json_error"``, ``"chunked"``, ``"truncate"``, ``"slow"``, and
    the switches ``"overload"`` and ``"operation_limit"``, the writes' ``"add_other_bytes"``,
    ``"add_drop_answer"``, ``"slow_add"`` and the web tier's ``"413"``. ``download_bytes`` counts body
    bytes actually sent (cut-short bodies included); ``downloads_served`` only complete 200 bodies.
    ``by_address`` counts every HTTP request by the ``host:port`` it arrived at (the old address of a
    renamed portal included); ``redirected`` the 302s the old address answered (these are not in
    ``requests``). ``adds`` counts applied ``catalog.productImage.add`` calls (batch commands included), ``add_bytes``
    the decoded bytes they received, ``deletes`` applied ``catalog.productImage.delete`` calls.
    """

    requests: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    batch_commands: Counter[str] = field(default_factory=Counter)
    downloads_served: int = 0
    download_bytes: int = 0
    rejected_503: int = 0
    rejected_429: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    max_bucket_level: float = 0.0
    by_address: Counter[str] = field(default_factory=Counter)
    redirected: int = 0
    adds: int = 0
    add_bytes: int = 0
    deletes: int = 0

    def copy(self) -> Stats:
        return replace(
            self,
            by_method=Counter(self.by_method),
            batch_commands=Counter(self.batch_commands),
            injected=Counter(self.injected),
            by_address=Counter(self.by_address),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_method": dict(self.by_method),
            "batch_commands": dict(self.batch_commands),
            "downloads_served": self.downloads_served,
            "download_bytes": self.download_bytes,
            "rejected_503": self.rejected_503,
            "rejected_429": self.rejected_429,
            "injected": dict(self.injected),
            "max_bucket_level": self.max_bucket_level,
            "by_address": dict(self.by_address),
            "redirected": self.redirected,
            "adds": self.adds,
            "add_bytes": self.add_bytes,
            "deletes": self.deletes,
        }

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]


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


@dataclass(slots=True)
class _Stored:
    image: CatalogImage
    file_id: int


@dataclass(frozen=True, slots=True)
class _Cred:
    """Who is calling: ``token`` is the OAuth access token (None for the webhook); ``key`` binds links."""

    token: str | None
    key: str


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    scope: str | None
    handler: str


_METHODS = {
    m.name.lower(): m
    for m in (
        _Method("catalog.productImage.get", "catalog", "_m_get"),
        _Method("catalog.productImage.list", "catalog", "_m_list"),
        _Method("catalog.productImage.add", "catalog", "_m_add"),
        _Method("catalog.productImage.delete", "catalog", "_m_delete"),
        _Method("catalog.catalog.list", "catalog", "_m_catalogs"),
        _Method("catalog.product.list", "catalog", "_m_products"),
        _Method("catalog.product.sku.list", "catalog", "_m_skus"),
        _Method("catalog.product.offer.list", "catalog", "_m_offers"),
        _Method("catalog.product.service.list", "catalog", "_m_services"),
        _Method("catalog.productProperty.list", "catalog", "_m_properties"),
        _Method("batch", None, ""),
        _Method("scope", None, "_m_scope"),
        _Method("server.time", None, "_m_server_time"),
    )
}
_DOWNLOAD_NAMES = ("download", "download.json")


def _method_name(raw: str) -> str:
    name = raw.strip().lower()
    return name[:-5] if name.endswith(".json") else name


def _canonical(raw: str) -> str:
    """The method's name as the portal spells it (``catalog.productimage.get`` -> ``catalog.productImage.get``)."""
    known = _METHODS.get(_method_name(raw))
    return known.name if known else raw


_REF = re.compile(r"\$result\[([^\]]*)\]((?:\[[^\]]*\])*)")
_REF_PART = re.compile(r"\[([^\]]*)\]")


def _lookup_ref(match: re.Match[str], results: dict[str, Any]) -> Any:
    """The value a ``$result[key][a][b]...`` reference names, or "" when there is none."""
    node: Any = results.get(match.group(1))
    for part in _REF_PART.findall(match.group(2)):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = None
        if node is None:
            return ""
    if isinstance(node, bool):
        return "1" if node else ""
    return node if isinstance(node, int | float | str) else ""


def _resolve_refs(value: Any, results: dict[str, Any]) -> Any:
    """Replace batch references in parsed command parameters by earlier commands' results."""
    if isinstance(value, dict):
        return {key: _resolve_refs(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(item, results) for item in value]
    if not isinstance(value, str) or "$result[" not in value:
        return value
    whole = _REF.fullmatch(value)
    if whole:
        return _lookup_ref(whole, results)
    return _REF.sub(lambda m: str(_lookup_ref(m, results)), value)


_ITEM_FIELDS = ("id", "iblockId", "type", "name", "active", "available", "code", "xmlId", "parentId")
_CATALOG_FIELDS = ("id", "iblockId", "iblockTypeId", "lid", "name", "productIblockId", "skuPropertyId")
_PROPERTY_FIELDS = (
    "id",
    "iblockId",
    "code",
    "name",
    "propertyType",
    "multiple",
    "active",
    "userType",
    "xmlId",
)
_PROPERTY_NAME = re.compile(r"property\d+")


def _catalog_rows() -> list[dict[str, Any]]:
    common = {"iblockTypeId": "CRM_PRODUCT_CATALOG", "lid": "s1", "subscription": "N", "vatId": None}
    return [
        {
            **common,
            "iblockId": PRODUCT_IBLOCK_ID,
            "id": PRODUCT_IBLOCK_ID,
            "name": "CRM product catalog",
            "productIblockId": None,
            "skuPropertyId": None,
        },
        {
            **common,
            "iblockId": OFFER_IBLOCK_ID,
            "id": OFFER_IBLOCK_ID,
            "name": "CRM product catalog (offers)",
            "productIblockId": PRODUCT_IBLOCK_ID,
            "skuPropertyId": SKU_PROPERTY_ID,
        },
    ]


def _property_rows() -> list[dict[str, Any]]:
    def prop(
        pid: int, iblock: int, code: str, name: str, kind: str, multiple: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "active": "Y",
            "code": code,
            "defaultValue": None,
            "fileType": "",
            "iblockId": iblock,
            "id": pid,
            "isRequired": "N",
            "linkIblockId": None,
            "multiple": multiple,
            "name": name,
            "propertyType": kind,
            "sort": 500,
            "timestampX": "2024-05-27T10:00:00+02:00",
            "userType": None,
            "xmlId": code,
            **extra,
        }

    files = "jpg, gif, bmp, png, jpeg, webp"
    rows = [
        prop(pid, iblock, "MORE_PHOTO", "Images", "F", "Y", fileType=files)
        for iblock, pid in MORE_PHOTO_PROPERTY_ID.items()
    ]
    rows.append(
        prop(
            SKU_PROPERTY_ID,
            OFFER_IBLOCK_ID,
            "CML2_LINK",
            "Product",
            "E",
            "N",
            linkIblockId=PRODUCT_IBLOCK_ID,
            userType="SKU",
        )
    )
    return sorted(rows, key=lambda row: row["id"])


@lru_cache(maxsize=256)
def _iso(second: int) -> str:
    return datetime.fromtimestamp(second, PORTAL_TZ).isoformat()


def _php_array(section: dict[str, Any]) -> Any:
    """How PHP's json_encode shows an array: empty or keyed 0..n-1 -> JSON list, else object."""
    if not section:
        return []
    if all(key == str(i) for i, key in enumerate(section)):
        return list(section.values())
    return section


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "y", "yes", "on")
    return bool(value)


def _int_param(params: dict[str, Any], name: str) -> int:
    value = params.get(name)
    if value is None or value == "":
        raise ApiError(400, 100, f"Required parameter '{name}' is not specified")
    try:
        if isinstance(value, bool):
            raise ValueError(name)
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, 100, f"Parameter '{name}' is not a valid identifier") from None


def _select(params: dict[str, Any]) -> set[str] | None:
    raw = params.get("select")
    if not raw:
        return None
    if isinstance(raw, str):
        return {raw}
    if isinstance(raw, dict):
        raw = list(raw.values())
    return {str(item) for item in raw} if isinstance(raw, list) else None


def _disposition(name: str) -> str:
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    value = f'attachment; filename="{plain}"'
    if plain != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def _serve(server: PortalServer, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    return thread


def _browser_like(headers: Any) -> bool:
    """The headers the docs require on a download; without them nginx answers 404."""
    return bool(
        headers.get("Referer") and headers.get("Accept-Language") and headers.get("User-Agent", "").strip()
    )


class Portal:
    """An emulated Bitrix24 portal: ``catalog.productImage.*``, the catalog listings, ``batch``, downloads
    and OAuth.

    See the package docstring for the behaviour. Every attribute given to the constructor (and
    ``overload``, ``faults``) may be changed while it runs.
    """

    def __init__(
        self,
        catalog: Iterable[CatalogImage] = (),
        *,
        items: Iterable[CatalogItem] | None = None,
        rate_limit: float = 2.0,
        burst: float = 50,
        count_downloads: bool = True,
        latency: float = 0.0,
        link_ttl: float = 3600.0,
        one_time_links: bool = False,
        webhook_user: int = 1,
        webhook_code: str = "k3y5ecr3tw3bh00k",
        scopes: Iterable[str] = ("catalog",),
        client_id: str = "local.app1",
        client_secret: str = "s3cr3tcl1ent",
        access_token_ttl: float = 3600.0,
        rotate_refresh_tokens: bool = True,
        port: int = 0,
        admin: bool = True,
        listing_ids_match: bool = True,
        image_page_size: int | None = None,
        operating_limit: float | None = None,
        cost_per_call: float = 0.0,
        method_cost: dict[str, float] | None = None,
        operating_window: float = OPERATING_WINDOW,
        add_operating_s: float = writes.ADD_OPERATING_S,
        max_request_bytes: int | None = None,
        image_list_cap: int | None = None,
        image_list_ignore_start: bool = False,
    ) -> None:
        self.rate_limit = rate_limit
        self.burst = burst
        self.count_downloads = count_downloads
        self.latency = latency
        self.link_ttl = link_ttl
        self.one_time_links = one_time_links
        self.webhook_user = webhook_user
        self.webhook_code = webhook_code
        self.scopes = tuple(scopes)
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token_ttl = access_token_ttl
        self.rotate_refresh_tokens = rotate_refresh_tokens
        #: False: the admin-only methods (catalog.catalog.list, the sku/offer/service lists) are denied.
        self.admin = admin
        #: False: listings show picture ids that are not the image ids (the stored files' ids).
        self.listing_ids_match = listing_ids_match
        #: None: catalog.productImage.list answers every image on one page; N: pages of N with start/next.
        self.image_page_size = image_page_size
        #: Seconds of operating time a method may use within ``operating_window`` (None: no limit).
        self.operating_limit = operating_limit
        #: Seconds added to a method's operating time per executed call (``method_cost`` per method).
        self.cost_per_call = cost_per_call
        self.method_cost = {_canonical(k): v for k, v in (method_cost or {}).items()}
        self.operating_window = operating_window
        #: Operating seconds each applied catalog.productImage.add adds to its method's budget.
        self.add_operating_s = add_operating_s
        #: Request bodies larger than this many bytes get nginx's 413 page (None: no limit).
        self.max_request_bytes = max_request_bytes
        #: catalog.productImage.list shows only the first N images, no next (notes §13.5; None: all).
        self.image_list_cap = image_list_cap
        #: catalog.productImage.list pages ignore start: the first page again, with a next (notes §13.5).
        self.image_list_ignore_start = image_list_ignore_start
        self.overload = False
        self.faults = Faults()
        #: Item ids deleted (as by :meth:`delete_item`) right after a ``catalog.product.list`` page has shown
        #: them: an item deleted between the catalog's listing and its ``catalog.productImage.list``.
        self.delete_once_listed: set[int] = set()
        #: Catalog (iblock) ids that ``catalog.catalog.list`` leaves out, as if removed; all of them: ``[]``.
        self.hidden_catalogs: set[int] = set()
        #: Catalog (iblock) ids whose items no item listing shows (``catalog.product.list`` answers ``[]``).
        self.empty_catalogs: set[int] = set()
        #: ``(product_id, image_id) -> value``: the ``id`` the answers show for that image instead of its
        #: number (a portal or proxy answering ``"12a"``, say); downloads and everything else are unchanged.
        self.answered_ids: dict[tuple[int, int], Any] = {}
        #: Tracebacks of unexpected exceptions in the emulator itself (answered 500); tests assert it is empty.
        self.server_errors: list[str] = []

        # Catalog, tokens and used links; never held while sleeping or doing I/O.
        self._state_lock = threading.Lock()
        self._products: dict[int, dict[int, _Stored]] = {}
        self._items: dict[int, CatalogItem] = {}
        #: Item ids per iblock, ascending (``_id_index``), rebuilt after items change: a keyset page of a large
        #: catalog costs a bisect, not a scan of every item (a listing of 10^6 items would never end).
        self._item_index: dict[int, list[int]] | None = None
        self._files: dict[int, _Stored] = {}
        self._file_ids = itertools.count(FIRST_FILE_ID)
        self._denied: set[int] = set()
        self._failing: set[tuple[int, int]] = set()
        self._access: dict[str, float] = {}  # access token -> monotonic expiry
        self._refresh: set[str] = set()
        self._used_links: set[str] = set()
        self._secret = secrets.token_bytes(32)
        self._writes = writes.ImageWrites(self)

        # Counters, the bucket and the operating-time baskets.
        self._lock = threading.Lock()
        self._stats = Stats()
        self._level = 0.0
        self._level_at = time.monotonic()
        self._operating: dict[str, list[list[float]]] = {}  # method -> baskets [[start, seconds], ...]
        self._blocks: dict[str, float] = {}  # method -> unix time the operation limit lifts

        self._port = port
        self._url = ""
        self._server: PortalServer | None = None
        self._thread: threading.Thread | None = None
        # The old address of a renamed portal (see rename()).
        self._old_port = 0
        self._old_server: PortalServer | None = None
        self._old_thread: threading.Thread | None = None
        #: ``(verb, path?query)`` of every request that reached the old address of a renamed portal.
        self.old_address_requests: list[tuple[str, str]] = []

        with self._state_lock:
            for item in items or ():
                self._put_item(item)
            for image in catalog:
                self._insert(image)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Portal:
        """Listen on 127.0.0.1 (a free port unless ``port`` was given; the same port on a restart)."""
        if self._server is not None:
            return self
        server = PortalServer(self._port, self.handle)
        self._port = server.server_port
        self._url = f"http://127.0.0.1:{self._port}"
        self._server = server
        self._thread = _serve(server, "bitrix24-emulator")
        if self._old_port:
            self._listen_old()
        return self

    def stop(self) -> None:
        """Stop listening (on the old address too) and cut every open connection. It may be started again."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        old, old_thread = self._old_server, self._old_thread
        self._old_server = self._old_thread = None
        for srv, thr in ((server, thread), (old, old_thread)):
            if srv is None:
                continue
            srv.stopping.set()
            srv.shutdown()
            srv.close_connections()
            srv.server_close()
            if thr is not None:
                thr.join(timeout=5)

    def rename(self) -> str:
        """The portal moves: from now on a second port, the *old address*, answers every request with
        ``302 Found`` and a ``Location`` on the current address (same path and query string), as Bitrix24
        does after an address change (change-domain.md). Returns :attr:`old_webhook_url`.

        The portal must be running; the old address stays (across restarts) until the portal is dropped.
        """
        if self._server is None:
            raise RuntimeError("the portal has not been started")
        if self._old_server is None:
            self._listen_old()
        return self.old_webhook_url

    def _listen_old(self) -> None:
        server = PortalServer(self._old_port, self._redirect)
        self._old_port = server.server_port
        self._old_server = server
        self._old_thread = _serve(server, "bitrix24-emulator-old-address")

    def _redirect(self, request: Request) -> Reply:
        target = request.path + (f"?{request.query}" if request.query else "")
        with self._lock:
            self._stats.by_address[f"127.0.0.1:{self._old_port}"] += 1
            self._stats.redirected += 1
            self.old_address_requests.append((request.verb, target))
        return Reply(302, NGINX_302, _HTML, [("Location", self.url + target)], delay=self.latency)

    def __enter__(self) -> Portal:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the portal has not been started")
        return self._url

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/rest/{self.webhook_user}/{self.webhook_code}/"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token/"

    @property
    def old_url(self) -> str:
        """The old address of a renamed portal (see :meth:`rename`)."""
        if not self._old_port:
            raise RuntimeError("the portal has not been renamed")
        return f"http://127.0.0.1:{self._old_port}"

    @property
    def old_webhook_url(self) -> str:
        """The webhook URL on the old address: what a client configured before the rename still uses."""
        return f"{self.old_url}/rest/{self.webhook_user}/{self.webhook_code}/"

    # ----------------------------------------------------------------- catalog

    def _put_item(self, item: CatalogItem) -> None:
        self._items[item.id] = item
        self._item_index = None
        self._products.setdefault(item.id, {})

    def _insert(self, image: CatalogImage) -> CatalogImage:
        if image.product_id not in self._items:  # an image of an unknown item: a simple product
            self._put_item(CatalogItem(image.product_id))
        product = self._products[image.product_id]
        if image.image_id in product:
            raise ValueError(f"image {image.product_id}:{image.image_id} already exists")
        stored = _Stored(image, next(self._file_ids))
        self._writes.note_id(image.image_id)
        product[image.image_id] = stored
        self._files[stored.file_id] = stored
        return image

    def add_image(self, image: CatalogImage | None = None, /, **fields: Any) -> CatalogImage:
        """Add an image, given whole or as ``CatalogImage`` keyword arguments.

        With keywords, ``product_id`` is required; ``image_id`` defaults to the highest id + 1 and
        ``name`` to ``photo-<id>.jpg``.
        """
        if image is not None and fields:
            raise TypeError("give a CatalogImage or keyword arguments, not both")
        with self._state_lock:
            if image is None:
                if "image_id" not in fields:
                    fields["image_id"] = self._writes.next_image_id()
                fields.setdefault("name", f"photo-{fields['image_id']}.jpg")
                image = CatalogImage(**fields)
            return self._insert(image)

    def add_product(self, product_id: int) -> None:
        """Make a product exist, with no images (``list`` then answers ``total: 0``)."""
        with self._state_lock:
            if product_id not in self._items:
                self._put_item(CatalogItem(product_id))

    def add_item(self, item: CatalogItem | None = None, /, **fields: Any) -> CatalogItem:
        """Add (or replace) a catalog item, given whole or as ``CatalogItem`` keyword arguments; its
        images stay. ``id`` defaults to the highest item id + 1."""
        with self._state_lock:
            if item is None:
                fields.setdefault("id", max(self._items, default=99) + 1)
                item = CatalogItem(**fields)
            self._put_item(item)
            return item

    def delete_item(self, item_id: int) -> None:
        """Remove an item and its images (the same as :meth:`delete_product`)."""
        self.delete_product(item_id)

    def items(self) -> list[CatalogItem]:
        """Every catalog item, by id."""
        with self._state_lock:
            return [self._items[i] for i in sorted(self._items)]

    def add_picture(
        self, item_id: int, type: str = "MORE_PHOTO", content: bytes = b"", name: str | None = None
    ) -> CatalogImage:
        """Give an item a new picture (a new image id, the highest + 1). ``type`` ``DETAIL_PICTURE`` or
        ``PREVIEW_PICTURE`` replaces the item's picture of that type, as the product card does."""
        with self._state_lock:
            if item_id not in self._items:
                raise KeyError(item_id)
            if type in ("DETAIL_PICTURE", "PREVIEW_PICTURE"):
                for old in [s for s in self._products[item_id].values() if s.image.type == type]:
                    self._remove(item_id, old.image.image_id)
        fields: dict[str, Any] = {"product_id": item_id, "type": type, "content": content}
        if name:
            fields["name"] = name
        return self.add_image(**fields)

    def replace_picture(
        self, item_id: int, image_id: int, content: bytes, name: str | None = None
    ) -> CatalogImage:
        """A new picture in place of an old one: there is no ``catalog.productImage.update``, so the new
        picture is a new image (new id, same type); the old id is gone."""
        with self._state_lock:
            old = self._products[item_id][image_id].image
            self._remove(item_id, image_id)
        return self.add_image(product_id=item_id, type=old.type, content=content, name=name or old.name)

    def delete_picture(self, item_id: int, image_id: int) -> None:
        """Remove a picture (the same as :meth:`delete_image`)."""
        self.delete_image(item_id, image_id)

    def _remove(self, product_id: int, image_id: int) -> None:
        stored = self._products[product_id].pop(image_id)
        del self._files[stored.file_id]

    def replace_image(
        self, product_id: int, image_id: int, content: bytes, name: str | None = None
    ) -> CatalogImage:
        """Store a new file for an image: new content (and name), a new ``detailUrl``, same ``createTime``.

        Links issued for the old file answer 404 from now on.
        """
        with self._state_lock:
            old = self._products[product_id][image_id]
            new_name = name or old.image.name
            image = replace(
                old.image,
                content=content,
                name=new_name,
                content_type=content_type_for(new_name),
                detail_url=random_detail_url(new_name),
            )
            del self._files[old.file_id]
            del self._products[product_id][image_id]
            return self._insert(image)

    def delete_image(self, product_id: int, image_id: int) -> None:
        """Remove an image; the product stays (possibly with no images)."""
        with self._state_lock:
            stored = self._products[product_id].pop(image_id)
            del self._files[stored.file_id]

    def delete_product(self, product_id: int) -> None:
        """Remove a product (any catalog item) and all its images."""
        with self._state_lock:
            for stored in self._products.pop(product_id).values():
                del self._files[stored.file_id]
            self._items.pop(product_id, None)
            self._item_index = None

    def deny_product(self, product_id: int, denied: bool = True) -> None:
        """Every call about that product answers ``200040300010 Access Denied`` (downloads: 403)."""
        with self._state_lock:
            (self._denied.add if denied else self._denied.discard)(product_id)

    def fail_image(self, product_id: int, image_id: int, failing: bool = True) -> None:
        """``catalog.productImage.get`` for that image answers 400 ``{"error": 0, "Internal error"}``."""
        with self._state_lock:
            (self._failing.add if failing else self._failing.discard)((product_id, image_id))

    def image(self, product_id: int, image_id: int) -> CatalogImage:
        with self._state_lock:
            return self._products[product_id][image_id].image

    def gallery(self, product_id: int) -> list[tuple[int, str, str]]:
        """``(image id, type, sha256 of the stored bytes)`` of each image of a product, by id (``[]`` for
        an unknown product): what tests assert on, e.g. that no bytes were added twice."""
        return self._writes.gallery(product_id)

    def images(self) -> list[CatalogImage]:
        """Every image, ordered by (product id, image id)."""
        with self._state_lock:
            found = [s.image for product in self._products.values() for s in product.values()]
        return sorted(found, key=lambda i: (i.product_id, i.image_id))

    # ----------------------------------------------------------------- tokens, limits, stats

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

    def operation_limit(self, seconds: float = 2.0, method: str = "catalog.productImage.get") -> None:
        """For ``seconds`` from now, calls of ``method`` answer 429 ``OPERATION_TIME_LIMIT`` (0 lifts it)."""
        known = _METHODS.get(_method_name(method))
        name = known.name if known else method
        with self._lock:
            if seconds > 0:
                self._blocks[name] = time.time() + seconds
            else:
                self._blocks.pop(name, None)

    def bucket_level(self) -> float:
        """The leaky-bucket counter now."""
        with self._lock:
            return max(0.0, self._level - (time.monotonic() - self._level_at) * self.rate_limit)

    def reset_bucket(self) -> None:
        with self._lock:
            self._level, self._level_at = 0.0, time.monotonic()

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats.copy()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = Stats()

    def _count(self, label: str) -> None:
        with self._lock:
            self._stats.requests += 1
            self._stats.by_method[label] += 1

    def _inject(self, kind: str) -> None:
        with self._lock:
            self._stats.injected[kind] += 1

    def _take(self) -> bool:
        """One request into the bucket; False (and not counted) when it is already full."""
        with self._lock:
            now = time.monotonic()
            level = max(0.0, self._level - (now - self._level_at) * self.rate_limit)
            self._level_at = now
            if level >= self.burst:
                self._level = level
                self._stats.rejected_503 += 1
                return False
            self._level = level + 1
            if self._level > self._stats.max_bucket_level:
                self._stats.max_bucket_level = self._level
            return True

    def _admit(self, label: str, kind: str, counted: bool) -> tuple[Reply | None, str]:
        """Count the request, then apply overload, injected faults and the bucket, in that order.

        Returns an early answer, or None and how to mangle the real answer (``""``, ``"cut_json"``,
        ``"stall"``). A faulted request never enters the bucket.
        """
        self._count(label)
        delay = self.latency
        if self.overload:
            self._inject("overload")
            return json_reply(503, _OVERLOAD, delay), ""
        faults = self.faults
        mangle = ""
        if faults.applies_to(kind):
            if faults.roll(faults.drop_rate):
                self._inject("drop")
                return Reply(drop=True, delay=delay), ""
            if faults.roll(faults.rate_503):
                self._inject("503")
                return json_reply(503, _QUERY_LIMIT, delay), ""
            if faults.roll(faults.rate_500):
                self._inject("500")
                return json_reply(500, _INTERNAL, delay), ""
            if faults.roll(faults.rate_502):
                self._inject("502")
                return Reply(502, NGINX_502, _HTML, delay=delay), ""
            if faults.roll(faults.rate_504):
                self._inject("504")
                return Reply(504, NGINX_504, _HTML, delay=delay), ""
            if faults.roll(faults.rate_stall):
                mangle = "stall"
        if kind == "rest" and not mangle:
            if faults.roll(faults.rate_empty):
                self._inject("empty")
                return Reply(200, b"", delay=delay), ""
            if faults.roll(faults.rate_cut_json):
                mangle = "cut_json"
        if kind == "download" and not mangle:
            if self._next_expired(faults):
                self._inject("expired_token")
                return json_reply(401, _EXPIRED, delay), ""
            if self._next_html(faults) or faults.roll(faults.rate_html_download):
                self._inject("html")
                return Reply(200, LOGIN_PAGE, _HTML_UTF8, delay=delay), ""
            if faults.roll(faults.rate_json_download):
                self._inject("json_error")
                return json_reply(200, _JSON_DOWNLOAD_ERROR, delay), ""
        if mangle:
            self._inject(mangle)
        elif counted and not self._take():
            return json_reply(503, _QUERY_LIMIT, delay), ""
        return None, mangle

    def _next_expired(self, faults: Faults) -> bool:
        with self._lock:
            if faults.expired_downloads > 0:
                faults.expired_downloads -= 1
                return True
        return False

    def _next_html(self, faults: Faults) -> bool:
        with self._lock:
            if faults.html_downloads > 0:
                faults.html_downloads -= 1
                return True
        return False

    def _mangle(self, reply: Reply, mangle: str) -> Reply:
        """Apply a fault chosen by :meth:`_admit` to the real answer."""
        if mangle == "stall":
            reply.stall = self.faults.stall_seconds
        elif mangle == "cut_json":
            reply.body = bytes(reply.body[: len(reply.body) // 2])
        return reply

    def _baskets(self, name: str, now: float) -> list[list[float]]:
        """A method's live baskets ``[start, seconds]``, oldest first. Call with ``_lock`` held."""
        baskets = self._operating.setdefault(name, [])
        while baskets and baskets[0][0] + self.operating_window <= now:
            baskets.pop(0)
        return baskets

    def _over_budget(self, name: str, now: float) -> float:
        """When the method has used more than ``operating_limit``: the time its oldest basket drops out
        (else 0). Call with ``_lock`` held."""
        if self.operating_limit is None:
            return 0.0
        baskets = self._baskets(name, now)
        if sum(b[1] for b in baskets) > self.operating_limit:
            return baskets[0][0] + self.operating_window
        return 0.0

    def _account(
        self, name: str, seconds: float, now: float, related: Iterable[str] = ()
    ) -> tuple[float, int]:
        """Add ``seconds`` to a method's operating time; return (operating, operating_reset_at)."""
        with self._lock:
            baskets = self._baskets(name, now)
            if baskets and now < baskets[-1][0] + self.operating_window / 10:
                baskets[-1][1] += seconds
            else:
                baskets.append([now, seconds])
            operating = sum(b[1] for b in baskets)
            reset_at = baskets[0][0] + self.operating_window
            active = [end for n in (name, *related) if (end := self._blocks.get(n, 0.0)) > now]
            active += [end for n in related if (end := self._over_budget(n, now))]
        if active:
            reset_at = max(active)
        return round(operating, 6), math.ceil(reset_at)

    def _time(
        self,
        start: float,
        work_start: float,
        name: str,
        seconds: float | None = None,
        related: Iterable[str] = (),
        cost: float = 0.0,
    ) -> dict[str, Any]:
        finish = time.time()
        processing = finish - work_start
        charged = (processing if seconds is None else seconds) + cost
        operating, reset_at = self._account(name, charged, finish, related)
        return {
            "start": start,
            "finish": finish,
            "duration": finish - start,
            "processing": processing,
            "date_start": _iso(int(start)),
            "date_finish": _iso(int(finish)),
            "operating": operating,
            "operating_reset_at": reset_at,
        }

    # ----------------------------------------------------------------- HTTP entry

    def handle(self, request: Request) -> Reply:
        """Answer one HTTP request (called by the server's threads)."""
        with self._lock:
            self._stats.by_address[f"127.0.0.1:{self._port}"] += 1
        try:
            refused = writes.too_large(self, request)
            if refused is not None:
                return refused
            segs = [s for s in request.path.split("/") if s]
            if segs and segs[0] == "rest":
                if len(segs) == 2 and segs[1].lower() == "download.json":
                    return self._download(request)
                return self._rest(request, segs[1:])
            if segs == ["oauth", "token"]:
                return self._oauth(request)
            self._count("other")
            return Reply(404, NGINX_404, _HTML)
        except Exception:
            self.server_errors.append(traceback.format_exc())
            return json_reply(500, _INTERNAL)

    def _rest(self, request: Request, segs: list[str]) -> Reply:
        hook = (segs[0], segs[1]) if len(segs) >= 2 else None
        raw = segs[0] if hook is None else "/".join(segs[2:])
        method = _METHODS.get(_method_name(raw))
        early, mangle = self._admit(method.name if method else raw or "(none)", "rest", counted=True)
        if early is not None:
            return early
        self._writes.begin()
        return self._writes.finish(self._mangle(self._rest_answer(request, hook, method), mangle))

    def _rest_answer(self, request: Request, hook: tuple[str, str] | None, method: _Method | None) -> Reply:
        delay = self.latency
        start = time.time()
        try:
            params = self._params(request)
            cred = self._authenticate(hook, params)
            if method is None:
                raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
            if method.name == "batch":
                return json_reply(200, self._batch(params, cred, start), delay)
            result, total, following, timing = self._call(method, params, cred, start)
        except ApiError as exc:
            return json_reply(exc.status, exc.body(), delay)
        body: dict[str, Any] = {"result": result}
        if following is not None:
            body["next"] = following
        if total is not None:
            body["total"] = total
        body["time"] = timing
        return json_reply(200, body, delay)

    def _params(self, request: Request) -> dict[str, Any]:
        """Query string, then a JSON or form body on top."""
        params = php_parse(request.query) if request.query else {}
        body = request.body
        if body:
            ctype = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
            if ctype.endswith("json") or (ctype != "application/x-www-form-urlencoded" and body[:1] == b"{"):
                try:
                    data = json.loads(body)
                except ValueError:
                    raise ApiError(400, "ERROR_ARGUMENT", "The request body is not valid JSON") from None
                if not isinstance(data, dict):
                    raise ApiError(400, "ERROR_ARGUMENT", "The request body must be a JSON object")
                params.update(data)
            else:
                params.update(php_parse(body.decode("utf-8", "replace")))
        return params

    def _webhook_key(self) -> str:
        return f"webhook|{self.webhook_user}|{self.webhook_code}"

    def _authenticate(self, hook: tuple[str, str] | None, params: dict[str, Any]) -> _Cred:
        token = params.pop("auth", None)
        if hook is not None:
            user, code = hook
            if user != str(self.webhook_user) or not hmac.compare_digest(
                code.encode(), str(self.webhook_code).encode()
            ):
                raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
            return _Cred(None, self._webhook_key())
        if not token or not isinstance(token, str):
            raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
        self._check_access_token(token)
        return _Cred(token, f"oauth|{token}")

    def _check_access_token(self, token: str) -> None:
        expires = self._access.get(token)
        if expires is None:
            raise ApiError(401, "invalid_token", "Unable to get application by token")
        if time.monotonic() >= expires:
            raise ApiError(401, "expired_token", "The access token provided has expired.")

    def _call(
        self, method: _Method, params: dict[str, Any], cred: _Cred, start: float
    ) -> tuple[Any, int | None, int | None, dict[str, Any]]:
        """Run one method (top level or inside batch): scope, operation limit, handler, time object.

        Returns (result, total, next, time)."""
        if method.scope and method.scope not in self.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                "The request requires higher privileges than provided by the webhook token",
            )
        now = time.time()
        with self._lock:
            blocked_until = self._blocks.get(method.name, 0.0)
            manual = blocked_until > now
            if not manual:
                blocked_until = self._over_budget(method.name, now)
            if blocked_until:
                self._stats.rejected_429 += 1
                if manual:
                    self._stats.injected["operation_limit"] += 1
        if blocked_until > now:
            raise ApiError(
                429,
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit.",
                operating_reset_at=math.ceil(blocked_until),
            )
        work_start = time.time()
        result, total, following = (*getattr(self, method.handler)(params, cred), None)[:3]
        cost = self.method_cost.get(method.name, self.cost_per_call)
        return result, total, following, self._time(start, work_start, method.name, cost=cost)

    def _batch(self, params: dict[str, Any], cred: _Cred, start: float) -> dict[str, Any]:
        cmd = params.get("cmd") or {}
        if isinstance(cmd, dict):
            items = [(str(key), value) for key, value in cmd.items()]
        elif isinstance(cmd, list):
            items = [(str(i), value) for i, value in enumerate(cmd)]
        else:
            raise ApiError(400, "ERROR_ARGUMENT", "cmd must be an object or an array")
        if len(items) > MAX_BATCH:
            raise ApiError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        halt = _truthy(params.get("halt", 0))
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        totals: dict[str, Any] = {}
        nexts: dict[str, Any] = {}
        times: dict[str, Any] = {}
        executed: Counter[str] = Counter()
        for key, command in items:
            raw, _, query = str(command).partition("?")
            name = _method_name(raw)
            method = _METHODS.get(name)
            executed[method.name if method else raw.strip()] += 1
            try:
                if name in _DOWNLOAD_NAMES or (method is not None and method.name == "batch"):
                    raise ApiError(
                        405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage"
                    )
                if method is None:
                    raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
                sub = _resolve_refs(php_parse(query), results)
                sub.pop("auth", None)
                result, total, following, timing = self._call(method, sub, cred, time.time())
            except ApiError as exc:
                errors[key] = exc.body()
                if halt:
                    break
                continue
            results[key] = result
            times[key] = timing
            if total is not None:
                totals[key] = total
            if following is not None:
                nexts[key] = following
        with self._lock:
            self._stats.batch_commands.update(executed)
        return {
            "result": {
                "result": _php_array(results),
                "result_error": _php_array(errors),
                "result_total": _php_array(totals),
                "result_next": _php_array(nexts),
                "result_time": _php_array(times),
            },
            # The outer batch is not counted in operating; its reset time is that of its blocked commands.
            "time": self._time(start, start, "batch", seconds=0.0, related=executed),
        }

    # ----------------------------------------------------------------- methods

    def _lookup(self, product_id: int) -> dict[int, _Stored]:
        """The product's images; raises the catalog errors. Call with the state lock held."""
        if product_id in self._denied:
            raise ApiError(400, 200040300010, "Access Denied")
        product = self._products.get(product_id)
        if product is None:
            raise ApiError(400, 0, "Product is not found")
        return product

    def _m_get(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, None]:
        product_id = _int_param(params, "productId")
        image_id = _int_param(params, "id")
        with self._state_lock:
            stored = self._lookup(product_id).get(image_id)
            failing = (product_id, image_id) in self._failing
        if stored is None:
            raise ApiError(400, 0, "Image is not found")
        if failing:
            raise ApiError(400, 0, "Internal error")
        return {"productImage": self._image_json(stored, cred, None)}, None

    def _m_list(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, int | None, int | None]:
        product_id = _int_param(params, "productId")
        select = _select(params)
        with self._state_lock:
            found = sorted(self._lookup(product_id).items())
        found, total, following = readings.image_page(
            found, params, self.image_page_size, self.image_list_cap, self.image_list_ignore_start
        )
        images = [self._image_json(stored, cred, select) for _, stored in found]
        return {"productImages": images}, total, following

    def _m_add(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, None]:
        return self._writes.add(params, cred)

    def _m_delete(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, None]:
        return self._writes.delete(params, cred)

    # The whole catalog.

    def _m_catalogs(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        query = self._query(params, _CATALOG_FIELDS)
        shown = [row for row in _catalog_rows() if row["iblockId"] not in self.hidden_catalogs]
        rows, total, following = listing.page(shown, query)
        return {"catalogs": [query.project(row) for row in rows]}, total, following

    def _m_properties(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, int | None, int | None]:
        query = self._query(params, _PROPERTY_FIELDS)
        rows, total, following = listing.page(_property_rows(), query)
        return {"productProperties": [query.project(row) for row in rows]}, total, following

    def _m_products(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, int | None, int | None]:
        return self._list_items(params, "products", None)

    def _m_skus(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        return self._list_items(params, "units", (SKU, EMPTY_SKU))

    def _m_offers(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        return self._list_items(params, "offers", (OFFER, FREE_OFFER))

    def _m_services(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        return self._list_items(params, "services", (SERVICE,))

    def _require_admin(self) -> None:
        if not self.admin:
            raise ApiError(400, 200040300010, "Access Denied")

    @staticmethod
    def _query(params: dict[str, Any], fields: Iterable[str], require: bool = False) -> listing.ListQuery:
        try:
            return listing.ListQuery.parse(
                params, fields, require=require, is_field=lambda n: bool(_PROPERTY_NAME.fullmatch(n))
            )
        except listing.ListError as exc:
            raise ApiError(400, 0, str(exc)) from None

    def _list_items(
        self, params: dict[str, Any], key: str, types: tuple[int, ...] | None
    ) -> tuple[Any, int | None, int | None]:
        query = self._query(params, _ITEM_FIELDS, require=True)
        with self._state_lock:
            keyset = self._keyset_page(query) if types is None else None
            if keyset is None:
                rows = [
                    self._item_row(item)
                    for item in self._items.values()
                    if (types is None or item.type in types) and item.iblock_id not in self.empty_catalogs
                ]
        found, total, following = keyset if keyset is not None else listing.page(rows, query)
        with self._state_lock:
            pictured = [self._with_pictures(row) for row in found if row["id"] in self._items]
        for row in pictured:
            if row["id"] in self.delete_once_listed:
                self.delete_once_listed.discard(row["id"])
                self.delete_item(row["id"])
        return {key: [query.project(row) for row in pictured]}, total, following

    def _keyset_page(
        self, query: listing.ListQuery
    ) -> tuple[list[dict[str, Any]], int | None, int | None] | None:
        """The page of the documented fast listing (``filter[iblockId]``, optionally ``filter[>id]``, ordered by
        id ascending) from the id index, as :func:`listing.page` would cut it; None for any other query.
        State lock held."""
        if query.order != (("id", False),):
            return None
        iblock = after = None
        for condition in query.conditions:
            value = listing._coerce(condition.value, 0)
            if value is None or isinstance(condition.value, list | dict):
                return None
            if (condition.field, condition.op) == ("iblockId", "=") and iblock is None:
                iblock = value
            elif (condition.field, condition.op) == ("id", ">") and after is None:
                after = value
            else:
                return None
        if iblock is None:
            return None
        if self._item_index is None:
            index: dict[int, list[int]] = {}
            for item_id in sorted(self._items):
                index.setdefault(self._items[item_id].iblock_id, []).append(item_id)
            self._item_index = index
        ids = [] if iblock in self.empty_catalogs else self._item_index.get(iblock, [])
        at = bisect.bisect_right(ids, after) if after is not None else 0
        if query.start < 0:
            chosen, total, following = ids[at : at + listing.PAGE], None, None
        else:
            chosen = ids[at + query.start : at + query.start + listing.PAGE]
            total = len(ids) - at
            following = query.start + listing.PAGE if query.start + listing.PAGE < total else None
        return [self._item_row(self._items[i]) for i in chosen], total, following

    def _item_row(self, item: CatalogItem) -> dict[str, Any]:
        """An item's fields but its pictures (enough to filter and order). Call with the state lock held."""
        row: dict[str, Any] = {
            "active": "Y",
            "available": "Y",
            "code": f"item-{item.id}" if item.code is None else item.code,
            "iblockId": item.iblock_id,
            "id": item.id,
            "name": item.name,
            "type": item.type,
            "xmlId": str(item.id) if item.xml_id is None else item.xml_id,
        }
        if item.type in (OFFER, FREE_OFFER):
            parent = item.parent_id
            row["parentId"] = {"value": str(parent), "valueId": str(900000 + item.id)} if parent else None
        return row

    def _with_pictures(self, row: dict[str, Any]) -> dict[str, Any]:
        """``detailPicture``, ``previewPicture`` and the MORE_PHOTO ``property<N>``. State lock held.

        The lowest-id picture of each type fills ``detailPicture`` / ``previewPicture``; every other
        picture (MORE_PHOTO, and extra DETAIL/PREVIEW ones that make_catalog's alternation makes) is a
        value of the MORE_PHOTO property, so the listing names exactly the item's images.
        """
        item_id = row["id"]
        detail = preview = None
        more = []
        for _, stored in sorted(self._products.get(item_id, {}).items()):
            kind = stored.image.type
            if kind == "DETAIL_PICTURE" and detail is None:
                detail = stored
            elif kind == "PREVIEW_PICTURE" and preview is None:
                preview = stored
            else:
                more.append(stored)
        prop = f"property{MORE_PHOTO_PROPERTY_ID.get(row['iblockId'], MORE_PHOTO_PROPERTY_ID[PRODUCT_IBLOCK_ID])}"
        row["detailPicture"] = self._picture(detail, item_id, "detailPicture")
        row["previewPicture"] = self._picture(preview, item_id, "previewPicture")
        row[prop] = [
            {"valueId": str(500000 + stored.file_id), "value": self._picture(stored, item_id, prop)}
            for stored in more
        ]
        return dict(sorted(row.items()))

    def _picture(self, stored: _Stored | None, item_id: int, field_name: str) -> dict[str, str] | None:
        if stored is None:
            return None
        file_id = stored.image.image_id if self.listing_ids_match else stored.file_id
        url = (
            f"/rest/catalog.product.download?fields%5BfieldName%5D={field_name}"
            f"&fields%5BfileId%5D={file_id}&fields%5BproductId%5D={item_id}"
        )
        return {"id": str(file_id), "url": url, "urlMachine": url}

    def _m_scope(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, None]:
        return list(self.scopes), None

    def _m_server_time(self, params: dict[str, Any], cred: _Cred) -> tuple[Any, None]:
        return _iso(int(time.time())), None

    def _image_json(self, stored: _Stored, cred: _Cred, select: set[str] | None) -> dict[str, Any]:
        image = stored.image
        data: dict[str, Any] = {
            "createTime": image.create_time,
            "detailUrl": image.detail_url,
            "downloadUrl": None,
            "id": self.answered_ids.get((image.product_id, image.image_id), image.image_id),
            "name": image.name,
            "productId": image.product_id,
            "type": image.type,
        }
        if select is not None:
            data = {key: value for key, value in data.items() if key in select}
        if "downloadUrl" in data:
            data["downloadUrl"] = self._link(stored.file_id, cred)
        return data

    # ----------------------------------------------------------------- download links

    def _sign(self, payload: str, issued: str, key: str) -> str:
        message = f"download|catalog|{payload}|{issued}|{key}".encode()
        return base64.b64encode(hmac.new(self._secret, message, hashlib.sha256).digest()).decode()

    def _link(self, file_id: int, cred: _Cred) -> str:
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
                return Reply(404, NGINX_404, _HTML, headers, delay=delay)
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

    # ----------------------------------------------------------------- OAuth server

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
