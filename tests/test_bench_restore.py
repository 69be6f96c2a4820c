"""A tiny run of the restore benchmark (``python -m bench.restore``), so CI exercises it, and its bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.restore import Profile, bound, must_requests

REPO = Path(__file__).resolve().parent.parent


def test_the_bound_counts_the_requests_and_the_add_time_the_job_needs() -> None:
    p = Profile()  # 400 images of 20 KB in 100 products
    # 2 list batches (50 products each), 8 add requests of 50, 400 downloads to check the new images.
    assert must_requests(p) == 2 + 8 + 400
    assert bound(p, operating_s=16.0) == pytest.approx((410 - 50) / 20 + 0.02)
    # Over the operating budget, each further budget's worth waits a window.
    assert bound(p, operating_s=48.0 * 3) == pytest.approx(2 * 60 + 0.02)
    # Requests limited in bytes: 20 KB pictures, 100 KB of base64 a request -> 3 adds each.
    assert must_requests(Profile(max_request_bytes=100_000)) == 2 + 134 + 400


def test_smoke_imgsync_and_naive() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.restore", "--images", "8", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert data["must_requests"] == 10
    by = {r["client"]: r for r in data["results"]}
    imgsync, naive = by["imgsync"], by["naive"]
    # imgsync: one list batch looks at both products, one batch carries the 8 adds, 8 downloads check them.
    assert (imgsync["requests"], imgsync["by_method"]) == (10, {"batch": 2, "download": 8})
    # The naive script: per image an add, a get and a download.
    assert naive["requests"] == 24
    assert naive["by_method"] == {"catalog.productImage.add": 8, "catalog.productImage.get": 8, "download": 8}
    for r in (imgsync, naive):
        assert (r["adds"], r["downloads"], r["answers_503"], r["answers_429"]) == (8, 8, 0, 0)
        assert r["checked"] and r["exit_code"] == 0  # every gallery holds each picture once
        assert r["efficiency"] == pytest.approx(r["bound_s"] / r["wall_s"], abs=0.001)
