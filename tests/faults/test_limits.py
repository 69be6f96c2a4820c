"""The portal's hard limits: OPERATION_TIME_LIMIT (wait for operating_reset_at) and OVERLOAD_LIMIT (exit 4)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import requests

from imgsync.emulator import PRODUCT_IBLOCK_ID, Faults, Portal, make_store_catalog

from .conftest import FaultEnv, assert_complete, assert_sound, catalog, pairs_of, wait_for


def when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """Do ``action`` in the background as soon as ``condition`` holds (the run is in another process)."""

    def watch() -> None:
        wait_for(condition, timeout=60, what="the moment to strike")
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_operation_time_limit_in_a_batch_waits_for_the_reset(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=4, per=3, seed=41)
    portal = make_portal(images)
    portal.operation_limit(2.0, "catalog.productImage.get")
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 12
    stats = portal.stats
    assert stats.injected["operation_limit"] == 12  # every command of the first batch was blocked...
    assert stats.batch_commands["catalog.productImage.get"] == 24  # ...and sent again once, after the reset
    assert "waiting" in run.stderr
    assert_complete(fenv, images)


def test_operation_time_limit_on_a_single_call_waits_for_the_reset(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    """A link refresh (one ``catalog.productImage.get``) meets the limit: the answer's operating_reset_at,
    seconds away, is what to wait for; not the end of the method's 10-minute accounting window."""
    images = catalog(products=2, per=2, seed=42)
    portal = make_portal(images, link_ttl=0.3)
    portal.faults = Faults(slow_download=0.6)  # one worker: the second link has expired when its turn comes
    fenv.write_config(workers=1)
    blocker = when(lambda: portal.stats.injected["slow"] >= 1, lambda: portal.operation_limit(3.0))
    run = fenv.sync(portal, *pairs_of(portal), timeout=90)
    blocker.join(timeout=1)
    assert run.returncode == 0, run
    assert run.seconds < 30, run  # it waited seconds for the block to lift, not minutes
    assert run.summary["downloaded"] == 4
    stats = portal.stats
    assert stats.injected["operation_limit"] >= 1
    assert_complete(fenv, images)


def test_a_budget_others_have_used_is_a_baseline_not_this_runs_cost(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    """Another integration (or last night's run) has used 200 s of catalog.product.list's 480 s in this
    window. The run's first answer reports that sum; it is not what the run's own commands cost, so
    ``sync --all`` neither waits the window out (10 minutes) nor lists one page per request."""
    items, images = make_store_catalog(600, images_per_item=0)
    listing = "catalog.product.list"
    portal = make_portal(images, items=items, operating_limit=480.0, method_cost={listing: 200.0})
    answer = requests.post(
        portal.webhook_url + listing,
        json={"select": ["id", "iblockId"], "filter": {"iblockId": PRODUCT_IBLOCK_ID}},
        timeout=10,
    ).json()
    assert answer["time"]["operating"] >= 200.0  # the premise: the budget is 40 % spent before the run
    portal.method_cost = {listing: 0.01}
    portal.reset_stats()
    run = fenv.sync(portal, "--all", timeout=120)
    assert run.returncode == 0, run
    assert run.seconds < 60, run  # generous for a loaded machine; the old client waited about 600 s
    assert "operating-time budget" not in run.stderr  # never paced
    stats = portal.stats
    # The two catalogs' first pages, then the product catalog's other pages in one chain; the old client,
    # believing a page cost 200 s, asked one page per batch.
    assert stats.by_method["batch"] == 2, stats.as_dict()
    assert stats.rejected_429 == 0


def test_overload_limit_exits_4_at_once(fenv: FaultEnv, make_portal: Callable[..., Portal]) -> None:
    portal = make_portal()
    portal.overload = True
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 4, run
    assert "OVERLOAD_LIMIT" in run.stderr and "contact Bitrix24 support" in run.stderr
    assert run.summary["exit_code"] == 4
    assert portal.stats.requests == 1  # no retry loop against a portal that blocked REST
    assert [r["exit_code"] for r in fenv.rows("runs")] == [4]
    assert not fenv.dest.exists() or list(fenv.dest.rglob("*")) == []


def test_overload_mid_run_keeps_what_finished_and_the_next_run_completes(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=8, per=3, seed=43)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=0.3)
    fenv.write_config(workers=2)
    blocker = when(lambda: portal.stats.downloads_served >= 4, lambda: setattr(portal, "overload", True))
    run = fenv.sync(portal, *pairs_of(portal))
    blocker.join(timeout=1)
    assert run.returncode == 4, run
    assert "OVERLOAD_LIMIT" in run.stderr
    rows = assert_sound(fenv, images)
    done = [r for r in rows if r["status"] == "ok"]
    assert len(done) >= 4 and run.summary["downloaded"] == len(done)
    assert fenv.rows("runs")[0]["exit_code"] == 4

    portal.overload = False
    portal.faults = Faults()
    portal.reset_stats()
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 24 - len(done)
    assert portal.stats.downloads_served == 24 - len(done)
    assert_complete(fenv, images)
