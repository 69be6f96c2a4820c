"""The web tier in front of a portal (nginx before PHP), over real HTTP to the emulator: answers that are not
the file or not complete JSON, stalled and chunked bodies, addresses that cannot work, and a renamed portal.

The rule they all keep: only the image is the image. Nothing that is not the file lands under a final name or
is recorded ``ok``; whatever may pass is retried; what cannot pass stops the run at once, saying what to check.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from imgsync.emulator import Faults, Portal, make_catalog

from .conftest import Env, all_pairs, file_sha256, invoke, summary_of


def assert_every_byte_right(env: Env, portal: Portal) -> None:
    rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
    for img in portal.images():
        row = rows[(img.product_id, img.image_id)]
        assert row["status"] == "ok", row
        assert file_sha256(env.dest / row["local_path"]) == img.sha256 == row["sha256"]
    assert [p for p in env.dest.rglob("*") if p.name.endswith(".part")] == []


def no_page_under_a_final_name(env: Env) -> None:
    for path in env.dest.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:64].lower()
            assert b"<html" not in head and b"<!doctype" not in head and b'{"error"' not in head, path


@pytest.fixture
def shop() -> Portal:
    return Portal(
        make_catalog(products=8, images_per_product=3, min_size=500, max_size=4000, seed=21),
        rate_limit=1000.0,
        burst=1000,
    )


def test_a_login_page_instead_of_the_file_is_retried_with_a_fresh_link(env: Env, shop: Portal) -> None:
    with shop as portal:
        portal.faults = Faults(html_downloads=5)
        result = invoke(env.args(portal, "--json", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr
        assert summary_of(result.stdout)["downloaded"] == 24
        assert portal.stats.injected["html"] == 5
        # each refused answer cost one fresh link: 5 get calls on top of the batch
        assert portal.stats.by_method["catalog.productImage.get"] == 5
        assert_every_byte_right(env, portal)
        no_page_under_a_final_name(env)


def test_a_portal_that_only_answers_login_pages_records_nothing_as_backed_up(env: Env, shop: Portal) -> None:
    with shop as portal:
        portal.faults = Faults(rate_html_download=1.0)
        pairs = all_pairs(portal)[:3]
        result = invoke(env.args(portal, "--json", *pairs))
        assert result.exit_code == 1, result.stderr
        summary = summary_of(result.stdout)
        assert summary["failed"] == 3 and summary["downloaded"] == 0
        assert {r["status"] for r in env.rows()} == {"failed"}
        assert all("not the file" in r["error"] for r in env.rows())
        assert [p for p in env.dest.rglob("*") if p.is_file()] == []


def test_json_error_bodies_answered_in_place_of_files_are_retried(env: Env, shop: Portal) -> None:
    with shop as portal:
        portal.faults = Faults(rate_json_download=0.1, seed=5)
        result = invoke(env.args(portal, "--json", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr
        assert portal.stats.injected["json_error"] > 0
        assert_every_byte_right(env, portal)
        no_page_under_a_final_name(env)


@pytest.mark.parametrize(
    "faults",
    [
        Faults(rate_502=0.3, seed=1),
        Faults(rate_504=0.3, seed=2),
        Faults(rate_cut_json=0.3, seed=3),
        Faults(rate_empty=0.3, seed=4),
    ],
    ids=["502 pages", "504 pages", "JSON cut short", "empty bodies"],
)
def test_rest_answers_that_are_not_complete_json_are_retried(env: Env, shop: Portal, faults: Faults) -> None:
    with shop as portal:
        portal.faults = faults
        result = invoke(["-v", *env.args(portal, "--json", *all_pairs(portal))])
        assert result.exit_code == 0, result.stderr
        assert sum(portal.stats.injected.values()) > 0
        assert "Traceback" not in result.stderr
        assert "retrying" in result.stderr  # -v names each retry and its cause
        assert_every_byte_right(env, portal)


def test_stalled_bodies_are_cut_by_the_read_timeout_and_retried(
    env: Env, shop: Portal, isolated: Path
) -> None:
    (isolated / "imgsync.toml").write_text("[bitrix24]\nrate_limit = 1000.0\nburst = 1000\ntimeout = 1\n")
    with shop as portal:
        portal.faults = Faults(rate_stall=0.2, stall_seconds=120.0, seed=6)
        started = time.monotonic()
        result = invoke(env.args(portal, "--json", *all_pairs(portal)))
        took = time.monotonic() - started
        assert result.exit_code == 0, result.stderr
        assert portal.stats.injected["stall"] > 0
        assert took < 60  # no run waits out a stalled socket (each stall would hold it 120 s)
        assert_every_byte_right(env, portal)


def test_chunked_downloads_are_verified_by_their_bytes(env: Env, shop: Portal) -> None:
    with shop as portal:
        portal.faults = Faults(chunked_downloads=True, truncate_rate=0.2, seed=7)
        result = invoke(env.args(portal, "--json", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr
        assert portal.stats.injected["chunked"] > 0
        assert_every_byte_right(env, portal)


def test_https_to_an_http_only_portal_stops_at_once_naming_the_host(env: Env, shop: Portal) -> None:
    with shop as portal:
        url = portal.webhook_url.replace("http://", "https://")
        started = time.monotonic()
        result = invoke(["sync", "--webhook", url, "--dest", str(env.dest), "--db", str(env.db), "1:2"])
        assert result.exit_code == 2
        assert time.monotonic() - started < 5
        host = url.split("/")[2]
        assert f"TLS with {host} failed" in result.stderr and "http://" in result.stderr
        assert portal.webhook_code not in result.stderr


def test_a_refused_connection_is_retried_briefly_then_exit_4_naming_host_and_port(env: Env) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again at once: nothing listens there
    url = f"http://127.0.0.1:{port}/rest/1/secretcode42/"
    started = time.monotonic()
    result = invoke(["-v", "sync", "--webhook", url, "--dest", str(env.dest), "--db", str(env.db), "1:2"])
    assert result.exit_code == 4
    assert time.monotonic() - started < 10
    assert f"the portal cannot be reached at 127.0.0.1:{port}" in result.stderr
    assert result.stderr.count("retrying") == 2
    assert "secretcode42" not in result.stderr


def test_a_portal_that_restarts_mid_run_is_waited_for_not_given_up_on(env: Env) -> None:
    # Once the portal has answered, refused connections are a proxy or the portal restarting: the run waits
    # with the full backoff (retries up to about 30 s), instead of exit 4 after three quick tries.
    catalog = make_catalog(products=30, images_per_product=3, min_size=500, max_size=3000, seed=22)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as portal:
        portal.faults = Faults(slow_download=0.2)  # downloads are in flight when it goes away
        outage: list[float] = []

        def restart() -> None:
            deadline = time.monotonic() + 60
            while portal.stats.downloads_served < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            portal.stop()  # refuses every connection on its port from now on
            outage.append(time.monotonic())
            time.sleep(2.0)
            portal.start()  # the same port
            outage.append(time.monotonic())

        restarter = threading.Thread(target=restart)
        restarter.start()
        try:
            result = invoke(["-v", *env.args(portal, "--json", *all_pairs(portal))])
        finally:
            restarter.join()
        assert len(outage) == 2  # the portal really was away for 2 s during the run
        assert result.exit_code == 0, result.stderr
        summary = summary_of(result.stdout)
        assert (summary["downloaded"], summary["failed"]) == (90, 0)
        assert "refused" in result.stderr  # -v names the retries and their cause
        assert "cannot be reached" not in result.stderr
        assert_every_byte_right(env, portal)


def test_a_renamed_portal_is_followed_with_a_warning_and_credentials_go_nowhere_else(
    env: Env, shop: Portal
) -> None:
    with shop as portal:
        old = portal.rename()
        pairs = all_pairs(portal)
        result = invoke(
            ["sync", "--webhook", old, "--dest", str(env.dest), "--db", str(env.db), "--json", *pairs]
        )
        assert result.exit_code == 0, result.stderr
        assert f"the portal has moved to {portal.url}/" in result.stderr
        assert "update bitrix24.webhook_url" in result.stderr
        # One call met the old address; it was repeated at the new one, and every later request went there.
        assert portal.stats.redirected == 1
        assert [verb for verb, _ in portal.old_address_requests] == ["POST"]
        assert portal.stats.by_method["batch"] == 1
        assert portal.stats.downloads_served == 24
        assert_every_byte_right(env, portal)


def test_a_webhook_download_answered_expired_token_fetches_a_fresh_link(env: Env, shop: Portal) -> None:
    # A webhook has no token to renew: "expired_token" on its link is a refused link, not refused credentials.
    with shop as portal:
        # One: two in a row could both meet the same image (its fresh link refused again fails it, rightly).
        portal.faults = Faults(expired_downloads=1)
        result = invoke(env.args(portal, "--json", *all_pairs(portal)))
        assert result.exit_code == 0, result.stderr  # before: exit 3, "check the webhook's expiry date"
        assert summary_of(result.stdout)["downloaded"] == 24
        assert portal.stats.injected["expired_token"] == 1
        assert portal.stats.by_method["catalog.productImage.get"] == 1  # one fresh link
        assert_every_byte_right(env, portal)


def test_downloads_ask_for_the_file_as_stored_so_a_compressing_proxy_leaves_it_alone(
    env: Env, shop: Portal
) -> None:
    with shop as portal:
        portal.faults = Faults(gzip_downloads=True)  # compresses whatever a request accepts compressed
        pairs = all_pairs(portal)[:3]
        result = invoke(env.args(portal, "--json", *pairs))
        assert result.exit_code == 0, result.stderr  # before: every image failed as "truncated"
        assert summary_of(result.stdout)["downloaded"] == 3
        assert portal.stats.injected["gzip"] == 0  # no download asked for a compressed body
        rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
        for img in portal.images()[:3]:
            assert file_sha256(env.dest / rows[(img.product_id, img.image_id)]["local_path"]) == img.sha256
