"""How fast the client may go: the portal's leaky bucket, each method's operating-time budget, the retry policy.

Nothing here sends a request: the transport asks the bucket for a slot before each one, the budget before
each REST method, and the policy how long to wait before an attempt again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BATCH_SIZE = 50  # the documented maximum number of commands in one batch


class LeakyBucket:
    """A client-side copy of the portal's leaky bucket, shared by every thread of a run.

    The portal adds one to a counter per request, drains ``rate`` per second and refuses a request when
    the counter has reached ``burst``. :meth:`acquire` reserves a slot and sleeps until the counter,
    as the portal will see it, has room; reservations are handed out in order, so threads do not spin.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        # One slot of slack: the portal measures drain at arrival, we at send; jitter could cost one slot.
        self.capacity = max(1.0, float(burst) - 1.0)
        self._clock = clock
        self._sleep = sleep
        self._level = 0.0
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def _drain(self, now: float) -> None:
        self._level = max(0.0, self._level - (now - self._last) * self.rate)
        self._last = now

    def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        with self._lock:
            self._drain(self._clock())
            self._level += 1.0
            wait = max(0.0, (self._level - self.capacity) / self.rate)
            self.waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait

    def fill(self) -> None:
        """The portal said the bucket is full (503): assume it is, so every thread slows down."""
        with self._lock:
            self._drain(self._clock())
            self._level = max(self._level, self.capacity)


#: Commands are expected to cost up to this much more than the largest recent one (the portal's load varies).
HEADROOM = 1.25


