"""Transient failures: rate-limit storms, 500s, dropped connections, truncated and slow downloads.

Each is retried (with backoff, a fresh link where the old one may be spent), so the run ends complete, exit 0.
"""

from __future__ import annotations

from collections.abc import Callable

from imgsync.emulator import Faults, Portal

from .conftest import FaultEnv, assert_complete, catalog, pairs_of


def test_rate_limit_storm_ends_complete(fenv: FaultEnv, make_portal: Callable[..., Portal]) -> None:
    images = catalog(products=15, per=4, seed=11)
    portal = make_portal(images)
    portal.faults = Faults(rate_503=0.3, seed=5)  # REST calls and downloads alike
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    summary = run.summary
    assert (summary["downloaded"], summary["failed"]) == (60, 0)
    stats = portal.stats
    assert stats.injected["503"] >= 15  # the storm happened...
    assert stats.downloads_served == 60  # ...and no image had to be fetched twice
    assert_complete(fenv, images)


def test_server_errors_and_dropped_connections_are_retried(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=15, per=6, min_size=500, max_size=3000, seed=12)
    portal = make_portal(images)
    portal.faults = Faults(rate_500=0.05, drop_rate=0.05, seed=8)
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert (run.summary["downloaded"], run.summary["failed"]) == (90, 0)
    stats = portal.stats
    assert stats.injected["500"] > 0 and stats.injected["drop"] > 0
    assert stats.downloads_served == 90
    assert_complete(fenv, images)


def test_truncated_downloads_never_land_and_are_fetched_again(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=8, per=3, min_size=20_000, max_size=200_000, seed=13)
    portal = make_portal(images)
    # Content-Length says the whole file, half the body comes, then the connection closes.
    portal.faults = Faults(truncate_rate=0.2, seed=4)
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 24
    stats = portal.stats
    assert stats.injected["truncate"] >= 3
    assert stats.downloads_served == 24
    assert stats.download_bytes > sum(img.size for img in images)  # the cut-short bodies were really sent
    assert_complete(fenv, images)
    events = fenv.rows("events")
    assert sorted(e["action"] for e in events) == ["downloaded"] * 24


def test_slow_links_complete(fenv: FaultEnv, make_portal: Callable[..., Portal]) -> None:
    images = catalog(products=4, per=3, seed=14)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=0.4, seed=1)  # every body trickles in over 0.4 s
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 12
    assert portal.stats.injected["slow"] == 12
    assert_complete(fenv, images)
