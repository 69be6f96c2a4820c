"""The work sets of a run: unique pairs or product ids, in first-seen or work order, in bounded memory.

:func:`imgsync.inputs.collect_inputs` and :func:`~imgsync.inputs.collect_products` fill them from the command
line, CSV files and stdin; the sync takes them in chunks of 50.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import Generic, Self, TypeVar

from .models import ImageRef

__all__ = ["PairSet", "ProductSet"]


T = TypeVar("T")


class _PrivateSet(Generic[T]):
    """Unique values in first-seen order (or work order, see :meth:`order_by`), in bounded memory.

    Backed by a private temporary SQLite database (deleted on :meth:`close`); values are inserted in batches.
    Not safe for concurrent use from several threads; do not add while iterating over :meth:`chunks`.
    Subclasses name the columns of one value (the table's key) and how a value maps to them.
    """

    BATCH = 5000
    COLUMNS: tuple[str, ...] = ()

    def __init__(self) -> None:
        # "" is a private, temporary on-disk database: it spills to disk instead of growing in memory.
        self._db = sqlite3.connect("", check_same_thread=False)
        key = ", ".join(self.COLUMNS)
        self._db.executescript(
            f"""
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE items (
                {", ".join(f"{c} INTEGER NOT NULL" for c in self.COLUMNS)},
                rank INTEGER NOT NULL DEFAULT 0,
                since TEXT NOT NULL DEFAULT '',
                UNIQUE ({key})
            );
            """
        )
        self._key = key
        self._marks = ", ".join("?" * len(self.COLUMNS))
        self._where = " AND ".join(f"{c} = ?" for c in self.COLUMNS)
        self._pending: list[tuple[int, ...]] = []
        self._added = 0
        self._unique = 0
        self._closed = False

    def _row(self, value: T) -> tuple[int, ...]:
        raise NotImplementedError

    def _value(self, row: tuple[int, ...]) -> T:
        raise NotImplementedError

    def add(self, value: T) -> None:
        """Add one value; a duplicate of an earlier one is dropped."""
        self._pending.append(self._row(value))
        if len(self._pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")
        with self._db:
            cursor = self._db.executemany(
                f"INSERT OR IGNORE INTO items ({self._key}) VALUES ({self._marks})", self._pending
            )
        self._added += len(self._pending)
        self._unique += cursor.rowcount
        self._pending.clear()

    def __len__(self) -> int:
        """The number of unique values."""
        self._flush()
        return self._unique

    @property
    def duplicates(self) -> int:
        """How many values were dropped as duplicates of earlier ones."""
        self._flush()
        return self._added - self._unique

    def _has(self, value: T) -> bool:
        self._flush()
        if not self._unique:  # asked once per listed image by sync --all: no query for an empty set
            return False
        row = self._db.execute(f"SELECT 1 FROM items WHERE {self._where}", self._row(value)).fetchone()
        return row is not None

    def order_by(self, keys: Callable[[list[T]], Mapping[T, tuple[int, str]]]) -> None:
        """Put the values in work order: ``keys`` (the store's, e.g. ``Store.work_keys``) gives each a
        ``(rank, since)`` key; :meth:`chunks` then yields them by key, first-seen order breaking ties.
        Done in the private database, a few hundred values at a time: memory stays flat."""
        self._flush()
        cursor = self._db.execute(f"SELECT {self._key} FROM items ORDER BY rowid")
        updates: list[tuple[object, ...]] = []
        while rows := cursor.fetchmany(500):
            values = [self._value(tuple(row)) for row in rows]
            found = keys(values)
            updates += [(*found.get(v, (0, "")), *self._row(v)) for v in values]
        cursor.close()
        with self._db:
            self._db.executemany(f"UPDATE items SET rank = ?, since = ? WHERE {self._where}", updates)

    def chunks(self, size: int = 50) -> Generator[list[T], None, None]:
        """Yield the unique values in order, ``size`` at a time (the last chunk may be shorter)."""
        if size < 1:
            raise ValueError("size must be at least 1")
        self._flush()
        cursor = self._db.execute(f"SELECT {self._key} FROM items ORDER BY rank, since, rowid")
        try:
            while rows := cursor.fetchmany(size):
                yield [self._value(tuple(row)) for row in rows]
        finally:
            cursor.close()

    def keyed_chunks(
        self, size: int = 50, *, ranks: tuple[int, ...] | None = None
    ) -> Generator[tuple[tuple[int, str], list[T]], None, None]:
        """Like :meth:`chunks`, each chunk with the work-order key of its first value, for merging several
        inputs (``heapq.merge``); ``ranks`` keeps only the values of these ranks (see :meth:`order_by`)."""
        if size < 1:
            raise ValueError("size must be at least 1")
        self._flush()
        where = f"WHERE rank IN ({', '.join(str(int(r)) for r in ranks)})" if ranks is not None else ""
        cursor = self._db.execute(
            f"SELECT rank, since, {self._key} FROM items {where} ORDER BY rank, since, rowid"
        )
        try:
            while rows := cursor.fetchmany(size):
                yield (int(rows[0][0]), str(rows[0][1])), [self._value(tuple(row[2:])) for row in rows]
        finally:
            cursor.close()

    def close(self) -> None:
        """Drop the temporary database. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PairSet(_PrivateSet[ImageRef]):
    """Unique :class:`~imgsync.models.ImageRef` values (see :class:`_PrivateSet`)."""

    COLUMNS = ("product_id", "image_id")

    def _row(self, value: ImageRef) -> tuple[int, ...]:
        return (value.product_id, value.image_id)

    def _value(self, row: tuple[int, ...]) -> ImageRef:
        return ImageRef(row[0], row[1])

    def __contains__(self, ref: object) -> bool:
        return isinstance(ref, ImageRef) and self._has(ref)


class ProductSet(_PrivateSet[int]):
    """Unique product ids (see :class:`_PrivateSet`)."""

    COLUMNS = ("product_id",)

    def _row(self, value: int) -> tuple[int, ...]:
        return (value,)

    def _value(self, row: tuple[int, ...]) -> int:
        return row[0]

    def __contains__(self, product_id: object) -> bool:
        return isinstance(product_id, int) and self._has(product_id)
