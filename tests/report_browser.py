"""Headless Chromium for the report's tests, and the README's screenshot.

The browser is Debian's ``chromium`` package, driven by the Python ``playwright`` package with
``executable_path`` (``playwright install`` would download a browser build of its own). It starts with a new
empty profile and every switch that keeps it from calling home.

Regenerate the README's screenshot from the demo's report::

    .venv/bin/python -m tests.report_browser docs/report.png
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "install Debian's chromium package (apt-get install chromium); .ci/run does so when it is missing"
)


class NoBrowser(Exception):
    """No usable Chromium."""


def find_chromium() -> str:
    """The path of the chromium executable: ``$CHROMIUM`` if set, else ``chromium`` on PATH."""
    chosen = os.environ.get("CHROMIUM")
    candidates = [chosen] if chosen else [shutil.which("chromium"), "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    where = f"$CHROMIUM={chosen}" if chosen else "chromium on PATH or /usr/bin/chromium"
    raise NoBrowser(f"no chromium executable found ({where}): {INSTALL_HINT}")


@contextmanager
def chromium(profile: Path | None = None) -> Iterator[Any]:
    """A playwright BrowserContext on headless Chromium with a new empty profile."""
    path = find_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise NoBrowser(f"the playwright package is missing ({exc}): pip install -e '.[test]'") from None
    with tempfile.TemporaryDirectory(prefix="imgsync-chromium-") as tmp, sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(profile or Path(tmp) / "profile"),
                executable_path=path,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1200, "height": 900},
                offline=True,
            )
        except Exception as exc:
            raise NoBrowser(f"chromium at {path} did not start ({exc}): {INSTALL_HINT}") from None
        try:
            yield context
        finally:
            context.close()


def screenshot(report: Path, png: Path, *, full_page: bool = True) -> Path:
    """Open ``report`` and save what it shows to ``png``."""
    with chromium() as context:
        page = context.new_page()
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png), full_page=full_page)
    return png


def main(argv: list[str]) -> int:
    """Run the demo into a temporary folder and screenshot its report (the README's picture)."""
    from imgsync.demo import run_demo

    target = Path(argv[0] if argv else "docs/report.png").resolve()
    with tempfile.TemporaryDirectory(prefix="imgsync-demo-") as tmp:
        run_demo(Path(tmp) / "imgsync-demo", echo=lambda line: None)
        report = Path(tmp) / "imgsync-demo" / "report.html"
        screenshot(report, target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
