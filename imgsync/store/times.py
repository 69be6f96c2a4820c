"""The timestamps every column holds: UTC text that sorts as it compares."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> str:
    """ISO 8601 in UTC, to the second: what every timestamp column holds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now_precise() -> str:
    """UTC to the microsecond: a journal row's age decides when its product may be looked at."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
