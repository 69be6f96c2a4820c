"""``imgsync report``: the page a person opens, checked in headless Chromium, and the library behind it.

The state comes from real syncs against the portal emulator: three runs, with images that fail (an
internal error, a denied product), one that goes missing, a replaced picture, and hostile names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from PIL import Image

from imgsync.config import Settings
from imgsync.emulator import Portal, make_catalog
from imgsync.models import ListedItem
from imgsync.report import build_report, make_thumbnail
from imgsync.runner import Request, run_sync
from imgsync.store import Store, run_lock

from .conftest import invoke

HOSTILE = "<script>alert(1)</script>\"'.jpg"
JS_NAME = "javascript:alert(1)"


def picture(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (120, 80)) -> bytes:
    """A real, decodable picture: a gradient whose colours depend on ``seed``."""
    img = Image.new("RGB", size)
    img.putdata(
        [
            ((seed * 53 + x * 2) % 256, (seed * 97 + y * 3) % 256, (seed * 31) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


@dataclass
class State:
    root: Path
    dest: Path
    db: Path
    undecodable: set[tuple[int, int]] = field(default_factory=set)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.db)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    """Three syncs: all new; then failures, a deletion, hostile names, a replacement; then one more failure."""
    root = tmp_path_factory.mktemp("report")
    st = State(root, root / "images", root / "state" / "imgsync.db")
    # Random bytes behind a JPEG/PNG header (the emulator's own samples are real pictures): Pillow cannot
    # decode them, so these get placeholders.
    rng = random.Random(11)
    catalog = [
        dataclasses.replace(img, content=img.content[:8] + rng.randbytes(len(img.content)))
        for img in make_catalog(products=4, images_per_product=3, min_size=300, max_size=2000, seed=11)
    ]
    st.undecodable = {(img.product_id, img.image_id) for img in catalog}
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        for n, image_id in enumerate((2001, 2002, 2003)):
            fmt = "PNG" if n == 1 else "JPEG"
            portal.add_image(
                product_id=200,
                image_id=image_id,
                name=f"real-{image_id}.{fmt.lower()}",
                content=picture(n, fmt),
            )
        settings = Settings(
            webhook_url=portal.webhook_url, dest=st.dest, db=st.db, rate_limit=1000.0, burst=1000
        )

        def sync() -> int:
            pairs = sorted({f"{i.product_id}:{i.image_id}" for i in portal.images()} | {"102:1006"})
            return run_sync(settings, Request(pairs=pairs)).exit_code

        assert sync() == 0
        portal.fail_image(100, 1000)  # backed up before, fails now
        portal.deny_product(101)  # three images denied
        portal.delete_image(102, 1006)  # goes missing, its file stays
        portal.add_image(product_id=103, image_id=1100, name="never-backed-up.jpg", content=picture(9))
        portal.fail_image(103, 1100)
        portal.add_image(product_id=300, image_id=3001, name=HOSTILE, content=picture(5))
        portal.add_image(product_id=300, image_id=3002, name=JS_NAME, content=picture(6, "PNG"))
        portal.replace_image(200, 2001, content=picture(7))
        assert sync() == 1
        portal.fail_image(300, 3001)  # the hostile name is now in the failure list as well
        assert sync() == 1
    return st


@dataclass
class Opened:
    page: Any
    url: str
    requests: list[str]
    console_errors: list[str]
    dialogs: list[str]


def open_report(browser: Any, report: Path) -> Opened:
    page = browser.new_page()
    opened = Opened(page, report.as_uri(), [], [], [])
    page.on("request", lambda r: opened.requests.append(r.url))
    page.on("console", lambda m: opened.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: opened.console_errors.append(str(exc)))
    page.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))
    page.goto(opened.url)
    page.wait_for_load_state("load")
    return opened


@pytest.fixture(scope="module")
def report(state: State) -> Path:
    return build_report(state.db, state.dest, state.root / "report.html")


@pytest.fixture
def opened(browser: Any, report: Path) -> Iterator[Opened]:
    result = open_report(browser, report)
    yield result
    result.page.close()


def shown_number(page: Any, selector: str) -> int:
    return int(page.inner_text(selector).replace(",", "").strip())


# --- in the browser -----------------------------------------------------------------------------------------


def test_the_counts_shown_are_the_databases(opened: Opened, state: State) -> None:
    page = opened.page
    by_status = dict(state.query("select status, count(*) from images group by status"))
    assert set(by_status) == {"ok", "failed", "missing"}
    for status, n in by_status.items():
        assert shown_number(page, f'[data-count="{status}"]') == n
    assert shown_number(page, '[data-count="total"]') == sum(by_status.values())
    ((local_files, local_bytes),) = state.query(
        "select count(*), sum(size) from images where local_path is not null"
    )
    assert shown_number(page, '[data-files="local"]') == local_files
    assert page.get_attribute('[data-bytes="local"]', "title") == f"{local_bytes} bytes"
    assert shown_number(page, '[data-files="s3"]') == 0
    assert page.locator('[data-count="catalog"]').count() == 0  # no products table: the line is left out
    last_ok = state.query("select id from runs where exit_code = 0 order by id desc limit 1")[0][0]
    assert f"run {last_ok}," in page.inner_text("#last-ok")
    assert "stale" not in (page.get_attribute("#last-ok", "class") or "")


def test_the_chart_has_one_mark_per_run(opened: Opened, state: State) -> None:
    page = opened.page
    run_ids = [str(r[0]) for r in state.query("select id from runs order by id")]
    assert len(run_ids) == 3
    marks = page.eval_on_selector_all(
        "#runs-chart g.run[data-run-id]", "els => els.map(e => e.getAttribute('data-run-id'))"
    )
    assert marks == run_ids
    points = page.eval_on_selector_all("#duration-chart circle[data-run-id]", "els => els.length")
    assert points == len(run_ids)
    # Each mark names its run's numbers on hover.
    downloaded = state.query("select downloaded from runs order by id")[0][0]
    title = page.text_content(f'#runs-chart g.run[data-run-id="{run_ids[0]}"] > title')
    assert f"run {run_ids[0]}," in title and f"downloaded {downloaded}," in title
    assert (
        page.locator("#runs-chart g.run .bar-failed[height='0.0']").count() == 1
    )  # only run 1 failed nothing


def test_every_failed_and_missing_image_is_listed_with_its_reason(opened: Opened, state: State) -> None:
    page = opened.page
    expected = state.query(
        "select product_id, image_id, status, error from images where status != 'ok' order by product_id, image_id"
    )
    assert len(expected) == 7  # 100:1000, 101:1003-1005, 102:1006 missing, 103:1100, 300:3001
    rows = page.eval_on_selector_all(
        "#problems tr.problem",
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.innerText))",
    )
    assert [(r[0], r[2], r[3]) for r in rows] == [(f"{p}:{i}", s, e) for p, i, s, e in expected]
    products = page.eval_on_selector_all(
        "#problems tbody.product", "els => els.map(e => e.getAttribute('data-product-id'))"
    )
    assert products == ["100", "101", "102", "103", "300"]  # grouped by product
    assert "7 images failed or went missing" in page.inner_text("#problems-summary")


def test_thumbnails_load_and_undecodable_files_get_a_placeholder(opened: Opened, state: State) -> None:
    page = opened.page
    widths = page.eval_on_selector_all(
        "#recent img.thumb", "imgs => imgs.map(i => i.complete && i.naturalWidth)"
    )
    decodable = state.query(
        "select count(*) from images where last_changed_at is not null and local_path is not null "
        "and product_id in (200, 300)"
    )[0][0]
    assert decodable == 5 and len(widths) == decodable
    assert all(w and w > 0 for w in widths), widths
    tiles = page.locator("#recent figure.tile")
    changed = state.query("select count(*) from images where last_changed_at is not null")[0][0]
    assert tiles.count() == changed
    placeholders = page.eval_on_selector_all(
        "#recent .placeholder",
        "els => els.map(e => e.closest('figure').dataset.productId + ':' + e.innerText)",
    )
    assert len(placeholders) == len(state.undecodable)  # 102:1006 too: missing upstream, its file kept
    labels = {p.split(":", 1)[1] for p in placeholders}
    assert labels <= {"no preview: not a picture Pillow can read", "no preview: a damaged picture"}, labels


def test_no_request_leaves_the_reports_folder_and_nothing_errs(opened: Opened, report: Path) -> None:
    folder = report.parent.as_uri() + "/"
    assert opened.requests[0] == opened.url
    assert len(opened.requests) > 1  # the thumbnails
    outside = [u for u in opened.requests if not (u.startswith(folder) or u.startswith("data:"))]
    assert outside == []
    assert opened.console_errors == []
    assert opened.dialogs == []


def test_a_hostile_name_renders_as_text(opened: Opened) -> None:
    page = opened.page
    assert HOSTILE in page.inner_text("#recent")
    assert HOSTILE in page.inner_text("#problems")
    assert JS_NAME in page.inner_text("#recent")
    assert page.evaluate("document.scripts.length") == 1  # only the report's own script
    assert page.evaluate("window.alert.toString()").endswith("{ [native code] }")
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    assert hrefs and not [h for h in hrefs if ":" in h]  # relative paths only: no scheme, no javascript:
    assert opened.dialogs == []


def test_a_click_opens_the_backed_up_file(opened: Opened, state: State) -> None:
    page = opened.page
    hrefs = page.eval_on_selector_all("#recent a.open", "els => els.map(e => e.href)")
    local = state.query(
        "select count(*) from images where last_changed_at is not null and local_path is not null"
    )
    assert len(hrefs) == local[0][0]
    for href in hrefs:
        assert href.startswith(opened.url.rsplit("/", 1)[0] + "/images/")
        assert Path(unquote(urlsplit(href).path)).is_file(), href
    tile = page.locator('#recent figure.tile[data-product-id="300"][data-image-id="3001"] a.open')
    target = urljoin(opened.url, tile.get_attribute("href"))
    tile.click()
    page.wait_for_url(target)
    expected = state.dest / state.query("select local_path from images where image_id = 3001")[0][0]
    assert Path(unquote(urlsplit(page.url).path)) == expected


def test_the_search_box_filters_the_failure_list(opened: Opened) -> None:
    page = opened.page
    visible = "#problems tr.problem:visible"
    assert page.locator(visible).count() == 7
    page.fill("#problem-search", "101")
    assert page.locator(visible).count() == 3
    assert page.locator("#problems tbody.product:visible").count() == 1
    assert page.inner_text("#problem-shown") == "3 listed match"
    page.fill("#problem-search", "ALERT(1)")  # names too, any case
    assert page.locator(visible).count() == 1
    page.fill("#problem-search", "no such thing")
    assert page.locator(visible).count() == 0
    assert page.is_visible("#no-match")
    page.fill("#problem-search", "")
    assert page.locator(visible).count() == 7


def test_a_screenshot_of_the_report_is_not_blank(opened: Opened, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    opened.page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as img:
        assert img.width >= 1000 and img.height > 900
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50


@pytest.fixture(scope="module")
def restored_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[State, Path]:
    """Two pictures lost on the portal and marked missing; ``imgsync restore`` puts one of them back."""
    from imgsync.restore import RestoreRequest, run_restore
    from imgsync.restore.select import Selection

    root = tmp_path_factory.mktemp("restored")
    st = State(root, root / "images", root / "imgsync.db")
    catalog = make_catalog(products=2, images_per_product=3, min_size=300, max_size=2000, seed=5)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        settings = Settings(
            webhook_url=portal.webhook_url, dest=st.dest, db=st.db, rate_limit=1000.0, burst=1000
        )
        pairs = [f"{i.product_id}:{i.image_id}" for i in catalog]
        assert run_sync(settings, Request(pairs=pairs)).exit_code == 0
        portal.delete_image(100, 1001)  # MORE_PHOTO: put back below
        portal.delete_image(101, 1005)  # stays missing
        assert run_sync(settings, Request(pairs=pairs)).missing == 2
        done = run_restore(settings, RestoreRequest(selection=Selection(pairs=["100:1001"])))
        assert (done.exit_code, done.restored) == (0, 1)
    return st, build_report(st.db, st.dest, root / "report.html")


def test_restored_images_say_where_they_went_and_missing_ones_how_to_restore(
    browser: Any, restored_report: tuple[State, Path]
) -> None:
    st, report = restored_report
    ((new_id, restored_at),) = st.query(
        "select restored_as, restored_at from images where product_id = 100 and image_id = 1001"
    )
    assert new_id is not None and new_id != 1001
    opened = open_report(browser, report)
    page = opened.page
    try:
        rows = page.eval_on_selector_all(
            "#problems tr.problem",
            "rows => rows.map(r => [r.querySelector('td').innerText, r.querySelector('td.restore').innerText])",
        )
        when = datetime.fromisoformat(restored_at).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        assert rows == [
            ["100:1001", f"restored as 100:{new_id} at {when}"],
            ["101:1005", "imgsync restore 101:1005"],
        ]
        assert page.get_attribute("#problems .restored", "data-restored-as") == f"100:{new_id}"
        # The command is a code element that one click selects whole, ready to copy.
        command = page.locator("#problems code.restore-command")
        assert command.count() == 1
        assert command.evaluate("e => getComputedStyle(e).userSelect") == "all"
        command.click()
        assert page.evaluate("() => window.getSelection().toString()") == "imgsync restore 101:1005"
        # The search box finds the restored rows by that word.
        page.fill("#problem-search", "restored")
        assert page.locator("#problems tr.problem:not([hidden])").count() == 1
        assert opened.console_errors == [] and opened.dialogs == []
    finally:
        page.close()


# --- the library and the command ------------------------------------------------------------------------------


def test_the_command_writes_the_report_and_prints_its_path(state: State, isolated: Path) -> None:
    (isolated / "imgsync.toml").write_text(f'[storage]\ndb = "{state.db}"\ndest = "{state.dest}"\n')
    result = invoke(["report", "--recent", "2"])
    assert result.exit_code == 0, result.stderr
    out = isolated / "imgsync-report.html"
    assert result.stdout == f"{out}\n"
    html = out.read_text()
    tiles = re.findall(r'<figure class="tile" data-product-id="(\d+)" data-image-id="(\d+)">', html)
    newest = state.query(
        "select product_id, image_id from images where last_changed_at is not null "
        "order by last_changed_at desc, product_id, image_id limit 2"
    )
    assert [(int(p), int(i)) for p, i in tiles] == newest


def test_a_missing_database_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "imgsync.db"
    result = invoke(["report", "--db", str(db), "--dest", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert result.stderr == f"imgsync: error: {db}: no state database yet (run 'imgsync sync' first)\n"
    assert not db.parent.exists() and not (tmp_path / "r.html").exists()
    with pytest.raises(Exception, match="no state database there"):
        build_report(db, tmp_path, tmp_path / "r.html")
    assert not db.parent.exists()


def test_not_a_database_exits_2(tmp_path: Path) -> None:
    db = tmp_path / "imgsync.db"
    db.write_text("hello")
    result = invoke(["report", "--db", str(db), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "not an SQLite database" in result.stderr
    assert db.read_text() == "hello"


def test_the_report_reads_without_writing_and_without_the_lock(state: State, tmp_path: Path) -> None:
    digest = hashlib.sha256(state.db.read_bytes()).hexdigest()
    with run_lock(state.db):  # a sync is running
        out = build_report(state.db, state.dest, tmp_path / "r.html")
    assert out.is_file()
    assert hashlib.sha256(state.db.read_bytes()).hexdigest() == digest
    with Store.open_read_only(state.db) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.db.execute("delete from runs")


def test_thumbnails_are_cached_by_sha256_and_reused(state: State, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    build_report(state.db, state.dest, out)
    thumbs = tmp_path / "r_files" / "thumbs"
    names = {p.name for p in thumbs.iterdir()}
    sums = {r[0] + ".jpg" for r in state.query("select sha256 from images where product_id in (200, 300)")}
    assert names == sums
    first = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    marked = thumbs / sorted(names)[0]
    os.utime(marked, ns=(1, 1))
    build_report(state.db, state.dest, out)
    assert marked.stat().st_mtime_ns == 1  # reused, not made again
    assert {p.name for p in thumbs.iterdir()} == set(first)


def test_an_unreadable_file_gets_a_placeholder_never_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    assert make_thumbnail(bad, tmp_path / "t.jpg") == "no preview: not a picture Pillow can read"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(picture(1)[:300])
    assert make_thumbnail(cut, tmp_path / "c.jpg") == "no preview: a damaged picture"
    assert not (tmp_path / "t.jpg").exists() and not (tmp_path / "c.jpg").exists()
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (400, 300), (255, 0, 0, 128)).save(rgba)
    assert make_thumbnail(rgba, tmp_path / "a.jpg") == ""
    with Image.open(tmp_path / "a.jpg") as thumb:
        assert thumb.size == (160, 120)


def test_hostile_names_are_escaped_in_the_html(report: Path) -> None:
    html = report.read_text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;.jpg" in html
    assert not re.search(r"""(href|src)=["']?\s*javascript:""", html, re.I)
    assert re.search(r'<meta http-equiv="Content-Security-Policy" content="default-src \'none\';', html)


