"""OAuth renewal across runs, credential errors, and secrets kept out of every output."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imgsync.emulator import Portal, make_catalog

from .conftest import Env, all_pairs, invoke, summary_of


def oauth_config(path: Path, portal: Portal, access: str, refresh: str, rate_limit: float = 60.0) -> Path:
    path.write_text(
        "[bitrix24]\n"
        f'portal_url = "{portal.url}"\n'
        f'client_id = "{portal.client_id}"\n'
        f'client_secret = "{portal.client_secret}"\n'
        f'access_token = "{access}"\n'
        f'refresh_token = "{refresh}"\n'
        f'token_url = "{portal.token_url}"\n'
        f"rate_limit = {rate_limit}\nburst = 10\n"
    )
    return path


def sync_args(env: Env, config: Path, *extra: str) -> list[str]:
    return ["--config", str(config), "sync", "--dest", str(env.dest), "--db", str(env.db), *extra]


def test_oauth_token_expiring_mid_run_is_renewed_and_the_next_run_uses_the_new_pair(
    env: Env, tmp_path: Path
) -> None:
    catalog = make_catalog(products=20, images_per_product=3, min_size=200, max_size=2000, seed=9)
    # About 100 requests at 40 requests/s after a burst of 10: over 2 s, so a 1 s token expires mid-run, while a
    # renewed one lives long enough to be used on a busy machine (refused at once, it would stop the run).
    with Portal(catalog, rate_limit=1000.0, burst=1000, access_token_ttl=1.0) as portal:
        access, refresh = portal.issue_tokens()
        config = oauth_config(tmp_path / "oauth.toml", portal, access, refresh, rate_limit=40.0)
        result = invoke(sync_args(env, config, "--json", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr
        first = summary_of(result.stdout)
        assert first["downloaded"] == 60
        # The premise: a token issued before the run expired within it.
        assert first["duration_s"] > portal.access_token_ttl
        renewals = portal.stats.by_method["oauth.token"]
        assert renewals >= 1
        con = sqlite3.connect(env.db)
        saved_access, saved_refresh = con.execute(
            "select access_token, refresh_token from oauth_tokens"
        ).fetchone()
        con.close()
        assert saved_refresh != refresh  # rotated, and the old refresh token is now dead on the portal

        # The config still holds the first pair, whose refresh token was used up: only the stored pair works.
        portal.access_token_ttl = 3600.0
        portal.expire_access_tokens()
        portal.reset_stats()
        result = invoke(sync_args(env, config, "--json", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["unchanged"] == 60
        assert portal.stats.by_method["oauth.token"] == 1  # renewed once, from the stored refresh token


def test_refused_refresh_token_exits_3_saying_what_to_do(env: Env, tmp_path: Path) -> None:
    with Portal(make_catalog(2, 2, seed=1), rate_limit=1000.0, burst=1000) as portal:
        access, _ = portal.issue_tokens()
        portal.expire_access_tokens()
        config = oauth_config(tmp_path / "oauth.toml", portal, access, "not-a-valid-refresh-token")
        result = invoke(sync_args(env, config, *all_pairs(portal)))
        assert result.exit_code == 3
        assert "refresh token was refused" in result.stderr
        assert "authorize the application again" in result.stderr
        assert portal.stats.downloads_served == 0


def test_wrong_webhook_code_exits_3(env: Env, portal: Portal) -> None:
    bad = portal.webhook_url.replace(portal.webhook_code, "wrongcode123")
    result = invoke(
        ["sync", "--webhook", bad, "--dest", str(env.dest), "--db", str(env.db), *all_pairs(portal)[:3]]
    )
    assert result.exit_code == 3
    assert "wrong webhook code or access token" in result.stderr
    assert "wrongcode123" not in result.stderr


def test_missing_catalog_scope_exits_3(env: Env) -> None:
    with Portal(make_catalog(1, 2, seed=1), rate_limit=1000.0, burst=1000, scopes=("crm",)) as portal:
        result = invoke(env.args(portal, *all_pairs(portal)))
    assert result.exit_code == 3
    assert "'catalog' scope" in result.stderr


def test_overload_limit_exits_4(env: Env, portal: Portal) -> None:
    portal.overload = True
    result = invoke(env.args(portal, "--json", *all_pairs(portal)[:3]))
    assert result.exit_code == 4
    assert "OVERLOAD_LIMIT" in result.stderr
    assert summary_of(result.stdout)["exit_code"] == 4


@pytest.mark.parametrize("verbosity", ["-v", "-vv"])
def test_no_secret_in_any_output_or_table(env: Env, tmp_path: Path, verbosity: str) -> None:
    catalog = make_catalog(products=5, images_per_product=2, min_size=100, max_size=500, seed=4)
    with Portal(catalog, rate_limit=1000.0, burst=1000, access_token_ttl=1.0) as portal:
        access, refresh = portal.issue_tokens()
        config = oauth_config(tmp_path / "oauth.toml", portal, access, refresh)
        portal.deny_product(catalog[0].product_id)
        portal.expire_access_tokens()  # the run must renew, so renewed tokens pass through too
        result = invoke([verbosity, *sync_args(env, config, *all_pairs(portal))])
        webhook = invoke(
            [
                verbosity,
                "sync",
                "--webhook",
                portal.webhook_url,
                "--dest",
                str(tmp_path / "w"),
                "--db",
                str(tmp_path / "w.db"),
                "--force",
                *all_pairs(portal),
            ]
        )
        issued = list(portal._access)  # every access token the portal handed out, renewed ones included
    assert result.exit_code == 1 and webhook.exit_code == 1
    secrets = [access, refresh, portal.client_secret, portal.webhook_code, *issued]
    con = sqlite3.connect(env.db)
    tables = repr(con.execute("select * from runs").fetchall()) + repr(
        con.execute("select * from events").fetchall()
    )
    con.close()
    outputs = {
        "oauth stdout": result.stdout,
        "oauth stderr": result.stderr,
        "webhook stdout": webhook.stdout,
        "webhook stderr": webhook.stderr,
        "runs/events": tables,
    }
    assert "downloaded 101:" in result.stderr  # the logs did speak
    assert len(issued) > 1  # tokens were renewed during the run
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"
        assert "auth=" not in text.replace("auth=***", ""), f"an auth= value leaked into {where}"


def test_dry_run_with_an_expired_token_keeps_the_renewed_pair_and_writes_nothing_else(
    env: Env, tmp_path: Path
) -> None:
    """Before the first real sync, a dry run renews the token in a worker thread: the rotated pair (the old
    refresh token is now dead on the portal) must survive, and nothing but it is written."""
    with Portal(make_catalog(3, 2, seed=4), rate_limit=1000.0, burst=1000) as portal:
        access, refresh = portal.issue_tokens()
        portal.expire_access_tokens()
        config = oauth_config(tmp_path / "oauth.toml", portal, access, refresh)
        result = invoke(sync_args(env, config, "--dry-run", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr
        assert portal.stats.by_method["oauth.token"] == 1
        assert not env.dest.exists()  # a dry run creates no folder
        con = sqlite3.connect(env.db)
        assert con.execute("select count(*) from images").fetchone() == (0,)
        assert con.execute("select count(*) from runs").fetchone() == (0,)
        con.close()

        portal.reset_stats()
        result = invoke(sync_args(env, config, "--json", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr  # today: exit 3 invalid_grant
        assert summary_of(result.stdout)["downloaded"] == 6
        assert portal.stats.by_method.get("oauth.token", 0) == 0  # the saved pair was still valid


def test_dry_run_on_an_existing_database_leaves_the_file_as_it_was(env: Env, portal: Portal) -> None:
    assert invoke(env.args(portal, *all_pairs(portal))).exit_code == 0
    con = sqlite3.connect(env.db)
    con.execute("pragma wal_checkpoint(truncate)")
    con.execute("pragma journal_mode=delete")  # so any switch back to WAL would show
    con.close()
    before = env.db.read_bytes()
    portal.replace_image(portal.images()[0].product_id, portal.images()[0].image_id, content=b"new")
    result = invoke(env.args(portal, "--dry-run", *all_pairs(portal)))
    assert result.exit_code == 0, result.stderr
    assert "download" in result.stdout
    assert env.db.read_bytes() == before
    assert not env.db.with_name(env.db.name + "-wal").exists()


def test_an_oauth_renewal_that_keeps_failing_stops_at_once_on_a_stop_request() -> None:
    """The token endpoint's retries sleep through the client's stop-aware sleep, not time.sleep."""
    import socket
    import threading
    import time

    from imgsync.bitrix import Client, OAuth
    from imgsync.errors import Interrupted

    with socket.socket() as probe:  # a port nothing listens on: every attempt is refused at once
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/oauth/token/"
    auth = OAuth(
        "http://127.0.0.1:9/",
        client_id="c",
        client_secret="s",
        access_token="",
        refresh_token="r",
        token_url=dead,
    )
    stop = threading.Event()
    Client(auth, stop=stop)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        auth.renew("")
    assert time.monotonic() - started < 1.5  # the 5 attempts' backoff alone is about 3 s
