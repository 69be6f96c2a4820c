"""`imgsync demo` works offline: two runs, the second downloads nothing; then a restore of two lost pictures."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

from imgsync.demo import demo_catalog, png

from .conftest import invoke


def test_demo_runs_twice_and_leaves_files_and_database(isolated: Path) -> None:
    result = invoke(["demo", "--dir", "demo", "--products", "3"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("first run:  requested 9, downloaded 9,") for line in lines)
    assert any(line.startswith("second run: requested 9, downloaded 0, unchanged 9,") for line in lines)
    # the whole catalog: 3 products listed in 1 catalog list + 1 property list + 1 batch, nothing downloaded
    assert any(
        line.startswith("--all run:  requested 9, downloaded 0, unchanged 9,")
        and line.endswith("; 3 portal requests (the catalog's listing)")
        for line in lines
    ), lines
    # Two pictures lost on the portal: the sync marks them missing, the restore puts them back, once each.
    at = lines.index("deleted on the portal: 101:1002, 103:1007")
    assert re.fullmatch(
        r"sync run:   requested 9, downloaded 0, unchanged 7, uploaded 0, missing 2, failed 0 in \d+\.\d\d s, "
        r"exit 0; marked missing: 101:1002, 103:1007",
        lines[at + 1],
    ), lines[at + 1]
    assert re.fullmatch(
        r"restore --missing: 2 selected: restored 2, present 0, slot taken 0, failed 0, deferred 0 "
        r"in \d+\.\d\d s, exit 0",
        lines[at + 2],
    ), lines[at + 2]
    assert lines[at + 3 : at + 7] == [
        "  restored 101:1002 as 101:1010",
        "  restored 103:1007 as 103:1011",
        "check:      101:1002's bytes are on the portal once (101:1010)",
        "check:      103:1007's bytes are on the portal once (103:1011)",
    ]
    db = isolated / "demo" / "imgsync.db"
    assert f"database: {db}" in result.stdout
    con = sqlite3.connect(db)
    rows = con.execute("select local_path, sha256 from images where status = 'ok'").fetchall()
    restored = con.execute(
        "select product_id, image_id, restored_as from images where status = 'missing' order by image_id"
    ).fetchall()
    commands = [c for (c,) in con.execute("select command from runs order by id")]
    con.close()
    assert restored == [(101, 1002, 1010), (103, 1007, 1011)]
    assert commands == ["sync"] * 4 + ["restore"]
    lost = {(img.product_id, img.image_id): img.sha256 for img in demo_catalog(3)}
    assert {
        hashlib.sha256((isolated / "demo" / "images" / path).read_bytes()).hexdigest()
        for path in ("101/1010-product-101-2.png", "103/1011-product-103-1.png")
    } == {lost[(101, 1002)], lost[(103, 1007)]}
    assert len(rows) == 9
    for local_path, digest in rows:
        data = (isolated / "demo" / "images" / local_path).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert hashlib.sha256(data).hexdigest() == digest
    expected = {img.sha256 for img in demo_catalog(3)}
    assert {digest for _, digest in rows} == expected

    report = isolated / "demo" / "report.html"
    assert result.stdout.splitlines()[-1].startswith(f"report:   {report}")
    html = report.read_text()
    assert html.count('<figure class="tile"') == 11  # the nine backed up, and the two restored ones
    assert '<div class="n" data-count="ok">9</div>' in html
    assert html.count('<span class="restored"') == 2
    for local_path, digest in rows:
        assert (isolated / "demo" / "report_files" / "thumbs" / f"{digest}.jpg").is_file()
        assert f'href="images/{local_path}"' in html
    # two syncs of the pairs, one --all, the sync that marked two missing, the restore
    assert html.count('<g class="run" data-run-id=') == 5


def test_demo_pictures_are_distinct_pngs() -> None:
    assert png(4, 4, 1) != png(4, 4, 2)
    assert png(4, 4, 1)[12:16] == b"IHDR"
