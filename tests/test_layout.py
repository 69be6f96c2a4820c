"""The layout rules of the README's Development section, checked by ``python -m bench.layout``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _layout(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.layout", str(package)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_package_keeps_its_layout_rules() -> None:
    result = _layout(ROOT / "imgsync")
    assert result.returncode == 0, result.stdout
    assert "rule broken" not in result.stdout
    assert re.search(r"^sync\.plan\s+\d+\s+-> errors, localfs, models$", result.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        (
            "sync/pipeline.py",
            "try:\n    pass\nexcept requests.ConnectionError:\n    pass\n",
            "sync.pipeline catches the errors that only bitrix translates",
        ),
        (
            "runner.py",
            "from botocore.exceptions import ClientError\n",
            "runner catches the errors that only s3 translates",
        ),
        ("verify.py", 'SQL = "UPDATE images SET status = 1"\n', "verify holds SQL on the images table"),
        ("bitrix/images.py", "from .. import store\n", "bitrix.images imports ['store']"),
        (
            "bitrix/files.py",
            "X = requests.exceptions.SSLError\n",
            "bitrix.files translates the errors that only bitrix.errors translates",
        ),
        ("s3/uploader.py", "from .. import sync\n", "s3.uploader imports ['sync']"),
        ("store/__init__.py", "from .. import sync\n", "store imports ['sync']"),
        ("store/images.py", "from .. import s3\n", "store.images imports ['s3']"),
        ("sync/plan.py", "from ..store import Store\n", "sync.plan imports ['store']"),
        ("emulator/server.py", "from .. import config\n", "emulator.server imports ['config']"),
        ("report.py", "from . import cli\n", "report imports cli"),
    ],
)
def test_a_broken_rule_is_named(tmp_path: Path, module: str, line: str, broken: str) -> None:
    package = tmp_path / "imgsync"
    shutil.copytree(ROOT / "imgsync", package, ignore=shutil.ignore_patterns("__pycache__"))
    target = package / module
    target.write_text(target.read_text() + "\n" + line)
    result = _layout(package)
    assert result.returncode == 1
    assert f"rule broken: {broken}" in result.stdout.splitlines()


def test_the_readme_table_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Development") :]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    named = {name for line in table for name in re.findall(r"`(\w+)(?:\.py|/)`", line.split("|")[1])}
    modules = {p.stem for p in (ROOT / "imgsync").glob("*.py")} - {"__init__", "__main__"}
    modules |= {p.parent.name for p in (ROOT / "imgsync").glob("*/__init__.py")}
    assert named == modules
