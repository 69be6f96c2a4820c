"""SIGTERM and Ctrl-C: the run stops within seconds, records what finished, releases the lock, exits 143/130,
and the next run continues where it stopped."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imgsync.emulator import Faults, Portal
from imgsync.store import run_lock

from ..conftest import count_images
from .conftest import (
    FaultEnv,
    assert_complete,
    assert_sound,
    catalog,
    final_files,
    pairs_of,
    temp_files,
    wait_for,
)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_signal_stops_the_run_and_the_next_run_continues(
    fenv: FaultEnv, make_portal: Callable[..., Portal], sig: signal.Signals, code: int
) -> None:
    images = catalog(products=8, per=3, seed=61)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=1.0)  # every body takes a second: some are always in flight
    fenv.write_config(workers=2)
    spawned = fenv.spawn(portal, *pairs_of(portal))
    # Recorded, not just served: a body the portal has sent may still be on its way to disk.
    wait_for(lambda: count_images(fenv.db, "ok") >= 3, what="a few recorded downloads")
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


def test_a_second_ctrl_c_still_exits_130_with_the_json_summary_and_the_run_recorded(
    fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path
) -> None:
    """Two Ctrl-C in quick succession: the second lands while the first one's stop is under way. Before, it
    escaped as click's "Aborted!" (exit 1, no JSON) and the run row said exit 0. Pairs come from a CSV, whose
    temporary database must not be finalised after it is closed (a traceback on stderr)."""
    images = catalog(products=6, per=3, seed=62)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=2.0)
    csv = tmp_path / "pairs.csv"
    csv.write_text("productId,id\n" + "\n".join(p.replace(":", ",") for p in pairs_of(portal)) + "\n")
    fenv.write_config(workers=2)
    spawned = fenv.spawn(portal, "--csv", str(csv))
    wait_for(lambda: portal.stats.by_method["download"] >= 2, what="downloads")
    spawned.signal(signal.SIGINT)
    time.sleep(0.05)
    spawned.signal(signal.SIGINT)
    run = fenv.reap(spawned, timeout=30)
    assert run.returncode == 130, run
    assert run.summary["exit_code"] == 130
    assert "Aborted" not in run.stderr
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr
    (last,) = fenv.rows("runs")
    assert last["exit_code"] == 130 and last["state"] == "finished"
    assert_sound(fenv, images)


@pytest.mark.parametrize("how", ["sigterm", "csv-sigint"])
def test_no_traceback_when_a_run_with_csv_input_is_stopped(
    fenv: FaultEnv, make_portal: Callable[..., Portal], tmp_path: Path, how: str
) -> None:
    images = catalog(products=60, per=3, seed=63)  # several chunks: the pairs' reader is mid-way at the stop
    portal = make_portal(images)
    portal.faults = Faults(slow_download=2.0)
    fenv.write_config(workers=1)
    csv = tmp_path / "pairs.csv"
    csv.write_text("\n".join(p.replace(":", ",") for p in pairs_of(portal)) + "\n")
    spawned = fenv.spawn(portal, "--csv", str(csv))
    wait_for(lambda: portal.stats.by_method["download"] >= 1, what="a download")
    spawned.signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    run = fenv.reap(spawned, timeout=30)
    assert run.returncode == (143 if how == "sigterm" else 130), run
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_killed_run_is_marked_crashed_by_the_next_with_what_it_recorded(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=6, per=3, seed=64)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=0.5)
    fenv.write_config(workers=2)
    spawned = fenv.spawn(portal, *pairs_of(portal))

    def recorded_ok() -> int:
        try:
            return sum(r["status"] == "ok" for r in fenv.rows())
        except sqlite3.Error:  # not created, or not migrated yet
            return 0

    wait_for(lambda: recorded_ok() >= 3, what="a few recorded downloads")
    spawned.signal(signal.SIGKILL)
    fenv.reap(spawned, timeout=30)
    (killed,) = fenv.rows("runs")
    assert killed["finished_at"] is None and killed["state"] == "running"
    recorded = sum(e["action"] == "downloaded" for e in fenv.rows("events"))

    status = fenv.run("status", "--db", str(fenv.db))
    assert status.returncode == 0 and f"#{killed['id']}" in status.stdout and "crashed" in status.stdout

    portal.faults = Faults()
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    first, second = fenv.rows("runs")
    assert first["state"] == "crashed" and first["downloaded"] == recorded >= 3
    assert "crashed" in first["error"]
    assert second["state"] == "finished" and second["exit_code"] == 0
    assert_complete(fenv, images)


def test_a_second_signal_during_a_flush_keeps_what_was_being_written(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    """Two signals while the rows of finished downloads are being committed: the commit completes, and only then
    does the run stop (130). Before, the second signal's KeyboardInterrupt landed
    inside ``Store.save`` and rolled the commit back: files in place, and no row claimed them.

    The timing comes from outside: the test holds the database's write lock and waits until downloads have
    finished (their files in place) with no row for them, so the run's next flush is waiting for the lock
    inside the commit; sends Ctrl-C and SIGTERM; then lets the commit through. (Two different signals: the same
    signal twice while the process is inside a C call reaches Python's handler once; and signals pending together
    are handled in the order of their numbers, SIGINT first, so the exit code is 130.)"""
    images = catalog(products=6, per=3, seed=65)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=0.5)
    fenv.write_config(workers=2)
    spawned = fenv.spawn(portal, *pairs_of(portal))
    code = 130
    wait_for(lambda: count_images(fenv.db, "ok") >= 2, what="a first flush (the schema in place)")
    holder = sqlite3.connect(fenv.db, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the run's next commit waits for this lock
        recorded = count_images(fenv.db, "ok")
        wait_for(lambda: len(final_files(fenv.dest)) > recorded + 1, what="downloads without their rows yet")
        time.sleep(1.0)  # a flush follows a finished download within 0.5 s: it is waiting for the lock now
        spawned.signal(signal.SIGINT)
        time.sleep(0.05)
        spawned.signal(signal.SIGTERM)
        time.sleep(0.3)  # both signals are pending in the process, which is inside the commit
        in_place = set(final_files(fenv.dest))
        assert count_images(fenv.db, "ok") == recorded  # the premise: their rows are not committed yet
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    run = fenv.reap(spawned, timeout=30)
    assert run.returncode == code, run
    assert run.summary["exit_code"] == code
    rows = assert_sound(fenv, images)
    recorded_paths = {r["local_path"] for r in rows if r["status"] == "ok"}
    assert in_place <= recorded_paths, (
        f"downloads in place without their row: {sorted(in_place - recorded_paths)}"
    )
    assert set(final_files(fenv.dest)) == recorded_paths  # nor any that finished afterwards
    (last,) = fenv.rows("runs")
    assert last["exit_code"] == code and last["state"] == "finished"
    assert last["downloaded"] == len(recorded_paths)
