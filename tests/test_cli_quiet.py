"""``-q``: only errors on stderr, but every failed image still gets its line there (what cron mails)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imgsync.cli import _output
from imgsync.emulator import Portal, make_catalog
from imgsync.sync import Summary

from .conftest import Env, all_pairs, invoke, summary_of


def failed_lines(stderr: str) -> list[str]:
    return sorted(stderr.splitlines())


def test_quiet_json_prints_each_failed_image_on_stderr_and_only_json_on_stdout(
    env: Env, portal: Portal
) -> None:
    images = portal.images()
    for img in (images[3], images[17]):
        portal.fail_image(img.product_id, img.image_id)
    result = invoke(env.args(portal, "-q", "--json", *all_pairs(portal)))
    assert result.exit_code == 1
    summary = summary_of(result.stdout)  # exactly one JSON object, nothing else
    assert (summary["failed"], summary["downloaded"]) == (2, 28)
    reason = next(r["error"] for r in env.rows() if r["status"] == "failed")
    assert failed_lines(result.stderr) == [
        f"imgsync: failed {images[3].product_id}:{images[3].image_id}: {reason}",
        f"imgsync: failed {images[17].product_id}:{images[17].image_id}: {reason}",
    ]


def test_quiet_without_json_prints_the_same_lines_and_nothing_else(env: Env, portal: Portal) -> None:
    img = portal.images()[0]
    portal.fail_image(img.product_id, img.image_id)
    result = invoke(["-q", *env.args(portal, *all_pairs(portal))])
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imgsync: failed {img.product_id}:{img.image_id}: ")


def test_quiet_run_without_failures_prints_nothing(env: Env, portal: Portal) -> None:
    result = invoke(env.args(portal, "-q", "--json", *all_pairs(portal)))
    assert result.exit_code == 0
    assert result.stderr == ""
    assert summary_of(result.stdout)["failed"] == 0


def test_without_quiet_failed_images_are_not_listed_twice(env: Env, portal: Portal) -> None:
    img = portal.images()[0]
    portal.fail_image(img.product_id, img.image_id)
    result = invoke(env.args(portal, "--json", *all_pairs(portal)))
    assert result.exit_code == 1
    assert sum(f"{img.product_id}:{img.image_id}" in line for line in result.stderr.splitlines()) == 1


@pytest.fixture
def big_portal() -> Iterator[Portal]:
    catalog = make_catalog(products=35, images_per_product=3, min_size=100, max_size=200, seed=3)
    with Portal(catalog, rate_limit=1000.0, burst=1000) as p:
        yield p


def test_quiet_lists_at_most_100_failed_images_then_how_many_more(env: Env, big_portal: Portal) -> None:
    for img in big_portal.images():
        big_portal.fail_image(img.product_id, img.image_id)
    result = invoke(env.args(big_portal, "-q", "--json", *all_pairs(big_portal)))
    assert result.exit_code == 1
    assert summary_of(result.stdout)["failed"] == 105
    lines = result.stderr.splitlines()
    assert len(lines) == 101
    assert all(line.startswith("imgsync: failed ") for line in lines[:100])
    assert len(set(lines[:100])) == 100
    assert lines[100] == "imgsync: ... and 5 more"


def test_failure_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    summary = Summary(
        failed=1,
        failures=[
            {
                "product_id": 12,
                "image_id": 345,
                "reason": "GET https://portal.example/rest/1/abcdef123456/x refused",
            }
        ],
    )
    _output.echo_failures(summary)
    err = capsys.readouterr().err
    assert err.startswith("imgsync: failed 12:345: GET https://portal.example/rest/1/")
    assert "abcdef123456" not in err
