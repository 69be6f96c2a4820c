"""SIGKILL at random moments, then a rerun: nothing half-done is ever recorded or left under a final name.

A killed run gets no chance to clean up, so this is the contract's "nothing half-done is recorded" rule at its
hardest. After each kill: the database passes SQLite's integrity check, every file under a final name holds
exactly its image's bytes, and every ``ok`` row has its file with the recorded size and sha256. Temporary
``.part`` files may be left (verify reports them), never a partial file under a final name.

Rows are committed every half second, so a kill may lose the rows of files renamed into place just before it.
The rerun cannot trust such a file (the portal publishes no size or hash to check it against) and downloads it
again over itself; after the rerun every image has its row and no file is without one.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

from imgsync.emulator import Faults, Portal

from .conftest import (
    FaultEnv,
    Sweep,
    assert_complete,
    assert_sound,
    catalog,
    final_files,
    pairs_of,
    temp_files,
    wait_for,
)

TRIALS = 12


def test_sigkill_at_random_moments_then_rerun(
    tmp_path: Path, sweep: Sweep, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=8, per=3, min_size=20_000, max_size=150_000, seed=51)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=0.15)  # a run of about a second: 24 bodies, 4 at a time
    pairs = pairs_of(portal)
    rng = random.Random(20241017)
    killed = with_temp = with_rows = orphaned = 0
    for trial in range(TRIALS):
        env = FaultEnv(tmp_path / f"trial-{trial}", sweep)
        # Some trials kill the rerun too, before the last run is let finish.
        for _ in range(1 + (trial % 3 == 2)):
            before = portal.stats.requests
            spawned = env.spawn(portal, *pairs)
            wait_for(lambda: portal.stats.requests > before, what="the run to reach the portal")  # noqa: B023
            time.sleep(rng.uniform(0.0, 1.2))
            spawned.signal(signal.SIGKILL)
            run = env.reap(spawned)
            killed += run.returncode == -signal.SIGKILL
            assert run.returncode in (0, -signal.SIGKILL), run

            rows = assert_sound(env, images)
            recorded = {r["local_path"] for r in rows if r["status"] == "ok"}
            with_temp += bool(temp_files(env.dest))
            with_rows += bool(recorded)
            orphaned += len(set(final_files(env.dest)) - recorded)

        ok_before = sum(r["status"] == "ok" for r in env.rows()) if env.db.exists() else 0
        run = env.sync(portal, *pairs)  # the lock the killed run held is gone with it
        assert run.returncode == 0, run
        assert run.summary["downloaded"] == 24 - ok_before  # what was recorded is not fetched again
        assert_complete(env, images)
        if trial % 4 == 3:  # verify agrees, and points out the debris of the killed runs
            check = env.run("verify", "--db", str(env.db), "--dest", str(env.dest), "--json")
            assert check.returncode == 0, check
            report = json.loads(check.stdout)
            assert report["ok"] == 24 and report["unrecorded"] == []
            assert len(report["temp_files"]) == len(temp_files(env.dest))
    # The kills landed where they hurt: mid-run, mid-write, after some rows were committed.
    assert killed >= TRIALS // 2
    assert with_temp >= 2 and with_rows >= 2
    print(f"{killed} kills mid-run; {with_temp} left .part files; {orphaned} files in place without a row")


def test_sigkill_while_changed_images_replace_their_backups(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    """A changed image's new file replaces the old one (same name) or supersedes it (new name). A kill at any
    moment must not leave an ``ok`` row describing bytes that are no longer there."""
    old = catalog(products=8, per=3, min_size=20_000, max_size=150_000, seed=52)
    portal = make_portal(old)
    pairs = pairs_of(portal)
    assert fenv.sync(portal, *pairs).returncode == 0
    rng = random.Random(7)
    versions = [old]
    for trial in range(6):
        for n, img in enumerate(portal.images()):
            # Half keep their name (the new file lands on the old one), half are renamed.
            name = img.name if n % 2 else f"v{trial}-{img.name}"
            portal.replace_image(img.product_id, img.image_id, content=rng.randbytes(img.size), name=name)
        current = portal.images()
        portal.faults = Faults(slow_download=0.15)
        before = portal.stats.requests
        spawned = fenv.spawn(portal, *pairs)
        wait_for(lambda: portal.stats.requests > before, what="the run to reach the portal")  # noqa: B023
        time.sleep(rng.uniform(0.2, 1.0))
        spawned.signal(signal.SIGKILL)
        fenv.reap(spawned)
        assert_sound(fenv, current, *versions)
        portal.faults = Faults()
        run = fenv.sync(portal, *pairs)
        assert run.returncode == 0, run
        rows = assert_sound(fenv, current)
        assert {r["sha256"] for r in rows} == {img.sha256 for img in current}
        versions.append(current)
