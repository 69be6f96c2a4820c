"""Fixtures shared by the tests: an isolated environment, the portal emulator, CLI runners."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from imgsync.cli import cli
from imgsync.emulator import Portal, make_catalog

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No IMGSYNC_* variable from the caller's shell, and a private working directory."""
    for name in list(os.environ):
        if name.startswith("IMGSYNC_") or name.startswith("AWS_"):
            monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and nothing from this machine's AWS setup (no files, no instance metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def portal() -> Iterator[Portal]:
    """A fast portal (generous limits) with 10 products of 3 images each."""
    catalog = make_catalog(products=10, images_per_product=3, min_size=500, max_size=5000, seed=7)
    with Portal(catalog, rate_limit=500.0, burst=500) as p:
        yield p


@dataclass
class Env:
    """Paths of one sync setup in a temporary folder."""

    root: Path
    dest: Path
    db: Path

    def args(self, portal: Portal, *extra: str) -> list[str]:
        return [
            "sync",
            "--webhook",
            portal.webhook_url,
            "--dest",
            str(self.dest),
            "--db",
            str(self.db),
            *extra,
        ]

    def rows(self, table: str = "images") -> list[dict[str, Any]]:
        con = sqlite3.connect(self.db)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(f"select * from {table}")]
        finally:
            con.close()


FAST_CONFIG = "[bitrix24]\nrate_limit = 1000.0\nburst = 1000\n"


@pytest.fixture
def env(tmp_path: Path, isolated: Path) -> Env:
    """Paths for a sync, and an ./imgsync.toml with limits to match the fast test portals.

    The client's defaults (2 requests/s) are right for a real portal but would make every test wait.
    """
    (isolated / "imgsync.toml").write_text(FAST_CONFIG)
    return Env(tmp_path, tmp_path / "images", tmp_path / "state" / "imgsync.db")


def invoke(args: list[str], input: str | bytes | None = None) -> Result:
    """Run the CLI in-process; stdout and stderr kept apart."""
    runner = CliRunner()
    return runner.invoke(cli, args, input=input, catch_exceptions=False)


def summary_of(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got {stdout!r}"
    data: dict[str, Any] = json.loads(lines[0])
    return data


def count_images(db: Path, status: str | None = None) -> int:
    """How many ``images`` rows a database holds (with ``status``, only those), read while a run may be writing
    it: 0 before the run has created the file or its tables."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0
    try:
        where, args = ("where status = ?", (status,)) if status else ("", ())
        return int(con.execute(f"select count(*) from images {where}", args).fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        con.close()


def all_pairs(portal: Portal) -> list[str]:
    return [f"{img.product_id}:{img.image_id}" for img in portal.images()]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's package) through playwright; a missing browser fails, never skips."""
    from .report_browser import NoBrowser, chromium

    problem = None
    try:
        with chromium() as context:
            yield context
    except NoBrowser as exc:
        problem = str(exc)
    if problem:
        pytest.fail(f"the report's browser tests need Chromium: {problem}", pytrace=False)