class OperatingBudget:
    """Each method's operating time as the portal reports it, so calls slow down before a 429.

    The portal sums each method's execution time over ten one-minute baskets (``window``) and refuses
    (429 ``OPERATION_TIME_LIMIT``) a call when the sum already exceeds its limit (limits.md; 480 s in the
    docs' example, the real cloud value is not published). Every answer reports the sum for its method
    (``time.operating``, or ``result_time[key].operating`` per batch command). The first answer is a
    baseline (its sum is mostly others' use: another integration, the last cron run). We keep per method
    the highest recent reported sum, the rise each later answer showed (an event ``(t, seconds)``) and the
    largest recent rise per command (``cost``). Before sending ``n`` commands of a method, :meth:`reserve` sleeps until
    ``sum + n * cost`` fits under ``threshold * limit``.

    What drops out of the portal's sum meanwhile is modelled from our own events. A basket starts with a
    call and holds the calls of the next ``window / 10``; it drops out ``window`` after its start. So an
    event noted at ``t`` is gone by ``t + window`` at the latest, and was surely still counted in a report
    made before ``t + 0.9 * window``. Only events surely in the last report and surely gone since are taken
    off it: the estimate never runs below the portal's own sum. Usage by others of the same webhook shows
    up in the next report, which replaces the estimate.
    """

    def __init__(
        self,
        limit: float = 480.0,
        *,
        threshold: float = 0.9,
        window: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.threshold = threshold
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._reported: dict[str, tuple[float, float]] = {}  # method -> (sum, reported at)
        self._events: dict[str, list[tuple[float, float]]] = {}  # method -> [(at, seconds)], oldest first
        self._costs: dict[str, list[float]] = {}  # method -> the last rises per command
        self._reserved: dict[str, float] = {}  # seconds sent but not yet answered
        self.waited = 0.0
        self.spent: dict[str, float] = {}  # method -> total rise seen (what this run cost the portal)

    def note(self, method: str, timing: Any) -> None:
        """Record one command's ``time`` object (``operating``, ``operating_reset_at``)."""
        if not isinstance(timing, dict):
            return
        used = timing.get("operating")
        if not isinstance(used, int | float) or isinstance(used, bool):
            return
        now = self._clock()
        with self._lock:
            reported = self._reported.get(method)
            if reported is None:
                # The first answer's sum holds what others used in the window (another integration, the
                # last cron run) as well as this call: a baseline to measure from, not this run's cost.
                self._reported[method] = (float(used), now)
                return
            before = self._estimate(method, now)
            costs = self._costs.setdefault(method, [])
            # A sum lower than expected: baskets dropped out meanwhile, or (parallel requests) an older
            # report read after a newer one; the call still cost about as usual.
            rise = float(used) - before if used >= before else (max(costs) if costs else 0.0)
            rise = max(0.0, rise)
            costs.append(rise)
            del costs[:-20]
            self._events.setdefault(method, []).append((now, rise))
            # Keep the highest recent report: answers arrive out of order, and a lower sum read within a
            # basket's time of a higher one is more likely older than a sign that baskets dropped out.
            if used >= before or now - reported[1] >= self.window / 10:
                self._reported[method] = (float(used), now)
            self.spent[method] = self.spent.get(method, 0.0) + rise

    def cost(self, method: str) -> float | None:
        """The largest recent operating time per command of ``method`` (None before any answer)."""
        with self._lock:
            costs = self._costs.get(method)
            return max(costs) if costs else None

    def capacity(self, method: str) -> int | None:
        """How many commands of ``method`` one request should hold (None while the cost is unknown): a tenth
        of a window's budget, one basket's worth. The portal checks each command of a batch against the
        limit, and a request waits until its whole cost fits; small requests keep the sum close under the
        threshold all the time (large ones leave it, on average, half a request below), and a command
        costlier than the last ones did less harm."""
        cost = self.cost(method)
        if cost is None:
            return None
        return max(1, int(self.threshold * self.limit / (10 * HEADROOM * cost))) if cost > 0 else BATCH_SIZE

    def _estimate(self, method: str, now: float) -> float:
        """The method's sum now: the last report minus our own events dropped out since. Lock held."""
        reported = self._reported.get(method)
        if reported is None:
            return 0.0
        used, at = reported
        events = self._events.get(method, [])
        while events and events[0][0] + self.window <= at:
            events.pop(0)  # gone before the report: the report does not hold it
        return max(
            0.0, used - sum(seconds for t, seconds in self._droppable(events, at) if t + self.window <= now)
        )

    def _droppable(self, events: list[tuple[float, float]], at: float) -> Iterator[tuple[float, float]]:
        """The events surely counted in a report made at ``at`` (their basket cannot have dropped yet)."""
        return (e for e in events if at < e[0] + 0.9 * self.window)

    def delay(self, counts: Mapping[str, int]) -> float:
        """Seconds to wait before sending ``counts`` commands per method (0: send now)."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for method, n in counts.items():
                costs = self._costs.get(method)
                if not costs:
                    continue
                need = (
                    self._estimate(method, now) + self._reserved.get(method, 0.0) + n * HEADROOM * max(costs)
                )
                if need <= self.threshold * self.limit:
                    continue
                # Wait for the first of our own events whose drop-out brings it under; if none does,
                # (the rest is someone else's use, or one request is bigger than the budget) send anyway:
                # a 429 then waits for operating_reset_at as before.
                over = need - self.threshold * self.limit
                _used, at = self._reported[method]
                for t, seconds in self._droppable(self._events.get(method, []), at):
                    if t + self.window > now:
                        over -= seconds
                        if over <= 0:
                            wait = max(wait, t + self.window - now + 0.01)
                            break
        return wait

    @contextmanager
    def reserve(self, counts: Mapping[str, int], sleep: Callable[[float], None]) -> Iterator[None]:
        """Wait (through ``sleep``) until ``counts`` fit, and hold their expected cost until answered,
        so that parallel threads do not all spend the same room."""
        for _ in range(100):  # each wait lets at least one event drop out; 100 is a guard, not a plan
            wait = self.delay(counts)
            if wait <= 0:
                break
            with self._lock:
                self.waited += wait
            log.info(
                "pacing %s: waiting %.1f s for the portal's operating-time budget", ", ".join(counts), wait
            )
            sleep(wait)
        with self._lock:
            held = {m: n * max(self._costs.get(m) or [0.0]) for m, n in counts.items()}
            for m, s in held.items():
                self._reserved[m] = self._reserved.get(m, 0.0) + s
        try:
            yield
        finally:
            with self._lock:
                for m, s in held.items():
                    self._reserved[m] = max(0.0, self._reserved.get(m, 0.0) - s)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures (exponential backoff, full jitter, a cap)."""

    attempts: int = 8
    base: float = 0.25
    cap: float = 20.0
    max_wait_for_reset: float = 600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.5, 1.0) * min(self.cap, self.base * (2**attempt))
