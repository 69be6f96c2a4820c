"""Durations (``90m``, ``1h30m``, ``2d``) and sizes (``20G``, ``512M``) as the caps and ``--since`` spell them."""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_size"]

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?"
)
_DURATION_UNITS = (86400, 3600, 60, 1)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:I?B)?|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_duration(text: str) -> float | None:
    """Seconds in ``90m``, ``6h``, ``1h30m``, ``2d``, ``45s`` (d/h/m/s in that order), or ``None``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or not any(match.groups()):
        return None
    return sum(float(n) * unit for n, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if n)


def parse_size(text: str) -> int | None:
    """Bytes in ``20G``, ``512M``, ``1.5T``, ``20GiB`` (K/M/G/T are powers of 1024) or ``1048576``, or ``None``."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return None
    number, unit = match.group(1), (match.group(2) or "").upper()
    if not unit and "." in number:
        return None  # a fraction of a byte
    return int(float(number) * _SIZE_UNITS[unit])
