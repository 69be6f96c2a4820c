"""A full disk, a read-only one, and a file size limit: a clear error, and nothing corrupt recorded.

The full and read-only disks are small tmpfs mounts the test makes (root only; skipped where ``mount`` is not
allowed). The file size limit (``ulimit -f``) needs no privilege: it is set in the child before it starts.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgsync.emulator import CatalogImage, Portal

from .conftest import FaultEnv, assert_complete, assert_sound, catalog, pairs_of, sha256_of, temp_files


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_disk("256k")``: a tmpfs of that size, mounted for the test; ``remount(size)`` grows it."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point))
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def remount(point: Path, options: str) -> None:
    done = _mount("-o", f"remount,{options}", str(point))
    assert done.returncode == 0, done.stderr


def big_catalog() -> list[CatalogImage]:
    return catalog(products=10, per=2, min_size=30_000, max_size=60_000, seed=81)  # about 900 KB


def test_full_disk_stops_the_run_with_a_clear_error(
    fenv: FaultEnv, make_portal: Callable[..., Portal], small_disk: Callable[[str], Path]
) -> None:
    disk = small_disk("256k")
    fenv.dest = disk / "images"
    images = big_catalog()
    portal = make_portal(images)
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 1, run
    assert "No space left on device" in run.stderr and str(fenv.dest) in run.stderr
    rows = assert_sound(fenv, images)  # nothing partial in place, no row for what is not there
    assert temp_files(fenv.dest) == []
    done = [r for r in rows if r["status"] == "ok"]
    assert 0 < len(done) < 20
    assert run.summary["downloaded"] == len(done)
    (last,) = fenv.rows("runs")
    assert last["exit_code"] == 1 and "No space left on device" in last["error"]

    remount(disk, "size=4m")
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 20 - len(done)
    assert_complete(fenv, images)


def test_full_disk_holding_the_database_too(
    fenv: FaultEnv, make_portal: Callable[..., Portal], small_disk: Callable[[str], Path]
) -> None:
    """The usual layout: files and database on one file system, which fills up."""
    disk = small_disk("320k")
    fenv.dest, fenv.db = disk / "images", disk / "imgsync.db"
    images = big_catalog()
    portal = make_portal(images)
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 1, run
    assert "No space left on device" in run.stderr or "disk is full" in run.stderr
    assert_sound(fenv, images)
    assert temp_files(fenv.dest) == []

    remount(disk, "size=4m")
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert_complete(fenv, images)


def test_read_only_destination_stops_the_run(
    fenv: FaultEnv, make_portal: Callable[..., Portal], small_disk: Callable[[str], Path]
) -> None:
    disk = small_disk("4m")
    fenv.dest = disk / "images"
    fenv.dest.mkdir()
    remount(disk, "ro")
    portal = make_portal()
    run = fenv.sync(portal, *pairs_of(portal))
    # Found with the other input, before the first request: exit 2 naming the folder.
    assert run.returncode == 2, run
    assert f"storage.dest {fenv.dest}: cannot write there (Read-only file system)" in run.stderr
    assert portal.stats.requests == 0
    assert list(fenv.dest.iterdir()) == []


def test_file_size_limit_fails_the_images_over_it_alone(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    """``ulimit -f``: a write past the limit fails with EFBIG (SIGXFSZ is ignored, as Python does). That is a
    limit on one file, not a full disk: the images over it fail, each with a clear error; the others are
    backed up."""
    small = catalog(products=4, per=2, min_size=2000, max_size=20_000, seed=82)
    large = catalog(products=2, per=2, min_size=1_200_000, max_size=1_500_000, seed=83)
    large = [
        CatalogImage(img.product_id + 100, img.image_id + 100, img.name, content=img.content) for img in large
    ]
    images = small + large
    portal = make_portal(images)
    limit = 1024 * 1024
    run = fenv.sync(portal, *pairs_of(portal), rlimits={resource.RLIMIT_FSIZE: limit})
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] != limit  # the test process itself is not limited
    assert run.returncode == 1, run
    summary = run.summary
    assert (summary["downloaded"], summary["failed"]) == (8, 4)
    rows = {(r["product_id"], r["image_id"]): r for r in assert_sound(fenv, images)}
    for img in large:
        row = rows[(img.product_id, img.image_id)]
        assert row["status"] == "failed" and "File too large" in row["error"]
    assert all(rows[(img.product_id, img.image_id)]["status"] == "ok" for img in small)
    assert temp_files(fenv.dest) == []


def _fat12_image(path: Path, size: int = 4 * 1024 * 1024) -> None:
    """An empty FAT12 file system (what ``mkfs.vfat`` would make, without needing dosfstools)."""
    sectors, per_cluster, reserved, fats, root_entries, per_fat = size // 512, 4, 1, 2, 512, 8
    boot = bytearray(512)
    boot[0:11] = b"\xeb\x3c\x90MSWIN4.1"
    struct.pack_into(
        "<HBHBHHBHHHII",
        boot,
        11,
        512,
        per_cluster,
        reserved,
        fats,
        root_entries,
        sectors,
        0xF8,
        per_fat,
        32,
        64,
        0,
        0,
    )
    struct.pack_into("<BBBI11s8s", boot, 36, 0x80, 0, 0x29, 0x1D5C, b"NO NAME    ", b"FAT12   ")
    boot[510:512] = b"\x55\xaa"
    image = bytearray(size)
    image[0:512] = boot
    for n in range(fats):
        start = (reserved + n * per_fat) * 512
        image[start : start + 3] = b"\xf8\xff\xff"
    path.write_bytes(bytes(image))


@pytest.fixture
def vfat(tmp_path: Path) -> Iterator[Path]:
    """A case-insensitive file system: a vfat loop mount where the kernel has vfat, else exFAT through FUSE
    (Debian's exfat-fuse and exfatprogs, which ``.ci/run`` installs) on a loop device. Root only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop file system needs root")
    image, point = tmp_path / "fat.img", tmp_path / "fat"
    _fat12_image(image)
    point.mkdir()
    done = _mount("-o", "loop", "-t", "vfat", str(image), str(point))
    if done.returncode == 0:
        yield point
        subprocess.run(["umount", "-l", str(point)], check=False)
        return
    with _exfat_fuse(tmp_path / "exfat.img", point, why=done.stderr.strip()) as mounted:
        yield mounted


@contextlib.contextmanager
def _exfat_fuse(image: Path, point: Path, *, why: str) -> Iterator[Path]:
    missing = [tool for tool in ("mkfs.exfat", "mount.exfat-fuse", "losetup") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"no vfat here ({why}) and no exFAT through FUSE either: {', '.join(missing)} not installed"
        )
    with image.open("wb") as out:
        out.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    # -d keeps it in the foreground (it does not daemonize here); its debug output goes nowhere.
    fuse = subprocess.Popen(
        ["mount.exfat-fuse", "-d", device, str(point)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while str(point) not in Path("/proc/mounts").read_text():
            if fuse.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mount.exfat-fuse did not mount {point}")
            time.sleep(0.05)
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False, capture_output=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            fuse.wait(timeout=10)
        if fuse.poll() is None:
            fuse.kill()
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def test_a_case_only_rename_keeps_the_new_file_on_a_case_insensitive_disk(
    fenv: FaultEnv, make_portal: Callable[..., Portal], vfat: Path
) -> None:
    images = catalog(products=1, per=2, seed=84)
    portal = make_portal(images)
    first = images[0]
    portal.replace_image(first.product_id, first.image_id, first.content, name="photo.jpg")
    fenv.dest = vfat / "images"
    assert fenv.sync(portal, *pairs_of(portal)).returncode == 0
    # The same bytes under a name that differs only in case: "a new name", so the old file is superseded. On
    # vfat the old and the new name are one file, which must not be removed as the "old" one.
    renamed = portal.replace_image(first.product_id, first.image_id, first.content, name="PHOTO.jpg")
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    rows = {(r["product_id"], r["image_id"]): r for r in fenv.rows()}
    row = rows[(first.product_id, first.image_id)]
    assert row["local_path"].endswith("-PHOTO.jpg")
    assert (fenv.dest / row["local_path"]).is_file()  # before: unlinked as the superseded "photo.jpg"
    assert sha256_of(fenv.dest / row["local_path"]) == renamed.sha256
    assert_complete(fenv, portal.images())
