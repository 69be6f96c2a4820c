"""Download links that expire within a second, and links that work only once."""

from __future__ import annotations

from collections.abc import Callable

from imgsync.emulator import Faults, Portal

from .conftest import FaultEnv, assert_complete, catalog, pairs_of


def test_links_that_expire_in_a_second_are_fetched_again(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=4, per=3, seed=21)
    # One batch issues all twelve links at once; two workers need ~2.4 s to use them, the links live 1 s.
    portal = make_portal(images, link_ttl=1.0)
    portal.faults = Faults(slow_download=0.4)
    fenv.write_config(workers=2)
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 12
    stats = portal.stats
    assert stats.by_method["catalog.productImage.get"] >= 4  # expired links were replaced one by one
    assert stats.by_method["download"] > 12  # the expired ones were refused...
    assert stats.downloads_served == 12  # ...and each image came once, whole
    assert_complete(fenv, images)


def test_one_time_links_with_broken_downloads(fenv: FaultEnv, make_portal: Callable[..., Portal]) -> None:
    images = catalog(products=8, per=3, min_size=5000, max_size=40_000, seed=22)
    portal = make_portal(images, one_time_links=True)
    # A cut-short body spends its link: the retry needs a new one, or it would be refused for ever.
    portal.faults = Faults(truncate_rate=0.2, drop_rate=0.05, apply_to="download", seed=6)
    run = fenv.sync(portal, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["downloaded"] == 24
    stats = portal.stats
    assert stats.injected["truncate"] > 0
    assert stats.by_method["catalog.productImage.get"] >= stats.injected["truncate"]
    assert stats.downloads_served == 24
    assert_complete(fenv, images)
