"""A tiny run of the migration benchmark (``python -m bench.migrate``), so CI exercises it, and its bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.migrate import Profile, bound, must_requests, must_split

REPO = Path(__file__).resolve().parent.parent


def test_the_bound_counts_the_requests_the_migration_needs() -> None:
    p = Profile(images=2000)  # 2,000 images of 20 KB in 500 products
    # catalog.catalog.list + one batch of 2 x 10 product lists; 10 image-list batches; 40 adds of 50; 2,000 checks.
    assert must_split(p) == {"lookups": 2, "lists": 10, "adds": 40, "gets": 0, "downloads": 2000}
    assert must_requests(p) == 2052
    assert bound(p, operating_s=40.0) == pytest.approx((2052 - 50) / 20 + 0.02)
    # Over the operating budget, each further budget's worth waits a window.
    assert bound(p, operating_s=48.0 * 4) == pytest.approx(3 * 60 + 0.02)


def test_smoke_imgsync_and_naive() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.migrate", "--images", "8", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert data["must_requests"] == 12
    by = {r["client"]: r for r in data["results"]}
    imgsync, naive = by["imgsync"], by["naive"]
    # imgsync: catalog.catalog.list, one batch looking for both keys in the 2 catalogs, one batch listing both
    # target products' images, one batch of the 8 adds, 8 downloads to check them.
    assert imgsync["requests"] == 12
    assert imgsync["split"] == {"lookups": 2, "lists": 1, "adds": 1, "gets": 0, "downloads": 8}
    assert imgsync["by_method"] == {"catalog.catalog.list": 1, "batch": 3, "download": 8}
    assert imgsync["batch_commands"] == {
        "catalog.product.list": 2,
        "catalog.productImage.list": 2,
        "catalog.productImage.add": 8,
    }
    # The naive script: a product list per product, then per image an add, a get and a download.
    assert naive["requests"] == 26
    assert naive["by_method"] == {
        "catalog.product.list": 2,
        "catalog.productImage.add": 8,
        "catalog.productImage.get": 8,
        "download": 8,
    }
    assert naive["other"] == {"unmatched": 0}
    for r in (imgsync, naive):
        assert (r["adds"], r["answers_503"], r["answers_429"]) == (8, 0, 0)
        assert r["checked"] and r["exit_code"] == 0  # every target gallery holds each source picture once
        assert r["efficiency"] == pytest.approx(r["bound_s"] / r["wall_s"], abs=0.001)
