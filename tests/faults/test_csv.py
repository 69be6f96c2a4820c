"""Hostile CSV input: a clear error naming file and line before the first request, or processing in bounded
memory. Memory is the child's peak resident set, sampled while it runs, against a small run's."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from imgsync.emulator import Portal

from .conftest import FaultEnv, assert_complete, catalog

#: What a run may use above a run with a 24-line CSV, whatever the size of its input (about 50 MB here).
MEMORY_ALLOWANCE = 30 * 2**20


@pytest.fixture
def baseline(fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path) -> int:
    """The peak memory of a small sync, in its own destination."""
    portal = make_portal(catalog(products=2, per=2, min_size=100, max_size=200, seed=100))
    small = tmp_path / "small.csv"
    small.write_text("".join(f"{img.product_id},{img.image_id}\n" for img in portal.images()))
    args = [
        "sync",
        "--webhook",
        portal.webhook_url,
        "--dest",
        str(tmp_path / "small"),
        "--db",
        str(tmp_path / "small.db"),
    ]
    run, peak = fenv.run_measured(*args, "--csv", str(small))
    assert run.returncode == 0, run
    return peak


def test_a_huge_line_is_refused_in_bounded_memory(
    fenv: FaultEnv, make_portal: Callable[..., Portal], baseline: int, tmp_path: Path
) -> None:
    portal = make_portal()
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as out:
        out.write(b"productId,id\n12,34\n")
        for _ in range(128):
            out.write(b"1" * 2**20)  # one line of 128 MiB
    run, peak = fenv.run_measured(*fenv.sync_args(portal, "--csv", str(huge)))
    assert run.returncode == 2, run
    assert f"{huge}:3: line is longer than 64 KiB" in run.stderr
    assert peak < baseline + MEMORY_ALLOWANCE, f"peak {peak / 2**20:.0f} MiB"
    assert portal.stats.requests == 0


def test_binary_junk_is_refused_naming_the_file(
    fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path
) -> None:
    portal = make_portal()
    junk = tmp_path / "junk.csv"
    junk.write_bytes(random.Random(5).randbytes(2**20))
    run = fenv.sync(portal, "--csv", str(junk))
    assert run.returncode == 2, run
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"imgsync: error: {junk}") and "not valid UTF-8 text" in line
    assert line.isprintable()  # no raw junk echoed to the terminal
    assert portal.stats.requests == 0


@pytest.mark.parametrize(
    "cell",
    ["=1+2", "+12", "-3", "@SUM(A1:A2)", '=HYPERLINK("http://127.0.0.1/x";"y")', "1e3", "0x10", "１２"],
)
def test_formula_like_and_odd_numbers_are_refused(
    fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path, cell: str
) -> None:
    portal = make_portal()
    pairs = tmp_path / "pairs.csv"
    quoted = '"' + cell.replace('"', '""') + '"'
    pairs.write_text(f"productId,id\n12,345\n{quoted},346\n", encoding="utf-8")
    run = fenv.sync(portal, "--csv", str(pairs))
    assert run.returncode == 2, run
    assert f"{pairs}:3: product id '{cell}' is not a positive integer" in run.stderr
    assert portal.stats.requests == 0


def test_nul_bytes_are_refused(fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path) -> None:
    portal = make_portal()
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(b"12,345\n12,3\x0046\n")
    run = fenv.sync(portal, "--csv", str(pairs))
    assert run.returncode == 2, run
    (line,) = run.stderr.splitlines()  # the NUL is shown escaped
    assert line == f"imgsync: error: {pairs}:2: image id '3\\x0046' is not a positive integer"
    assert portal.stats.requests == 0


def test_a_million_rows_are_all_checked_before_the_first_request(
    fenv: FaultEnv, make_portal: Callable[..., Portal], baseline: int, tmp_path: Path
) -> None:
    portal = make_portal()
    rows = tmp_path / "million.csv"
    rows.write_text("".join(f"{n // 1000 + 1},{n + 1}\n" for n in range(999_999)) + "1,abc\n")
    run, peak = fenv.run_measured(*fenv.sync_args(portal, "--csv", str(rows)))
    assert run.returncode == 2, run
    assert f"{rows}:1000000: image id 'abc' is not a positive integer" in run.stderr
    assert portal.stats.requests == 0  # 999,999 good pairs, one bad line: nothing was fetched
    assert peak < baseline + MEMORY_ALLOWANCE, f"peak {peak / 2**20:.0f} MiB"


def test_a_million_rows_on_stdin_are_processed_in_bounded_memory(
    fenv: FaultEnv, make_portal: Callable[..., Portal], baseline: int, tmp_path: Path
) -> None:
    images = catalog(products=8, per=3, seed=101)
    portal = make_portal(images)
    lines = [f"{img.product_id};{img.image_id}\n" for img in images]
    rows = tmp_path / "million.csv"
    rows.write_text("\ufeffproduct_id;image_id\n" + "".join(lines * (10**6 // len(lines) + 1)))
    run, peak = fenv.run_measured(*fenv.sync_args(portal, "--csv", "-"), stdin=rows)
    assert run.returncode == 0, run
    summary = run.summary
    assert (summary["requested"], summary["downloaded"]) == (24, 24)  # duplicates processed once
    assert portal.stats.by_method["batch"] == 1
    assert peak < baseline + MEMORY_ALLOWANCE, f"peak {peak / 2**20:.0f} MiB"
    assert_complete(fenv, images)
