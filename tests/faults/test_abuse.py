"""Hostile image names from the portal: every file lands inside dest, and every image is still backed up.

Checked on resolved real paths, with a canary folder beside dest: after the run nothing outside dest has
appeared, changed or gone, and every file under dest is one image's bytes under a name that is safe on Linux,
macOS and Windows alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from imgsync.emulator import CatalogImage, Portal
from imgsync.localfs import MAX_NAME_BYTES

from .conftest import FaultEnv, assert_complete, assert_inside, final_files, pairs_of, sha256_of

HOSTILE = [
    "../../etc/passwd",
    "/etc/x.jpg",
    "a\x00b.png",
    "..",
    ".",
    "",
    "   ",
    "x" * 300 + ".jpg",
    "я" * 200 + ".png",  # 400 bytes of UTF-8: cut on a character boundary
    "😀" * 80,
    "фото товара №1 (копия).jpg",
    "e\u0301te\u0301.png",  # decomposed accents
    "\u202egpj.exe",  # right-to-left override
    "CON",
    "nul.txt",
    "COM1.jpg",
    "lpt9",
    "con .jpg",
    "nul.tar.gz",
    "..\\..\\windows\\system32\\evil.dll",
    "dir\\sub\\x.png",
    "a/b/c.jpg",
    "../" * 40 + "tmp/escaped.jpg",
    "~/x.jpg",
    '*?<>|:"x.jpg',
    "line\nbreak\r\ttab.jpg",
    "c1\x85next\x9bcsi.jpg",  # C1 control characters (NEL; CSI starts terminal escapes)
    ".hidden.jpg",
    ".x.jpg.abc123.part",  # looks like a temporary file
    "x.jpg.part",
    "trailing dots...",
]
_RESERVED = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"/\\|?*]')
_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def hostile_catalog() -> list[CatalogImage]:
    return [
        CatalogImage(
            product_id=500 + n // 10,
            image_id=9000 + n,
            name=name,
            content=f"image {n}: {name!r}".encode() * 50,
        )
        for n, name in enumerate(HOSTILE)
    ]


def snapshot(root: Path, skip: set[Path]) -> dict[str, str]:
    """Every file and folder under ``root`` (but ``skip``), with each file's sha256."""
    found = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if Path(folder, d) not in skip]
        for name in subfolders:
            found[os.path.join(folder, name)] = "dir"
        for name in files:
            found[os.path.join(folder, name)] = sha256_of(Path(folder, name))
    return found


def test_hostile_names_stay_inside_dest_and_are_backed_up(
    fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path
) -> None:
    images = hostile_catalog()
    portal = make_portal(images)
    # dest sits deep enough that "../../etc/passwd" from a product folder would land in the canary.
    fenv.dest = tmp_path / "canary" / "deep" / "images"
    fenv.dest.mkdir(parents=True)
    canary = tmp_path / "canary"
    (canary / "etc").mkdir()
    (canary / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (canary / "deep" / "x.jpg").write_bytes(b"canary")
    skip = {fenv.dest, fenv.db.parent}
    before = snapshot(tmp_path, skip)
    outside = [Path("/etc/x.jpg"), Path("/tmp/escaped.jpg"), Path("/etc/sub"), Path.home() / "x.jpg"]
    existed = {p: p.exists() for p in outside}

    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == len(HOSTILE)

    assert snapshot(tmp_path, skip) == before  # nothing appeared, changed or went outside dest
    assert {p: p.exists() for p in outside} == existed
    rows = assert_complete(fenv, images)  # every image backed up, its file holding its bytes
    files = final_files(fenv.dest)
    assert len(files) == len(HOSTILE)
    for relative, path in files.items():
        assert_inside(fenv.dest, path)
        assert not path.is_symlink()
        product, name = relative.split("/")  # exactly one folder level: <product_id>/<image_id>-<safe name>
        image_id, _, safe = name.partition("-")
        assert product.isdigit() and image_id.isdigit() and safe
        assert not _RESERVED.search(safe), repr(safe)
        assert len(safe.encode()) <= MAX_NAME_BYTES and len(name.encode()) <= 255
        assert safe not in (".", "..") and ".." not in safe
        assert not safe.startswith((".", " ")) and not safe.endswith((".", " "))
        assert safe.split(".")[0].strip().upper() not in _DEVICES, safe
    by_id = {r["image_id"]: r for r in rows}
    assert by_id[9000 + HOSTILE.index("")]["local_path"].endswith("-image")
    assert by_id[9000 + HOSTILE.index("a\x00b.png")]["local_path"].endswith("-ab.png")
    assert by_id[9000 + HOSTILE.index("x" * 300 + ".jpg")]["local_path"].endswith(".jpg")
    assert by_id[9000 + HOSTILE.index("../../etc/passwd")]["name"] == "../../etc/passwd"  # recorded as sent

    # verify agrees: everything recorded, nothing mistaken for a temporary file.
    check = fenv.run("verify", "--db", str(fenv.db), "--dest", str(fenv.dest), "--json")
    assert check.returncode == 0, check
    assert '"temp_files": []' in check.stdout


def test_a_symlink_planted_in_dest_does_not_lead_writes_outside(
    fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path
) -> None:
    """A product folder that is a symbolic link to somewhere else: its images fail, nothing is written there."""
    images = [
        CatalogImage(product_id=700, image_id=1, name="a.jpg", content=b"a" * 100),
        CatalogImage(product_id=701, image_id=2, name="b.jpg", content=b"b" * 100),
    ]
    portal = make_portal(images)
    canary = tmp_path / "canary"
    canary.mkdir()
    fenv.dest.mkdir(parents=True)
    (fenv.dest / "700").symlink_to(canary, target_is_directory=True)
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 1, run
    assert list(canary.iterdir()) == []
    rows = {r["product_id"]: r for r in fenv.rows()}
    assert rows[700]["status"] == "failed" and "outside the destination" in rows[700]["error"]
    assert rows[701]["status"] == "ok"
    assert sha256_of(fenv.dest / rows[701]["local_path"]) == images[1].sha256
