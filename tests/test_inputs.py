import io
import re
import tracemalloc

import pytest

from imgsync.errors import InputError
from imgsync.inputs import (
    PairSet,
    ProductSet,
    collect_inputs,
    collect_products,
    iter_csv,
    iter_products_file,
    parse_pair,
)
from imgsync.models import ImageRef


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def refs(*pairs: tuple[int, int]) -> list[ImageRef]:
    return [ImageRef(p, i) for p, i in pairs]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in tmp_path, so that file names in messages are as short as a user would type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def csv_file(folder, text: str | bytes, name: str = "pairs.csv") -> str:
    path = folder / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return name


def read(path: str, stdin=None) -> list[tuple[ImageRef, str]]:
    return list(iter_csv(path, stdin))


# --- parse_pair ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12:345", ImageRef(12, 345)),
        (" 12 : 345 ", ImageRef(12, 345)),
        ("007:1", ImageRef(7, 1)),
        (f"{2**63 - 1}:1", ImageRef(2**63 - 1, 1)),
    ],
)
def test_parse_pair(text, expected):
    assert parse_pair(text, "argument 1") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12:x", "argument 3: '12:x': image id 'x' is not a positive integer"),
        ("abc:1", "argument 3: 'abc:1': product id 'abc' is not a positive integer"),
        ("0:1", "argument 3: '0:1': product id '0' is not a positive integer"),
        ("-5:1", "argument 3: '-5:1': product id '-5' is not a positive integer"),
        ("+5:1", "argument 3: '+5:1': product id '+5' is not a positive integer"),
        ("=1+2:1", "argument 3: '=1+2:1': product id '=1+2' is not a positive integer"),
        ("1:1e3", "argument 3: '1:1e3': image id '1e3' is not a positive integer"),
        ("1:", "argument 3: '1:': image id '' is not a positive integer"),
        (f"1:{2**63}", f"argument 3: '1:{2**63}': image id '{2**63}' is not a positive integer"),
        ("1:\u0663", "argument 3: '1:\u0663': image id '\u0663' is not a positive integer"),  # Arabic-Indic 3
        ("12", "argument 3: '12' is not PRODUCT_ID:IMAGE_ID"),
        ("1:2:3", "argument 3: '1:2:3' is not PRODUCT_ID:IMAGE_ID"),
        ("1:\x1b[2J", "argument 3: '1:\\x1b[2J': image id '\\x1b[2J' is not a positive integer"),
    ],
)
def test_parse_pair_errors(text, message):
    with pytest.raises(InputError, match=exactly(message)):
        parse_pair(text, "argument 3")


def test_long_arguments_are_cut_in_messages():
    with pytest.raises(
        InputError,
        match=exactly(f"argument 1: '1:{'9' * 35}...': image id '{'9' * 37}...' is not a positive integer"),
    ):
        parse_pair("1:" + "9" * 1000, "argument 1")


# --- CSV: the accepted forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "productId,id\n12,345\n13,1\n",
        "product_id,image_id\n12,345\n13,1\n",
        "PRODUCTID,ID\n12,345\n13,1\n",
        "Product_Id,Image_ID\n12,345\n13,1\n",
        "id,productId\n345,12\n1,13\n",
        "name,image_id,size,product_id,url\nfront.jpg,345,10,12,x\nback.jpg,1,20,13,y\n",
        "12,345\n13,1\n",
        "12,345,front.jpg,extra\n13,1,back.jpg,extra\n",
        "productId;id\n12;345\n13;1\n",
        "12;345;a,b\n13;1;c,d\n",
        '"productId","id"\n"12","345"\n" 13 ",  "1"\n',
        "  productId , id  \n  12 ,  345 \n13,1\r\n",
        "productId,id\r\n12,345\r\n13,1\r\n",
        "12,345\n13,1",  # no newline at the end
    ],
)
def test_csv_forms(in_tmp, text):
    assert [ref for ref, _ in read(csv_file(in_tmp, text))] == refs((12, 345), (13, 1))


