"""Product/image pairs from arguments, CSV files and stdin, validated before any request is made.

A CSV file has a header row naming the columns ``productId,id`` or ``product_id,image_id`` (any case, any order,
extra columns ignored) or no header, and then the first two columns are product id and image id. UTF-8 with or
without BOM, comma or semicolon separated (decided per file from its first non-blank line), quoted cells allowed,
blank lines skipped. Every error names the file and line: ``pairs.csv:7: product id 'abc' is not a positive
integer``.

Files are streamed line by line with a bounded read, and :class:`PairSet` keeps the pairs in a private temporary
SQLite database, so a million pairs cost no million-element Python structures.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, BinaryIO, TextIO

from .errors import InputError
from .models import ImageRef
from .worksets import PairSet, ProductSet

__all__ = [
    "MAX_ID",
    "MAX_LINE_BYTES",
    "STDIN_NAME",
    "PairSet",
    "ProductSet",
    "collect_inputs",
    "collect_products",
    "iter_csv",
    "iter_map_csv",
    "iter_products_file",
    "parse_pair",
]

MAX_ID = 2**63 - 1  # SQLite's INTEGER, and what the portal's ids fit in
MAX_LINE_BYTES = 64 * 1024
STDIN_NAME = "<stdin>"

_PRODUCT_COLUMNS = frozenset({"productid", "product_id"})
_IMAGE_COLUMNS = frozenset({"id", "image_id", "imageid"})
_BOM = "\ufeff"


def _show(text: str, limit: int = 40) -> str:
    """``text`` fit for a message: control characters escaped, cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


def _parse_id(cell: str) -> int | None:
    """A positive integer id from ASCII digits, or ``None``. ``+1``, ``=1+2``, ``-3``, ``0``, ``1e3`` are refused."""
    if not cell or len(cell) > 19 or not cell.isascii() or not cell.isdigit():
        return None
    value = int(cell)
    return value if 0 < value <= MAX_ID else None


def _ref(product: str, image: str, where: str) -> ImageRef:
    """The ref for two cells; the error names ``where`` and the first bad cell."""
    product_id = _parse_id(product)
    if product_id is None:
        raise InputError(f"{where}: product id '{_show(product)}' is not a positive integer")
    image_id = _parse_id(image)
    if image_id is None:
        raise InputError(f"{where}: image id '{_show(image)}' is not a positive integer")
    return ImageRef(product_id, image_id)


def parse_pair(text: str, where: str) -> ImageRef:
    """Parse one ``PRODUCT_ID:IMAGE_ID`` argument; ``where`` opens the error message (``"argument 3"``).

    >>> parse_pair(" 12:345 ", "argument 1")
    ImageRef(product_id=12, image_id=345)
    """
    parts = text.split(":")
    if len(parts) != 2:
        raise InputError(f"{where}: '{_show(text)}' is not PRODUCT_ID:IMAGE_ID")
    product, image = (p.strip() for p in parts)
    # The message names the whole argument too: "argument 3: '12:x': image id 'x' is not a positive integer".
    return _ref(product, image, f"{where}: '{_show(text)}'")


