"""OAuth: an access token that expires every second during a run, and a refresh token the portal refuses."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from imgsync.emulator import Faults, Portal

from .conftest import FaultEnv, Sweep, assert_complete, catalog, pairs_of, wait_for


def oauth_config(fenv: FaultEnv, portal: Portal, access: str, refresh: str) -> None:
    fenv.write_config(
        portal_url=portal.url + "/",
        client_id=portal.client_id,
        client_secret=portal.client_secret,
        access_token=access,
        refresh_token=refresh,
        token_url=portal.token_url,
    )


def test_access_token_expiring_every_second_of_a_long_run(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    images = catalog(products=8, per=3, seed=31)
    portal = make_portal(images, access_token_ttl=1.0)
    portal.faults = Faults(slow_download=0.5)  # 24 downloads, 4 at a time: a run of about 3 s
    access, refresh = portal.issue_tokens()
    oauth_config(fenv, portal, access, refresh)
    run = fenv.sync(None, *pairs_of(portal))
    assert run.returncode == 0, run
    assert (run.summary["downloaded"], run.summary["failed"]) == (24, 0)
    assert portal.stats.by_method["oauth.token"] >= 2  # renewed more than once during the run
    assert_complete(fenv, images)
    con = sqlite3.connect(fenv.db)
    stored = con.execute("select access_token, refresh_token from oauth_tokens").fetchone()
    con.close()
    assert stored[1] != refresh  # the rotated refresh token was saved (the old one is dead now)

    # The next run starts from the saved pair (the config's refresh token was used up), renewing once.
    portal.faults = Faults()
    portal.expire_access_tokens()
    portal.reset_stats()
    run = fenv.sync(None, *pairs_of(portal))
    assert run.returncode == 0, run
    assert run.summary["unchanged"] == 24
    assert portal.stats.by_method["oauth.token"] == 1


def test_refused_refresh_token_exits_3_and_says_what_to_do(
    fenv: FaultEnv, make_portal: Callable[..., Portal], sweep: Sweep
) -> None:
    portal = make_portal()
    access, _ = portal.issue_tokens()
    portal.expire_access_tokens()
    bogus = "r3fr3sh-t0ken-the-portal-never-issued"
    sweep.secrets.add(bogus)
    oauth_config(fenv, portal, access, bogus)
    run = fenv.sync(None, *pairs_of(portal))
    assert run.returncode == 3, run
    assert "refresh token was refused" in run.stderr
    assert "authorize the application again and put the new tokens in the configuration" in run.stderr
    assert portal.stats.downloads_served == 0
    assert not fenv.dest.exists() or list(fenv.dest.rglob("*")) == []
    assert [r["exit_code"] for r in fenv.rows("runs")] == [3]


def test_a_check_beside_a_running_sync_renews_once_and_the_sync_takes_the_new_pair_over(
    fenv: FaultEnv, make_portal: Callable[..., Portal]
) -> None:
    """One token pair per database: ``check`` renews the pair while a sync runs on the same database (the
    portal retires the refresh token both started with). The sync, meeting the expired token next, takes
    over the pair ``check`` stored instead of spending the retired refresh token (exit 3, "authorize again")."""
    images = catalog(products=2, per=2, seed=33)
    portal = make_portal(images)
    portal.faults = Faults(slow_download=3.0)  # one download at a time, 3 s each: check runs inside one
    access, refresh = portal.issue_tokens()
    fenv.write_config(
        workers=1,
        portal_url=portal.url + "/",
        client_id=portal.client_id,
        client_secret=portal.client_secret,
        access_token=access,
        refresh_token=refresh,
        token_url=portal.token_url,
    )
    sync = fenv.spawn(None, *pairs_of(portal))
    wait_for(lambda: portal.stats.injected["slow"] >= 1, what="the sync's first download")
    portal.expire_access_tokens()  # the sync's token, mid-download
    check = fenv.run("check", "--dest", str(fenv.dest), "--db", str(fenv.db))
    assert check.returncode == 0, check
    assert portal.stats.by_method["oauth.token"] == 1  # the premise: check renewed (and retired `refresh`)
    run = fenv.reap(sync)
    assert run.returncode == 0, run
    assert (run.summary["downloaded"], run.summary["failed"]) == (4, 0)
    assert portal.stats.by_method["oauth.token"] == 1  # the sync renewed nothing: it took check's pair over
    assert_complete(fenv, images)
    con = sqlite3.connect(fenv.db)
    stored = con.execute("select refresh_token from oauth_tokens").fetchall()
    con.close()
    assert len(stored) == 1 and stored[0][0] != refresh  # the pair check renewed, still good for the next run
