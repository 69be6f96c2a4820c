"""The client against every other reading of the docs' open points (``bitrix24-api-notes.md`` §13).

The emulator and the client were written from the same notes, so on every point the docs leave open they agree
by construction. Here the emulator disagrees on purpose (its "Other readings of the open points" switches) and
the core user journeys run under each reading; what a user sees must stay true under all of them (a reading
may make a run slower, never wrong):

- a cold ``sync --all`` then a warm one back up every image (sha256 against the portal), the warm run
  downloads nothing;
- an image and an item deleted on the portal are marked ``missing`` with their files kept, and nothing else;
- ``sync --product X`` and pairs do the same for what they name;
- an OAuth run across an access token's expiry completes, whichever refresh-token reading holds;
- webhook links that expire quickly, or serve once, still download everything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgsync.emulator import CatalogImage, Faults, Portal, make_store_catalog

from .conftest import Env, file_sha256, invoke, summary_of

#: A small whole catalog: 8 products, 2 parents with 2 variations each, 2 services; 3 images per item.
ITEMS, IMAGES = make_store_catalog(
    8, parents=2, variations_per_parent=2, services=2, images_per_item=3, min_size=200, max_size=1500
)

# -- the readings ----------------------------------------------------------------------------------------------

#: A reading: its Portal keyword arguments (the docstring of imgsync.emulator, "Other readings").
READINGS: dict[str, dict[str, Any]] = {
    # What the client was written for: the control.
    "as-the-notes-read": {},
    # §12/§13: the listing's picture ids are file ids, never the image ids.
    "listing-ids-are-file-ids": {"listing_ids_match": False},
    # §13.5: productImage.list pages of 2 that honour start (a reading the notes leave open).
    "image-list-paged": {"image_page_size": 2},
    # §13.5: productImage.list shows at most 2 images, no next (the "capped at 50" reading, scaled down).
    "image-list-capped": {"image_list_cap": 2},
    # §13.5: productImage.list pages of 2 whose next repeats the first page.
    "image-list-next-repeats": {"image_page_size": 2, "image_list_ignore_start": True},
    # §13.8: the old refresh token stays valid after a refresh.
    "refresh-tokens-stay-valid": {"rotate_refresh_tokens": False},
    # §13.8: the old refresh token dies at once (the emulator's default, named for the matrix).
    "refresh-tokens-die": {"rotate_refresh_tokens": True},
    # §13.1: webhook links that expire within a third of a second.
    "webhook-links-expire": {"link_ttl": 0.3},
    # §13.1: webhook links that serve once.
    "webhook-links-single-use": {"one_time_links": True},
}

#: Readings under which catalog.productImage.list may leave images out without saying so: what the list does
#: not show cannot be found by ``--product`` alone, and must never be marked missing.
HIDING = {"image-list-capped", "image-list-next-repeats"}

reading_names = pytest.mark.parametrize("reading", list(READINGS))


@pytest.fixture
def make_shop() -> Iterator[Callable[[str], Portal]]:
    started: list[Portal] = []

    def make(reading: str) -> Portal:
        portal = Portal(IMAGES, items=ITEMS, rate_limit=1000.0, burst=1000, **READINGS[reading]).start()
        started.append(portal)
        return portal

    yield make
    for portal in started:
        portal.stop()


# -- what a user checks -----------------------------------------------------------------------------------------


def rows_by_ref(env: Env) -> dict[tuple[int, int], dict[str, Any]]:
    return {(int(r["product_id"]), int(r["image_id"])): r for r in env.rows()}


def assert_backed_up(env: Env, images: list[CatalogImage]) -> None:
    """Each image has an ``ok`` row and a file with its bytes."""
    rows = rows_by_ref(env)
    for img in images:
        row = rows.get((img.product_id, img.image_id))
        assert row is not None, f"{img.product_id}:{img.image_id} was never recorded"
        assert row["status"] == "ok", row
        assert file_sha256(env.dest / row["local_path"]) == img.sha256
        assert row["sha256"] == img.sha256


def sync(env: Env, portal: Portal, *args: str, verbose: bool = False) -> dict[str, Any]:
    result = invoke([*(["-v"] if verbose else []), *env.args(portal, "--json", *args)])
    assert result.exit_code == 0, result.stderr
    return summary_of(result.stdout)


# -- (a) cold then warm --all -----------------------------------------------------------------------------------


@reading_names
def test_cold_then_warm_all_backs_up_every_image_once(
    env: Env, make_shop: Callable[[str], Portal], reading: str
) -> None:
    portal = make_shop(reading)
    images = portal.images()
    cold = sync(env, portal, "--all")
    assert (cold["downloaded"], cold["failed"], cold["missing"]) == (len(images), 0, 0)
    assert_backed_up(env, images)
    assert {r["status"] for r in env.rows()} == {"ok"}
    portal.reset_stats()
    warm = sync(env, portal, "--all")
    assert (warm["downloaded"], warm["unchanged"], warm["failed"]) == (0, len(images), 0)
    assert portal.stats.downloads_served == 0
    assert_backed_up(env, images)


# -- (b) deletions upstream -------------------------------------------------------------------------------------


@reading_names
def test_a_deleted_image_and_item_go_missing_and_nothing_else(
    env: Env, make_shop: Callable[[str], Portal], reading: str
) -> None:
    portal = make_shop(reading)
    sync(env, portal, "--all")
    items = [item.id for item in portal.items()]
    lost_item, holder = items[2], items[4]
    dropped = [img for img in portal.images() if img.product_id == holder][0]
    portal.delete_item(lost_item)
    portal.delete_picture(holder, dropped.image_id)
    gone = {(img.product_id, img.image_id) for img in IMAGES if img.product_id == lost_item}
    gone.add((holder, dropped.image_id))
    files = {ref: row["local_path"] for ref, row in rows_by_ref(env).items()}

    summary = sync(env, portal, "--all")
    assert (summary["failed"], summary["downloaded"]) == (0, 0)
    rows = rows_by_ref(env)
    missing = {ref for ref, row in rows.items() if row["status"] == "missing"}
    assert missing == gone and summary["missing"] == len(gone)
    assert all((env.dest / files[ref]).exists() for ref in gone)  # the backups are kept
    assert_backed_up(env, portal.images())


# -- (c) --product and pairs ------------------------------------------------------------------------------------


@reading_names
def test_product_and_pairs_back_up_what_they_name_and_mark_only_deletions(
    env: Env, make_shop: Callable[[str], Portal], reading: str
) -> None:
    portal = make_shop(reading)
    items = [item.id for item in portal.items()]
    named, paired = items[0], items[1]
    of_named = [img for img in portal.images() if img.product_id == named]
    of_paired = [img for img in portal.images() if img.product_id == paired]
    pairs = [f"{img.product_id}:{img.image_id}" for img in of_paired]
    listed = of_named[:2] if reading in HIDING else of_named  # what catalog.productImage.list shows

    cold = sync(env, portal, "--product", str(named), *pairs)
    assert (cold["downloaded"], cold["failed"], cold["missing"]) == (len(listed) + len(of_paired), 0, 0)
    assert_backed_up(env, [*listed, *of_paired])
    warm = sync(env, portal, "--product", str(named), *pairs)
    assert (warm["downloaded"], warm["failed"], warm["missing"]) == (0, 0, 0)

    # A --all run records every image (where the image list hides some, the listing shows them).
    sync(env, portal, "--all")
    assert_backed_up(env, portal.images())
    # Recorded images the image list does not show are not gone for that (a capped list hides the third).
    again = sync(env, portal, "--product", str(named), *pairs)
    assert (again["downloaded"], again["failed"], again["missing"]) == (0, 0, 0)
    assert {r["status"] for r in env.rows()} == {"ok"}
    portal.delete_picture(named, of_named[0].image_id)
    portal.delete_picture(paired, of_paired[1].image_id)
    portal.reset_stats()
    summary = sync(env, portal, "--product", str(named), *pairs)
    assert (summary["failed"], summary["downloaded"]) == (0, 0)
    missing = {ref for ref, row in rows_by_ref(env).items() if row["status"] == "missing"}
    assert missing == {(named, of_named[0].image_id), (paired, of_paired[1].image_id)}
    assert_backed_up(env, portal.images())


# -- (d) OAuth across an access token's expiry -------------------------------------------------------------------


def oauth_config(path: Path, portal: Portal, access: str, refresh: str) -> Path:
    path.write_text(
        "[bitrix24]\n"
        f'portal_url = "{portal.url}"\n'
        f'client_id = "{portal.client_id}"\n'
        f'client_secret = "{portal.client_secret}"\n'
        f'access_token = "{access}"\n'
        f'refresh_token = "{refresh}"\n'
        f'token_url = "{portal.token_url}"\n'
        "rate_limit = 1000.0\nburst = 1000\n"
        "[sync]\nworkers = 2\n"
    )
    return path


def expire_after_downloads(portal: Portal, n: int) -> threading.Thread:
    """Expire every access token once the portal has served ``n`` downloads: mid-run, whatever the pace."""

    def watch() -> None:
        while portal.stats.downloads_served < n and not done.is_set():
            done.wait(0.005)
        portal.expire_access_tokens()

    done = threading.Event()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    thread.done = done  # type: ignore[attr-defined]
    return thread


@reading_names
def test_an_oauth_run_across_token_expiry_completes(
    env: Env, make_shop: Callable[[str], Portal], reading: str, tmp_path: Path
) -> None:
    portal = make_shop(reading)
    images = portal.images()
    access, refresh = portal.issue_tokens()
    config = oauth_config(tmp_path / "oauth.toml", portal, access, refresh)
    args = ["--config", str(config), "sync", "--dest", str(env.dest), "--db", str(env.db), "--json", "--all"]
    watcher = expire_after_downloads(portal, len(images) // 3)
    result = invoke(args)
    watcher.done.set()  # type: ignore[attr-defined]
    watcher.join()
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["failed"]) == (len(images), 0)
    assert portal.stats.by_method["oauth.token"] >= 1  # the premise: the token expired within the run
    assert_backed_up(env, images)

    # The next night starts with an expired token again; the config still names the first refresh token.
    portal.expire_access_tokens()
    portal.reset_stats()
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["unchanged"], summary["failed"]) == (len(images), 0)
    assert portal.stats.by_method["oauth.token"] == 1


# -- (e) webhook links that expire or serve once ------------------------------------------------------------------


@reading_names
def test_links_used_late_or_twice_still_download_everything(
    env: Env, make_shop: Callable[[str], Portal], reading: str
) -> None:
    """Downloads one at a time, each slow: the links of a batch of ``get`` go stale (0.3 s) before most are
    used. Some bodies are cut short, so a retry on the same link would use it a second time (the client takes
    a fresh link for each try). A forced run then fetches everything again."""
    portal = make_shop(reading)
    images = portal.images()[:12]
    pairs = [f"{img.product_id}:{img.image_id}" for img in images]
    portal.faults = Faults(slow_download=0.06, truncate_rate=0.2, seed=5)
    config = env.root / "one-worker.toml"
    config.write_text("[bitrix24]\nrate_limit = 1000.0\nburst = 1000\n[sync]\nworkers = 1\n")
    result = invoke(["--config", str(config), *env.args(portal, "--json", *pairs)])
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert (summary["downloaded"], summary["failed"]) == (len(images), 0)
    assert portal.stats.injected["truncate"] > 0  # the premise: some links were used twice
    if (
        reading == "webhook-links-expire"
    ):  # the premise: the portal refused stale links, and the run got past it
        refused = (
            portal.stats.by_method["download"]
            - portal.stats.downloads_served
            - portal.stats.injected["truncate"]
        )
        assert refused > 0
    portal.faults = Faults()
    result = invoke(["--config", str(config), *env.args(portal, "--json", "--force", *pairs)])
    assert result.exit_code == 0, result.stderr
    assert (summary_of(result.stdout)["downloaded"], summary_of(result.stdout)["failed"]) == (len(images), 0)
    assert_backed_up(env, images)