class _LineReader:
    """Feeds a CSV reader one decoded line at a time, never holding more than ``MAX_LINE_BYTES`` of a line.

    Lines are read with a bounded ``readline``, so a 100 MB line costs 64 KiB before it is refused. A record
    that spans lines (a quoted cell with newlines, or an unclosed quote) is bounded the same way.
    """

    def __init__(self, stream: IO[Any], name: str) -> None:
        self.stream = stream
        self.name = name
        self.line = 0  # the number of the last line read
        self.record_start = 1  # the first line of the record being read
        self.record_size = 0

    def start_record(self) -> None:
        self.record_start = self.line + 1
        self.record_size = 0

    def _read(self) -> str:
        try:
            raw = self.stream.readline(MAX_LINE_BYTES + 1)
        except UnicodeDecodeError:
            # A text stream decodes ahead of the line it returns, so the bad line is not known exactly.
            after = f" after line {self.line}" if self.line else ""
            raise InputError(f"{self.name}: not valid UTF-8 text{after}") from None
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror or exc}") from None
        if not raw:
            return ""
        self.line += 1
        if len(raw) > MAX_LINE_BYTES:
            raise InputError(f"{self.name}:{self.line}: line is longer than {MAX_LINE_BYTES // 1024} KiB")
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{self.name}:{self.line}: not valid UTF-8 text") from None
        else:
            text = raw
        if self.line == 1 and text.startswith(_BOM):
            text = text[1:]
        return text

    def __iter__(self) -> Iterator[str]:
        while True:
            text = self._read()
            if not text:
                return
            self.record_size += len(text)
            if self.record_size > MAX_LINE_BYTES:
                raise InputError(
                    f"{self.name}:{self.record_start}: record is longer than {MAX_LINE_BYTES // 1024} KiB "
                    "(an unclosed quote?)"
                )
            yield text

    def first_nonblank(self) -> tuple[list[str], str | None]:
        """Lines up to and including the first non-blank one, and that line (``None`` at end of input)."""
        lines = []
        for text in self:
            lines.append(text)
            if text.strip():
                return lines, text
            self.start_record()
        return lines, None


def _columns(n: int) -> str:
    return f"{n} column" if n == 1 else f"{n} columns"


def _header(cells: list[str]) -> tuple[int, int] | None:
    """The (product, image) column indexes if ``cells`` is a header row naming them, else ``None``."""
    names = [c.lower() for c in cells]
    product = next((i for i, c in enumerate(names) if c in _PRODUCT_COLUMNS), None)
    image = next((i for i, c in enumerate(names) if c in _IMAGE_COLUMNS), None)
    if product is None and image is None:
        return None
    if product is None or image is None:
        missing = "product id (productId or product_id)" if product is None else "image id (id or image_id)"
        raise _HeaderError(f"the header names no {missing} column")
    return product, image


class _HeaderError(Exception):
    pass


def _open(path: str, stdin: TextIO | BinaryIO | None) -> tuple[IO[Any], str, bool]:
    """The stream to read, its name for messages, and whether we opened it (and so must close it)."""
    if path == "-":
        stream: IO[Any] = stdin if stdin is not None else sys.stdin
        # Read bytes when we can: the pairs are UTF-8 whatever the locale says.
        return getattr(stream, "buffer", stream), STDIN_NAME, False
    try:
        return open(path, "rb"), path, True
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def iter_csv(path: str, stdin: TextIO | BinaryIO | None = None) -> Iterator[tuple[ImageRef, str]]:
    """Yield each pair of a CSV file with its location (``"pairs.csv:7"``); ``"-"`` reads ``stdin``.

    ``stdin`` defaults to ``sys.stdin`` (its binary buffer when it has one). Streams the file: memory does not grow
    with its size. Raises :class:`~imgsync.errors.InputError` naming file and line at the first bad line, or when
    the file holds no pair at all.
    """
    stream, name, owned = _open(path, stdin)
    try:
        yield from _iter_stream(stream, name)
    finally:
        if owned:
            stream.close()


def _csv_reader(stream: IO[Any], name: str, nothing: str) -> tuple[Any, _LineReader]:
    """A CSV reader over ``stream``, comma or semicolon as its first non-blank line says, and the line
    reader that numbers its lines; ``nothing`` is the error when there is no line at all."""
    lines = _LineReader(stream, name)
    head, first = lines.first_nonblank()
    if first is None:
        raise InputError(f"{name}: {nothing}")
    delimiter = ";" if first.count(";") > first.count(",") else ","

    def source() -> Iterator[str]:
        yield from head
        yield from lines

    return csv.reader(source(), delimiter=delimiter, skipinitialspace=True, strict=True), lines