def test_locations_count_every_physical_line(in_tmp):
    name = csv_file(in_tmp, "\n\nproductId,id\n12,345\n\n   \n,,\n13,1\n\n")
    assert read(name) == [(ImageRef(12, 345), "pairs.csv:4"), (ImageRef(13, 1), "pairs.csv:8")]


def test_bom(in_tmp):
    name = csv_file(in_tmp, b"\xef\xbb\xbfproductId;id\r\n12;345\r\n")
    assert read(name) == [(ImageRef(12, 345), "pairs.csv:2")]


def test_bom_without_header(in_tmp):
    name = csv_file(in_tmp, b"\xef\xbb\xbf12,345\n")
    assert read(name) == [(ImageRef(12, 345), "pairs.csv:1")]


def test_utf8_in_extra_columns(in_tmp):
    name = csv_file(in_tmp, "product_id,image_id,name\n12,345,фото-товара.jpg\n")
    assert read(name) == [(ImageRef(12, 345), "pairs.csv:2")]


def test_quoted_cell_with_a_newline(in_tmp):
    name = csv_file(in_tmp, 'productId,id,note\n12,345,"two\nlines"\n13,1,x\n')
    assert read(name) == [(ImageRef(12, 345), "pairs.csv:3"), (ImageRef(13, 1), "pairs.csv:4")]


def test_delimiter_is_decided_per_file_from_the_first_nonblank_line(in_tmp):
    semi = csv_file(in_tmp, "\n12;345\n", "semi.csv")
    comma = csv_file(in_tmp, "\n12,345\n", "comma.csv")
    assert [r for r, _ in read(semi)] == [r for r, _ in read(comma)] == refs((12, 345))


@pytest.mark.parametrize(
    "stdin",
    [
        io.BytesIO(b"\xef\xbb\xbfproductId,id\n12,345\n"),
        io.StringIO("productId,id\n12,345\n"),
        io.TextIOWrapper(
            io.BytesIO(b"productId,id\n12,345\n"), encoding="latin-1"
        ),  # bytes are read as UTF-8
    ],
)
def test_stdin(stdin):
    assert read("-", stdin) == [(ImageRef(12, 345), "<stdin>:2")]


def test_stdin_text_stream_with_a_bom():
    assert read("-", io.StringIO("\ufeff12;345\n")) == [(ImageRef(12, 345), "<stdin>:1")]


def test_iter_csv_streams(in_tmp):
    name = csv_file(in_tmp, "12,345\n13,1\nbad\n")
    pairs = iter_csv(name)
    assert next(pairs) == (ImageRef(12, 345), "pairs.csv:1")  # before the bad line is read
    assert next(pairs) == (ImageRef(13, 1), "pairs.csv:2")
    with pytest.raises(
        InputError, match=exactly("pairs.csv:3: expected product id and image id, got 1 column")
    ):
        next(pairs)


