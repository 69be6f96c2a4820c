"""A tiny run of the benchmark harness (``python -m bench.run``), so CI exercises it.

imgsync and the naive script need nothing beyond the runtime dependencies; the fast-bitrix24 peer and the
chart need the ``bench`` extra, and that test is skipped without it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import PROFILES, bound, must_requests

REPO = Path(__file__).resolve().parent.parent
HAS_BENCH_EXTRA = all(importlib.util.find_spec(m) for m in ("fast_bitrix24", "matplotlib"))


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    md = tmp_path / "bench.md"
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--sizes",
        "40",
        "--profiles",
        "near",
        "--no-floor",
        "--memcheck-mb",
        "0",
    ]
    cmd += ["--md", str(md), "--png", str(tmp_path / "bench.png"), *args]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, md.read_text()


def row(md: str, label: str) -> list[str]:
    """The cells of the table row for ``label`` (profile near, N=40)."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 13 and cells[:3] == ["near", "40", label]:
            return cells
    raise AssertionError(f"no row for {label!r} in:\n{md}")


def assert_targets_agree(md: str) -> None:
    """The targets table says "yes" exactly when the efficiency it shows meets the target, and shows the
    efficiency of the runs table."""
    target = re.search(
        r"\| near \| 40 \| (yes|\*\*no\*\*) \((\d+\.\d+)\) \| (yes|\*\*no\*\*) \((\d+\.\d+)\)", md
    )
    assert target is not None, md
    cold_mark, cold_eff, warm_mark, warm_eff = target.groups()
    assert (cold_mark == "yes") == (float(cold_eff) >= 0.9)
    assert (warm_mark == "yes") == (float(warm_eff) >= 0.8)
    assert float(cold_eff) == pytest.approx(float(row(md, "imgsync cold")[9]), abs=0.01)
    assert float(warm_eff) == pytest.approx(float(row(md, "imgsync warm")[9]), abs=0.01)


def test_bound_counts_the_requests_the_job_needs() -> None:
    near, far = PROFILES["near"], PROFILES["far"]
    assert (must_requests(400, "cold"), must_requests(400, "warm"), must_requests(401, "warm")) == (408, 8, 9)
    # Cold: 4080 requests, 50 of them free, then 20/s; plus the last answer's round trip.
    assert bound(near, 4000, "cold") == pytest.approx((4080 - 50) / 20 + 0.02)
    # Warm under the burst: one round trip is all the bucket model leaves.
    assert bound(far, 4000, "warm") == pytest.approx(0.15)
    # Cold with the burst covering the batches: the downloads wait for a batch's answer first.
    assert bound(far, 400, "cold") == pytest.approx(max((408 - 250) / 25, 0.15 + (400 - 250) / 25) + 0.15)


def test_smoke_imgsync_and_naive(tmp_path: Path) -> None:
    result, md = run_bench(
        tmp_path, "--clients", "imgsync,naive", "--no-chart", "--json", str(tmp_path / "b.json")
    )
    assert "<!-- bench:begin -->" in md and "<!-- bench:end -->" in md
    assert "| near | 40 | imgsync cold |" in result.stdout
    cold, warm, naive = row(md, "imgsync cold"), row(md, "imgsync warm"), row(md, "naive")
    # Requests: one batch and 40 downloads cold, the batch alone warm, 2 per image naive; a 503 (which a
    # loaded machine's late timers may provoke) costs exactly one request more, and nothing else does.
    for cells, needed in ((cold, 41), (warm, 1), (naive, 80)):
        requests, per_image, answers_503 = int(cells[3]), float(cells[4]), int(cells[5])
        assert requests - answers_503 == needed, cells
        assert per_image == pytest.approx(requests / 40, abs=0.001)
    for cells in (cold, warm, naive):
        time_s, bound_s, efficiency = float(cells[6]), float(cells[8]), float(cells[9])
        assert 0 < bound_s < time_s
        assert efficiency == pytest.approx(bound_s / time_s, abs=0.01)
        assert 10 < float(cells[12]) < 500  # peak RSS, MB
    assert_targets_agree(md)  # also here: the peer's test needs the bench extra, which CI does not install
    assert cold[10] == ""  # no peer ran: no imgsync/peer ratio
    assert 0 < float(cold[11]) < 1  # imgsync/naive
    assert not (tmp_path / "bench.png").exists()
    # --replot renders the same report from the JSON, running nothing.
    again = tmp_path / "again.md"
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--replot",
        str(tmp_path / "b.json"),
        "--md",
        str(again),
        "--no-chart",
    ]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=60)
    assert again.read_text().split("<!-- bench:begin -->")[1] == md.split("<!-- bench:begin -->")[1]


@pytest.mark.skipif(
    not HAS_BENCH_EXTRA, reason="the bench extra (fast-bitrix24, matplotlib) is not installed"
)
def test_smoke_peer_and_chart(tmp_path: Path) -> None:
    _, md = run_bench(tmp_path, "--clients", "imgsync,peer")
    peer = row(md, "fast-bitrix24 peer")
    assert int(peer[3]) - int(peer[5]) == 41  # one batch, 40 downloads, and one more per 503
    assert float(row(md, "imgsync warm")[10]) < 1  # imgsync/peer
    assert_targets_agree(md)
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
