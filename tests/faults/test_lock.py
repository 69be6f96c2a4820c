"""One run at a time per database: a second run exits 75 at once; a lock left by a killed run blocks nothing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from imgsync.emulator import Faults, Portal

from .conftest import FaultEnv, assert_complete, catalog, pairs_of, wait_for


def test_second_run_on_the_same_database_exits_75_and_touches_nothing(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=4, per=3, seed=71)
    portal = make_portal(images)
    # The first run's downloads wait until the second run is over, however slowly a loaded machine starts
    # the second process: the first run surely holds the lock all along.
    release = threading.Event()
    serve = portal._download

    def held(request: Any) -> Any:
        release.wait(60)
        return serve(request)

    portal._download = held  # type: ignore[method-assign]
    other = make_portal(catalog(products=2, per=2, seed=72))  # the second run's portal: it must hear nothing
    first = fenv.spawn(portal, *pairs_of(portal))
    try:
        wait_for(lambda: portal.stats.by_method["batch"] >= 1, what="the first run to be fetching")

        second = fenv.sync(other, *pairs_of(other))
    finally:
        release.set()
    assert second.returncode == 75, second
    assert "another imgsync sync is running" in second.stderr and str(fenv.db) in second.stderr
    assert second.seconds < 30  # at once: no wait for the lock (the bound is a loaded machine's start-up)
    assert other.stats.requests == 0

    run = fenv.reap(first)
    assert run.returncode == 0, run
    assert_complete(fenv, images)
    assert len(fenv.rows("runs")) == 1  # the refused run left no row


def test_lock_of_a_killed_run_does_not_block_the_next(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=4, per=3, seed=73)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=0.5)
    first = fenv.spawn(portal, *pairs_of(portal))
    wait_for(lambda: portal.stats.downloads_served >= 1, what="the first run to be downloading")
    first.signal(signal.SIGKILL)
    assert fenv.reap(first).returncode == -signal.SIGKILL
    lock = fenv.db.with_name(fenv.db.name + ".lock")
    assert lock.read_text().strip() == str(first.proc.pid)  # the dead run's lock file is still there

    portal.faults = Faults()
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert_complete(fenv, images)
    runs = fenv.rows("runs")
    assert len(runs) == 2 and runs[0]["finished_at"] is None  # the killed run never finished its row
    assert runs[1]["exit_code"] == 0
