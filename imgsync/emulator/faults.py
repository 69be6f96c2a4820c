"""Injected failures and what the portal has seen: :class:`Faults`, :class:`Stats`, and the gate every REST
call and download passes first (count it, then overload, injected faults, the leaky bucket, in that order).

The behaviour is described in the package docstring (:mod:`imgsync.emulator`), "Faults and drops".
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .answers import (
    EXPIRED,
    HTML,
    HTML_UTF8,
    INTERNAL,
    JSON_DOWNLOAD_ERROR,
    LOGIN_PAGE,
    NGINX_502,
    NGINX_504,
    OVERLOAD,
    QUERY_LIMIT,
)
from .server import Reply, json_reply

__all__ = ["FaultGate", "Faults", "Stats"]


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


class FaultGate:
    """The portal's counters and its gate: :meth:`_admit` decides, before a request is served, whether it is
    answered at once (overload, an injected fault, a full bucket) and how to mangle its real answer."""

    latency: float
    overload: bool
    faults: Faults
    # Counters, the bucket and the operating-time baskets: one lock, never held while sleeping or doing I/O.
    _lock: threading.Lock
    _stats: Stats

    if TYPE_CHECKING:

        def _take(self) -> bool: ...

    def _init_counters(self) -> None:
        self._lock = threading.Lock()
        self._stats = Stats()

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

    def _admit(self, label: str, kind: str, counted: bool) -> tuple[Reply | None, str]:
        """Count the request, then apply overload, injected faults and the bucket, in that order.

        Returns an early answer, or None and how to mangle the real answer (``""``, ``"cut_json"``,
        ``"stall"``). A faulted request never enters the bucket.
        """
        self._count(label)
        delay = self.latency
        if self.overload:
            self._inject("overload")
            return json_reply(503, OVERLOAD, delay), ""
        faults = self.faults
        mangle = ""
        if faults.applies_to(kind):
            if faults.roll(faults.drop_rate):
                self._inject("drop")
                return Reply(drop=True, delay=delay), ""
            if faults.roll(faults.rate_503):
                self._inject("503")
                return json_reply(503, QUERY_LIMIT, delay), ""
            if faults.roll(faults.rate_500):
                self._inject("500")
                return json_reply(500, INTERNAL, delay), ""
            if faults.roll(faults.rate_502):
                self._inject("502")
                return Reply(502, NGINX_502, HTML, delay=delay), ""
            if faults.roll(faults.rate_504):
                self._inject("504")
                return Reply(504, NGINX_504, HTML, delay=delay), ""
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
                return json_reply(401, EXPIRED, delay), ""
            if self._next_html(faults) or faults.roll(faults.rate_html_download):
                self._inject("html")
                return Reply(200, LOGIN_PAGE, HTML_UTF8, delay=delay), ""
            if faults.roll(faults.rate_json_download):
                self._inject("json_error")
                return json_reply(200, JSON_DOWNLOAD_ERROR, delay), ""
        if mangle:
            self._inject(mangle)
        elif counted and not self._take():
            return json_reply(503, QUERY_LIMIT, delay), ""
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