# --- CSV: errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("productId,id\n12,345\n=1+2,5\n", "pairs.csv:3: product id '=1+2' is not a positive integer"),
        ("productId,id\n12,+1\n", "pairs.csv:2: image id '+1' is not a positive integer"),
        ("productId,id\n@x,1\n", "pairs.csv:2: product id '@x' is not a positive integer"),
        ("productId,id\n-3,1\n", "pairs.csv:2: product id '-3' is not a positive integer"),
        ("productId,id\n0,1\n", "pairs.csv:2: product id '0' is not a positive integer"),
        (
            "productId,id\n1,9223372036854775808\n",
            "pairs.csv:2: image id '9223372036854775808' is not a positive integer",
        ),
        ("productId,id\n1,12.0\n", "pairs.csv:2: image id '12.0' is not a positive integer"),
        ("productId,id\n1,\n", "pairs.csv:2: image id '' is not a positive integer"),
        ("12,345\n\n\n7\n", "pairs.csv:4: expected product id and image id, got 1 column"),
        ("id,name,productId\n1,x,2\n3,y\n", "pairs.csv:3: expected product id and image id, got 2 columns"),
        (
            "product,image\n1,2\n",
            "pairs.csv:1: expected a header naming productId,id or product_id,image_id, or a pair of ids; got 'product,image'",
        ),
        (
            "\n\nfoo;bar\n1;2\n",
            "pairs.csv:3: expected a header naming productId,id or product_id,image_id, or a pair of ids; got 'foo;bar'",
        ),
        (
            "=1+2,=3\n",
            "pairs.csv:1: expected a header naming productId,id or product_id,image_id, or a pair of ids; got '=1+2,=3'",
        ),
        ("=1+2,3\n", "pairs.csv:1: product id '=1+2' is not a positive integer"),
        ("productId,name\n1,x\n", "pairs.csv:1: the header names no image id (id or image_id) column"),
        (
            "image_id,name\n1,x\n",
            "pairs.csv:1: the header names no product id (productId or product_id) column",
        ),
        ('12,"345"x\n', "pairs.csv:1: not valid CSV: ',' expected after '\"'"),
    ],
)
def test_bad_lines(in_tmp, text, message):
    name = csv_file(in_tmp, text)
    with pytest.raises(InputError, match=exactly(message)):
        read(name)


@pytest.mark.parametrize("text", ["", "\n\n  \n", "productId,id\n", "productId,id\n\n,,\n", "\ufeff"])
def test_no_pairs_at_all(in_tmp, text):
    name = csv_file(in_tmp, text, "empty.csv")
    with pytest.raises(InputError, match=exactly("empty.csv: no product/image pairs found")):
        read(name)


def test_empty_stdin():
    with pytest.raises(InputError, match=exactly("<stdin>: no product/image pairs found")):
        read("-", io.BytesIO(b""))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"12,345\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n", "pairs.csv:2: not valid UTF-8 text"),
        (b"\xff\xfe1\x002\x00", "pairs.csv:1: not valid UTF-8 text"),  # UTF-16
        (b"12,345\n1,2\x00\n", "pairs.csv:2: image id '2\\x00' is not a positive integer"),
    ],
)
def test_binary_junk(in_tmp, data, message):
    name = csv_file(in_tmp, data)
    with pytest.raises(InputError, match=exactly(message)):
        read(name)