def test_a_long_failure_list_is_capped_and_says_so(state: State, tmp_path: Path) -> None:
    html = build_report(state.db, state.dest, tmp_path / "r.html", max_problems=3).read_text()
    assert html.count('<tr class="problem"') == 3
    assert "the first 3 by product are listed (and 4 more:" in html


def test_the_catalog_size_shows_once_a_products_table_has_rows(state: State, tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(state.db, db)
    # The products table comes with migration 3 (sync --all fills it); empty, no card.
    assert 'data-count="catalog"' not in build_report(db, state.dest, tmp_path / "r.html").read_text()
    with Store(db) as store:
        store.save_listed([ListedItem(i + 1, 23, 1) for i in range(1234)], "2024-10-17T10:00:00Z")
    html = build_report(db, state.dest, tmp_path / "r.html").read_text()
    assert re.search(r'data-count="catalog">1,234<', html)


def test_the_last_successful_run_turns_red_after_two_days(state: State, tmp_path: Path) -> None:
    finished = state.query("select finished_at from runs where exit_code = 0 order by id desc limit 1")[0][0]
    at = datetime.fromisoformat(finished)
    fresh = build_report(state.db, state.dest, tmp_path / "a.html", now=at + timedelta(hours=47)).read_text()
    stale = build_report(
        state.db, state.dest, tmp_path / "b.html", now=at + timedelta(days=2, hours=1)
    ).read_text()
    assert '<div class="card" id="last-ok">' in fresh and "1 d 23 h ago" in fresh
    assert '<div class="card stale" id="last-ok">' in stale and "more than two days ago" in stale


def test_an_empty_database_makes_a_report(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    Store(db).close()
    html = build_report(db, tmp_path / "images", tmp_path / "r.html", now=datetime.now(UTC)).read_text()
    assert "No run recorded yet." in html and "No image failed or went missing." in html
    assert "no run has exited 0 yet" in html


def test_without_a_browser_the_browser_tests_fail_and_say_what_to_install(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSYNC_")}
    env["CHROMIUM"] = str(tmp_path / "no-chromium-here")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_a_hostile_name_renders_as_text",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 1, result.stdout
    assert "skipped" not in result.stdout
    assert "1 error" in result.stdout
    assert "apt-get install chromium" in result.stdout
