"""SIGTERM and Ctrl-C: the run stops within seconds, records what finished, releases the lock, exits 143/130,
and the next run continues where it stopped."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from imgsync.emulator import Faults, Portal
from imgsync.store import run_lock

from .conftest import FaultEnv, assert_complete, assert_sound, catalog, pairs_of, temp_files, wait_for


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_signal_stops_the_run_and_the_next_run_continues(
    fenv: FaultEnv, make_portal: Callable[..., Portal], sig: signal.Signals, code: int
) -> None:
    images = catalog(products=8, per=3, seed=61)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=1.0)  # every body takes a second: some are always in flight
    fenv.write_config(workers=2)
    spawned = fenv.spawn(portal, *pairs_of(portal))
    wait_for(lambda: portal.stats.downloads_served >= 3, what="a few downloads")
    sent = spawned.signal(sig)
    run = fenv.reap(spawned, timeout=30)
    assert time.monotonic() - sent < 5, f"took {time.monotonic() - sent:.1f} s to stop"
    assert run.returncode == code, run
    assert "stopped" in run.stderr and "run again to continue" in run.stderr
    summary = run.summary

    rows = assert_sound(fenv, images)
    done = [r for r in rows if r["status"] == "ok"]
    assert len(done) >= 3 and summary["downloaded"] == len(done)  # what finished is recorded
    assert temp_files(fenv.dest) == []  # the interrupted downloads cleaned up after themselves
    (last,) = fenv.rows("runs")
    assert last["finished_at"] is not None and last["exit_code"] == code
    assert last["downloaded"] == len(done)
    with run_lock(fenv.db):  # released: taking it does not raise AlreadyRunning
        pass

    portal.faults = Faults()
    portal.reset_stats()
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 24 - len(done)
    assert portal.stats.downloads_served == 24 - len(done)
    assert_complete(fenv, images)


def test_sigterm_while_waiting_for_an_operation_limit_stops_at_once(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    portal = make_portal()
    portal.operation_limit(120.0, "catalog.productImage.get")  # a wait of two minutes ahead
    spawned = fenv.spawn(portal, *pairs_of(portal))
    wait_for(lambda: portal.stats.injected["operation_limit"] > 0, what="the run to meet the limit")
    time.sleep(0.3)  # well inside the wait now
    sent = spawned.signal(signal.SIGTERM)
    run = fenv.reap(spawned, timeout=30)
    assert time.monotonic() - sent < 5
    assert run.returncode == 143, run
    assert "waiting" in run.stderr and "stopped" in run.stderr
    assert portal.stats.downloads_served == 0
    assert [r["exit_code"] for r in fenv.rows("runs")] == [143]
