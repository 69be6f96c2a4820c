"""The selection of ``imgsync restore``: pairs, CSV files, products, ``--missing [--since]``, as the recorded
rows they name. Every part is checked before the first request; an error names its place (exit 2)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO, TextIO

from ..config import parse_duration
from ..errors import ConfigError, InputError, UsageError
from ..inputs import iter_csv, iter_products_file, parse_pair
from ..models import ImageRef, StoredImage
from ..store import Store


@dataclass
class Selection:
    """What to restore, as given on the command line."""

    pairs: Sequence[str] = ()
    csv_paths: Sequence[str] = ()
    products: Sequence[int] = ()
    products_files: Sequence[str] = ()
    missing: bool = False
    since: str | None = None
    stdin: TextIO | BinaryIO | None = None

    def empty(self) -> bool:
        return not (self.pairs or self.csv_paths or self.products or self.products_files or self.missing)


_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def parse_since(text: str, now: datetime | None = None) -> str:
    """``--since``: a date (``2026-12-01``, midnight UTC), a time (``2026-12-01T06:00:00Z``) or a duration
    back from now (``36h``, ``2d``), as the ISO text ``missing_since`` is compared with."""
    now = now or datetime.now(UTC)
    value = text.strip()
    seconds = parse_duration(value)
    when: datetime | None = None
    if seconds is not None:
        when = now - timedelta(seconds=seconds)
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            when = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            if _DATE.fullmatch(value):
                when = when.replace(hour=0, minute=0, second=0)
    if when is None:
        raise ConfigError(
            f"--since {text!r}: expected a date (2026-12-01), a time (2026-12-01T06:00:00Z) or a duration "
            "back from now (36h, 2d)"
        )
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def select_rows(store: Store, selection: Selection) -> list[StoredImage]:
    """The recorded rows the selection names, each once, in the order given. Raises :class:`InputError`
    naming the first thing the database does not record."""
    if selection.empty():
        raise UsageError(
            "nothing selected: give PRODUCT_ID:IMAGE_ID pairs, --csv, --product, --products-file or --missing"
        )
    if selection.since is not None and not selection.missing:
        raise UsageError("--since goes with --missing")
    db = store.path
    chosen: dict[ImageRef, StoredImage] = {}
    named: list[tuple[ImageRef, str]] = [
        (parse_pair(text, f"argument {n}"), f"argument {text!r}") for n, text in enumerate(selection.pairs, 1)
    ]
    for path in selection.csv_paths:
        named += list(iter_csv(path, selection.stdin))
    for at in range(0, len(named), 400):
        part = named[at : at + 400]
        rows = store.rows_for([ref for ref, _ in part])
        for ref, where in part:
            row = rows.get(ref)
            if row is None:
                raise InputError(f"{where}: image {ref} is not recorded in {db}")
            _check_backed_up(row, where)
            chosen.setdefault(ref, row)
    products: list[tuple[int, str]] = [(pid, f"--product {pid}") for pid in selection.products]
    for path in selection.products_files:
        products += list(iter_products_file(path, selection.stdin))
    for at in range(0, len(products), 400):
        chunk = products[at : at + 400]
        by_product = store.rows_of_products([pid for pid, _ in chunk])
        for pid, place in chunk:
            backed_up = [r for r in by_product.get(pid, []) if r.sha256]
            if not backed_up:
                raise InputError(f"{place}: the database {db} records no backed-up image of product {pid}")
            for stored in backed_up:
                chosen.setdefault(stored.ref, stored)
    if selection.missing:
        since = parse_since(selection.since) if selection.since is not None else None
        for stored in store.missing_rows(since):
            if stored.sha256:
                chosen.setdefault(stored.ref, stored)
    return list(chosen.values())


def _check_backed_up(row: StoredImage, where: str) -> None:
    if not row.sha256:
        raise InputError(f"{where}: image {row.ref} was never backed up (no sha256 recorded)")
