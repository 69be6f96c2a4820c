"""`imgsync demo` works offline: two runs, the second downloads nothing."""

from __future__ import annotations

import hashlib
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
    db = isolated / "demo" / "imgsync.db"
    assert f"database: {db}" in result.stdout
    con = sqlite3.connect(db)
    rows = con.execute("select local_path, sha256 from images where status = 'ok'").fetchall()
    con.close()
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
    assert html.count('<figure class="tile"') == 9
    assert '<div class="n" data-count="ok">9</div>' in html
    for local_path, digest in rows:
        assert (isolated / "demo" / "report_files" / "thumbs" / f"{digest}.jpg").is_file()
        assert f'href="images/{local_path}"' in html
    assert html.count('<g class="run" data-run-id=') == 3  # two syncs of the pairs, one --all


def test_demo_pictures_are_distinct_pngs() -> None:
    assert png(4, 4, 1) != png(4, 4, 2)
    assert png(4, 4, 1)[12:16] == b"IHDR"