class TextOnly(io.TextIOBase):
    """A text stream without a binary ``buffer``: it decodes as it reads."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")

    def readline(self, size=-1):
        return self.inner.readline(size)


def test_text_only_stdin():
    assert read("-", TextOnly(b"1,2\n")) == [(ImageRef(1, 2), "<stdin>:1")]


def test_binary_junk_on_a_text_only_stdin():
    # The text layer decodes ahead, so the error comes before the first line is returned.
    with pytest.raises(InputError, match=exactly("<stdin>: not valid UTF-8 text")):
        read("-", TextOnly(b"1,2\n\xff\xff\n"))
    big = b"1,2\n" * 10000 + b"\xff\n"
    with pytest.raises(InputError, match=r"^<stdin>: not valid UTF-8 text after line \d+$"):
        read("-", TextOnly(big))


def test_long_line_is_refused_without_reading_it_whole(in_tmp):
    (in_tmp / "big.csv").write_bytes(b"12,345\n" + b"1," + b"9" * (20 * 1024 * 1024) + b"\n13,1\n")
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=exactly("big.csv:2: line is longer than 64 KiB")):
            read("big.csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024


def test_line_of_exactly_64_kib_is_fine(in_tmp):
    line = b"12,345," + b"x" * (64 * 1024 - 8) + b"\n"
    assert len(line) == 64 * 1024
    name = csv_file(in_tmp, line)
    assert read(name) == [(ImageRef(12, 345), "pairs.csv:1")]


def test_unclosed_quote_is_bounded(in_tmp):
    name = csv_file(in_tmp, 'productId,id\n12,"345\n' + "short line\n" * 20000)
    with pytest.raises(
        InputError, match=exactly("pairs.csv:2: record is longer than 64 KiB (an unclosed quote?)")
    ):
        read(name)


def test_unclosed_quote_at_the_end(in_tmp):
    name = csv_file(in_tmp, 'productId,id\n12,"345\n')
    with pytest.raises(InputError, match=exactly("pairs.csv:2: not valid CSV: unexpected end of data")):
        read(name)


def test_missing_file(in_tmp):
    with pytest.raises(InputError, match=exactly("cannot read pairs.csv: No such file or directory")):
        read("pairs.csv")


def test_directory(in_tmp):
    (in_tmp / "dir").mkdir()
    with pytest.raises(InputError, match=exactly("cannot read dir: Is a directory")):
        read("dir")


def test_file_is_closed_after_an_error(in_tmp, monkeypatch):
    opened = []
    real_open = open

    def tracking_open(*args, **kwargs):
        fh = real_open(*args, **kwargs)
        opened.append(fh)
        return fh

    monkeypatch.setattr("builtins.open", tracking_open)
    name = csv_file(in_tmp, "12,345\nx,1\n")
    with pytest.raises(InputError):
        read(name)
    assert opened and all(fh.closed for fh in opened)


# --- PairSet -------------------------------------------------------------------------------------------------


def test_pairset_drops_duplicates_keeping_first_seen_order():
    with PairSet() as pairs:
        for ref in refs((5, 1), (1, 1), (5, 1), (3, 2), (1, 1), (2, 9)):
            pairs.add(ref)
        pairs.add(ImageRef(3, 2))
        assert len(pairs) == 4
        assert pairs.duplicates == 3
        assert list(pairs.chunks(3)) == [refs((5, 1), (1, 1), (3, 2)), refs((2, 9))]
        assert [ref for chunk in pairs.chunks() for ref in chunk] == refs((5, 1), (1, 1), (3, 2), (2, 9))
        assert ImageRef(3, 2) in pairs and ImageRef(2, 3) not in pairs and "3:2" not in pairs


def test_pairset_across_batches():
    count = PairSet.BATCH * 2 + 17
    with PairSet() as pairs:
        for i in [*range(count, 0, -1), *range(1, count + 1)]:
            pairs.add(ImageRef(i % 1000 + 1, i))
        assert len(pairs) == count
        assert pairs.duplicates == count
        chunks = list(pairs.chunks())
        assert [len(c) for c in chunks[:-1]] == [50] * (len(chunks) - 1)
        flat = [ref for chunk in chunks for ref in chunk]
        assert flat == [ImageRef(i % 1000 + 1, i) for i in range(count, 0, -1)]


def test_pairset_empty_and_closed():
    pairs = PairSet()
    assert len(pairs) == 0 and pairs.duplicates == 0 and list(pairs.chunks()) == []
    pairs.close()
    pairs.close()
    with pytest.raises(ValueError, match=exactly("size must be at least 1")):
        next(PairSet().chunks(0))


def test_pairset_holds_the_largest_ids():
    with PairSet() as pairs:
        pairs.add(ImageRef(2**63 - 1, 2**63 - 1))
        assert [ref for chunk in pairs.chunks() for ref in chunk] == [ImageRef(2**63 - 1, 2**63 - 1)]


# --- collect_inputs ------------------------------------------------------------------------------------------


def test_collect_inputs_arguments_first_then_files_in_order(in_tmp):
    a = csv_file(in_tmp, "productId,id\n3,1\n1,1\n", "a.csv")
    b = csv_file(in_tmp, "2,2\n3,1\n", "b.csv")
    stdin = io.BytesIO(b"product_id;image_id\n9;9\n1;1\n")
    with collect_inputs(["1:1", "4:4", "1:1"], [a, "-", b], stdin) as pairs:
        assert [ref for chunk in pairs.chunks() for ref in chunk] == refs(
            (1, 1), (4, 4), (3, 1), (9, 9), (2, 2)
        )
        assert pairs.duplicates == 4


def test_collect_inputs_names_the_bad_argument():
    with pytest.raises(
        InputError, match=exactly("argument 2: '12:x': image id 'x' is not a positive integer")
    ):
        collect_inputs(["1:1", "12:x"], [])


def test_collect_inputs_stops_at_the_first_bad_file_line(in_tmp):
    good = csv_file(in_tmp, "1,1\n", "good.csv")
    bad = csv_file(in_tmp, "1,1\n2,-2\n3,x\n", "bad.csv")
    with pytest.raises(InputError, match=exactly("bad.csv:2: image id '-2' is not a positive integer")):
        collect_inputs([], [good, bad])


def test_collect_inputs_reads_stdin_once():
    with pytest.raises(InputError, match=exactly("stdin ('-') can be read only once")):
        collect_inputs([], ["-", "-"], io.BytesIO(b"1,1\n"))


def test_collect_inputs_closes_its_pairset_on_error(in_tmp, monkeypatch):
    closed = []
    real_close = PairSet.close
    monkeypatch.setattr(PairSet, "close", lambda self: (closed.append(self), real_close(self)))
    with pytest.raises(InputError):
        collect_inputs(["1:1"], ["missing.csv"])
    assert len(closed) == 1


# --- --products-file -----------------------------------------------------------------------------------------


def products(path: str, stdin=None) -> list[tuple[int, str]]:
    return list(iter_products_file(path, stdin))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12\n345\n", [(12, "ids.txt:1"), (345, "ids.txt:2")]),
        ("\n 12 \n\n345\n", [(12, "ids.txt:2"), (345, "ids.txt:4")]),  # blank lines skipped, counted
        ("12\r\n345", [(12, "ids.txt:1"), (345, "ids.txt:2")]),
        ('"12"\n', [(12, "ids.txt:1")]),
        ("productId\n12\n", [(12, "ids.txt:2")]),
        ("name,PRODUCT_ID,price\nA,12,3.5\n\nB,345,\n", [(12, "ids.txt:2"), (345, "ids.txt:4")]),
        ("name;ProductId\nA;12\n", [(12, "ids.txt:2")]),
        ('product_id,name\n12,"a, b"\n', [(12, "ids.txt:2")]),
        ("\ufeffproductId\n12\n", [(12, "ids.txt:2")]),
        ("\ufeff12\n", [(12, "ids.txt:1")]),
        ("12\n12\n", [(12, "ids.txt:1"), (12, "ids.txt:2")]),  # the set drops the duplicate, not the reader
    ],
)
def test_products_file_forms(in_tmp, text, expected):
    assert products(csv_file(in_tmp, text, "ids.txt")) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12\nabc\n", "ids.txt:2: product id 'abc' is not a positive integer"),
        ("12\n0\n", "ids.txt:2: product id '0' is not a positive integer"),
        ("12\n-3\n", "ids.txt:2: product id '-3' is not a positive integer"),
        ("12\n1e3\n", "ids.txt:2: product id '1e3' is not a positive integer"),
        (f"{2**63}\n", f"ids.txt:1: product id '{2**63}' is not a positive integer"),
        ("12\n12,13\n", "ids.txt:2: expected one product id, got 2 columns"),
        (
            "abc\n12\n",
            "ids.txt:1: expected a header naming productId or product_id, or a product id; got 'abc'",
        ),
        (
            "name,id\nA,12\n",
            "ids.txt:1: expected a header naming productId or product_id, or a product id; got 'name,id'",
        ),
        ("name,productId\nA,x\n", "ids.txt:2: product id 'x' is not a positive integer"),
        ("name,productId\nA\n", "ids.txt:2: expected a product id in column 2, got 1 column"),
        ("productId\n\n\n", "ids.txt: no product ids found"),
        ("\n\n", "ids.txt: no product ids found"),
        ("", "ids.txt: no product ids found"),
        ('12\n"34\n', "ids.txt:2: not valid CSV: unexpected end of data"),
    ],
)
def test_products_file_errors(in_tmp, text, message):
    with pytest.raises(InputError, match=exactly(message)):
        products(csv_file(in_tmp, text, "ids.txt"))


def test_products_file_not_utf8_and_missing(in_tmp):
    with pytest.raises(InputError, match=exactly("ids.txt:2: not valid UTF-8 text")):
        products(csv_file(in_tmp, b"12\n\xff\n", "ids.txt"))
    with pytest.raises(InputError, match=exactly("cannot read nope.txt: No such file or directory")):
        products("nope.txt")


def test_products_from_stdin():
    assert products("-", io.BytesIO(b"\xef\xbb\xbfproduct_id;x\n7;a\n")) == [(7, "<stdin>:2")]
    with pytest.raises(InputError, match=exactly("<stdin>: no product ids found")):
        products("-", io.BytesIO(b""))


def test_collect_products_dedups_in_first_seen_order(in_tmp):
    a = csv_file(in_tmp, "5\n3\n5\n", "a.txt")
    b = csv_file(in_tmp, "productId\n3\n9\n", "b.csv")
    with collect_products([a, b]) as found:
        assert (len(found), found.duplicates, [i for c in found.chunks() for i in c]) == (3, 2, [5, 3, 9])
        assert 9 in found and 4 not in found and "9" not in found


def test_collect_products_reads_stdin_once(in_tmp):
    with pytest.raises(InputError, match=exactly("stdin ('-') can be read only once")):
        collect_products(["-", "-"], io.BytesIO(b"1\n"))
    with pytest.raises(InputError, match=exactly("stdin ('-') can be read only once")):
        collect_products(["-"], io.BytesIO(b"1\n"), stdin_used=True)  # --csv - read it already
    with collect_products(["-"], io.BytesIO(b"1\n")) as found:
        assert [i for c in found.chunks() for i in c] == [1]


def test_collect_products_stops_at_the_first_bad_line_and_closes(in_tmp, monkeypatch):
    closed = []
    real_close = ProductSet.close
    monkeypatch.setattr(ProductSet, "close", lambda self: (closed.append(self), real_close(self)))
    good = csv_file(in_tmp, "1\n", "a.txt")
    bad = csv_file(in_tmp, "2\nx\n", "b.txt")
    with pytest.raises(InputError, match=exactly("b.txt:2: product id 'x' is not a positive integer")):
        collect_products([good, bad])
    assert len(closed) == 1


def test_productset_chunks_across_batches():
    with ProductSet() as found:
        for product_id in [*range(ProductSet.BATCH * 2 + 7, 0, -1), 1, 2, 3]:
            found.add(product_id)
        chunks = list(found.chunks(50))
        assert len(found) == ProductSet.BATCH * 2 + 7 and found.duplicates == 3
        assert [len(c) for c in chunks[:1]] == [50] and len(chunks[-1]) == (ProductSet.BATCH * 2 + 7) % 50
        assert chunks[0][:3] == [ProductSet.BATCH * 2 + 7, ProductSet.BATCH * 2 + 6, ProductSet.BATCH * 2 + 5]
        with pytest.raises(ValueError, match="size must be at least 1"):
            next(found.chunks(0))
    with pytest.raises(ValueError, match="ProductSet is closed"):
        for product_id in [1] * ProductSet.BATCH:
            found.add(product_id)


def test_products_file_streams_with_flat_memory(in_tmp):
    path = in_tmp / "many.txt"
    with path.open("w") as handle:
        for n in range(1, 200_001):
            handle.write(f"{n}\n")
    tracemalloc.start()
    try:
        with collect_products(["many.txt"]) as found:
            assert len(found) == 200_000
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024  # a list of 200,000 ints alone would be about 7 MB