def _records(reader: Any, lines: _LineReader, name: str) -> Iterator[tuple[list[str], str, str]]:
    """The non-blank records of a CSV reader from :func:`_csv_reader`: ``(stripped cells, "file:line",
    delimiter)``; a record that is not valid CSV raises naming its line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{name}:{lines.record_start}: not valid CSV: {exc}") from None
        where = f"{name}:{reader.line_num}"
        lines.start_record()
        cells = [c.strip() for c in row]
        if any(cells):
            yield cells, where, reader.dialect.delimiter


def _iter_stream(stream: IO[Any], name: str) -> Iterator[tuple[ImageRef, str]]:
    reader, lines = _csv_reader(stream, name, "no product/image pairs found")
    columns: tuple[int, int] | None = None  # from a header; None: the first two
    need = 2
    seen_first = False
    found = False
    for cells, where, delimiter in _records(reader, lines, name):
        if not seen_first:
            seen_first = True
            try:
                columns = _header(cells)
            except _HeaderError as exc:
                raise InputError(f"{where}: {exc}") from None
            if columns is not None:
                need = max(columns) + 1
                continue
            if not any(_parse_id(c) is not None for c in cells[:2]):
                raise InputError(
                    f"{where}: expected a header naming productId,id or product_id,image_id, or a pair of ids; "
                    f"got '{_show(delimiter.join(cells), 60)}'"
                )
        if len(cells) < need:
            raise InputError(f"{where}: expected product id and image id, got {_columns(len(cells))}")
        product, image = (cells[columns[0]], cells[columns[1]]) if columns else (cells[0], cells[1])
        found = True
        yield _ref(product, image, where), where
    if not found:
        raise InputError(f"{name}: no product/image pairs found")


def collect_inputs(
    pairs: Sequence[str], csv_paths: Sequence[str], stdin: TextIO | BinaryIO | None = None
) -> PairSet:
    """Validate every pair argument and CSV file and collect the unique pairs, arguments first.

    Pair arguments are named ``argument 1``, ``argument 2``, ... in messages. Raises
    :class:`~imgsync.errors.InputError` on the first bad item. The caller closes the returned :class:`PairSet`.
    """
    if sum(1 for p in csv_paths if p == "-") > 1:
        raise InputError("stdin ('-') can be read only once")
    found = PairSet()
    try:
        for number, text in enumerate(pairs, start=1):
            found.add(parse_pair(text, f"argument {number}"))
        for path in csv_paths:
            for ref, _where in iter_csv(path, stdin):
                found.add(ref)
    except BaseException:
        found.close()
        raise
    return found


# --- product lists (``--products-file``) ---------------------------------------------------------------------


def iter_products_file(path: str, stdin: TextIO | BinaryIO | None = None) -> Iterator[tuple[int, str]]:
    """Yield each product id of a ``--products-file`` with its location (``"ids.txt:7"``); ``"-"`` reads stdin.

    One id a line, or a CSV file whose header row names a ``productId`` or ``product_id`` column (any case,
    any position, other columns ignored); UTF-8 with or without BOM, comma or semicolon separated (decided
    from the first non-blank line), blank lines skipped. Streams the file. Raises
    :class:`~imgsync.errors.InputError` naming file and line at the first bad line, or when there is no id.
    """
    stream, name, owned = _open(path, stdin)
    try:
        yield from _iter_products(stream, name)
    finally:
        if owned:
            stream.close()


def _iter_products(stream: IO[Any], name: str) -> Iterator[tuple[int, str]]:
    reader, lines = _csv_reader(stream, name, "no product ids found")
    column: int | None = None  # from a header; None: one id a line
    seen_first = found = False
    for cells, where, delimiter in _records(reader, lines, name):
        if not seen_first:
            seen_first = True
            names = [c.lower() for c in cells]
            column = next((i for i, c in enumerate(names) if c in _PRODUCT_COLUMNS), None)
            if column is not None:
                continue
            if len(cells) > 1 or _parse_id(cells[0]) is None and not cells[0].isdigit():
                raise InputError(
                    f"{where}: expected a header naming productId or product_id, or a product id; "
                    f"got '{_show(delimiter.join(cells), 60)}'"
                )
        if column is None:
            if len(cells) > 1:
                raise InputError(f"{where}: expected one product id, got {_columns(len(cells))}")
            cell = cells[0]
        else:
            if len(cells) <= column:
                raise InputError(
                    f"{where}: expected a product id in column {column + 1}, got {_columns(len(cells))}"
                )
            cell = cells[column]
        product_id = _parse_id(cell)
        if product_id is None:
            raise InputError(f"{where}: product id '{_show(cell)}' is not a positive integer")
        found = True
        yield product_id, where
    if not found:
        raise InputError(f"{name}: no product ids found")


_SOURCE_COLUMNS = frozenset({"source_product_id", "sourceproductid", "source"})
_TARGET_COLUMNS = frozenset({"target_product_id", "targetproductid", "target"})


def iter_map_csv(path: str, stdin: TextIO | BinaryIO | None = None) -> Iterator[tuple[int, int, str]]:
    """Yield ``(source product id, target product id, "map.csv:7")`` for each line of a ``restore --map``
    file; ``"-"`` reads stdin.

    A header row naming ``source_product_id,target_product_id`` (any case, any order, other columns
    ignored), or none and the first two columns are the source and the target id; otherwise as a pairs
    CSV (UTF-8 with or without BOM, comma or semicolon, blank lines skipped). Raises
    :class:`~imgsync.errors.InputError` naming file and line at the first bad line, or when the file maps
    nothing.
    """
    stream, name, owned = _open(path, stdin)
    try:
        reader, lines = _csv_reader(stream, name, "no source_product_id,target_product_id lines found")
        columns: tuple[int, int] = (0, 1)
        seen_first = found = False
        for cells, where, delimiter in _records(reader, lines, name):
            if not seen_first:
                seen_first = True
                names = [c.lower() for c in cells]
                source = next((i for i, c in enumerate(names) if c in _SOURCE_COLUMNS), None)
                target = next((i for i, c in enumerate(names) if c in _TARGET_COLUMNS), None)
                if source is not None and target is not None:
                    columns = (source, target)
                    continue
                if source is not None or target is not None or _parse_id(cells[0]) is None:
                    raise InputError(
                        f"{where}: expected a header naming source_product_id,target_product_id, or a pair "
                        f"of product ids; got '{_show(delimiter.join(cells), 60)}'"
                    )
            if len(cells) <= max(columns):
                raise InputError(
                    f"{where}: expected source and target product ids, got {_columns(len(cells))}"
                )
            found = True
            ids = []
            for which, cell in zip(("source", "target"), (cells[columns[0]], cells[columns[1]]), strict=True):
                value = _parse_id(cell)
                if value is None:
                    raise InputError(f"{where}: {which} product id '{_show(cell)}' is not a positive integer")
                ids.append(value)
            yield ids[0], ids[1], where
        if not found:
            raise InputError(f"{name}: no source_product_id,target_product_id lines found")
    finally:
        if owned:
            stream.close()


def collect_products(
    paths: Sequence[str], stdin: TextIO | BinaryIO | None = None, *, stdin_used: bool = False
) -> ProductSet:
    """Validate every ``--products-file`` and collect the unique product ids, files in order.

    ``-`` reads ``stdin``, at most once overall: pass ``stdin_used=True`` when a ``--csv -`` reads it already.
    Raises :class:`~imgsync.errors.InputError` at the first bad line. The caller closes the returned set.

    >>> with collect_products(["ids.txt"]) as ids:      # doctest: +SKIP
    ...     for chunk in ids.chunks(50): ...
    """
    if sum(1 for p in paths if p == "-") + (1 if stdin_used and "-" in paths else 0) > 1:
        raise InputError("stdin ('-') can be read only once")
    found = ProductSet()
    try:
        for path in paths:
            for product_id, _where in iter_products_file(path, stdin):
                found.add(product_id)
    except BaseException:
        found.close()
        raise
    return found
