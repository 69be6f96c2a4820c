"""A client-side leaky bucket for the two baseline scripts, so they do not provoke 503s either.

The same model as the portal's (a counter that drains ``rate`` per second and refuses at ``burst``), kept
apart from :mod:`imgsync.bitrix` on purpose: the baselines stand for what a user would write without
imgsync, so they share no code with it. One slot is kept free for jitter, as imgsync does.
"""

from __future__ import annotations

import threading
import time


class Pacer:
    """``wait()`` before each request; ``fill()`` after a 503."""

    def __init__(self, rate: float, burst: float, level: float = 0.0) -> None:
        self.rate = rate
        self.capacity = max(1.0, burst - 1.0)
        self.level = min(level, self.capacity)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            self.level = max(0.0, self.level - (now - self.last) * self.rate) + 1.0
            self.last = now
            delay = (self.level - self.capacity) / self.rate
        if delay > 0:
            time.sleep(delay)

    def fill(self) -> None:
        with self.lock:
            self.level = self.capacity
            self.last = time.monotonic()
