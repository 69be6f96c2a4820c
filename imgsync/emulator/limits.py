"""The portal's limits: the leaky bucket (503 ``QUERY_LIMIT_EXCEEDED``) and the per-method operating-time
budget (429 ``OPERATION_TIME_LIMIT``), with :meth:`~Limits.operation_limit` to block a method by hand, and
the ``time`` object every answer carries.

The behaviour is described in the package docstring (:mod:`imgsync.emulator`), "The leaky bucket",
"Operating time" and "Operation limit".
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Any

from .answers import ApiError, iso
from .faults import Stats
from .rest import canonical

__all__ = ["OPERATING_WINDOW", "Limits"]

OPERATING_WINDOW = 600.0  # seconds: ten one-minute baskets


class Limits:
    """The bucket's counter and each method's operating-time baskets, under the counters' lock."""

    rate_limit: float
    burst: float
    operating_limit: float | None
    operating_window: float
    _lock: threading.Lock
    _stats: Stats

    def _init_limits(self) -> None:
        self._level = 0.0
        self._level_at = time.monotonic()
        self._operating: dict[str, list[list[float]]] = {}  # method -> baskets [[start, seconds], ...]
        self._blocks: dict[str, float] = {}  # method -> unix time the operation limit lifts

    def operation_limit(self, seconds: float = 2.0, method: str = "catalog.productImage.get") -> None:
        """For ``seconds`` from now, calls of ``method`` answer 429 ``OPERATION_TIME_LIMIT`` (0 lifts it)."""
        name = canonical(method)
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
            "date_start": iso(int(start)),
            "date_finish": iso(int(finish)),
            "operating": operating,
            "operating_reset_at": reset_at,
        }

    def _check_budget(self, name: str) -> None:
        """Refuse a call of method ``name`` (429) while an operation limit or the time budget blocks it."""
        now = time.time()
        with self._lock:
            blocked_until = self._blocks.get(name, 0.0)
            manual = blocked_until > now
            if not manual:
                blocked_until = self._over_budget(name, now)
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
