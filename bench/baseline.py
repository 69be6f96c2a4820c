"""What the two baseline scripts share: reading the pairs, pacing, one download, the JSON they print.

Both baselines download the way the Bitrix24 docs ask (a separate GET with ``User-Agent``, ``Accept``,
``Accept-Language`` and ``Referer``), stream to disk, retry a 503 after a pause and keep no state: every
run downloads every image again.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from .pacing import Pacer

CHUNK = 256 * 1024
ATTEMPTS = 8


@dataclass
class Counters:
    started: float = field(default_factory=time.perf_counter)
    requests: int = 0
    got_503: int = 0
    downloaded: int = 0
    bytes: int = 0

    def report(self, images: int, **extra: Any) -> str:
        out = {
            "images": images,
            "downloaded": self.downloaded,
            "bytes": self.bytes,
            "requests": self.requests,
            "got_503": self.got_503,
            "duration_s": round(time.perf_counter() - self.started, 3),
        }
        out.update(extra)
        return json.dumps(out)


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--webhook", required=True, help="the portal's webhook URL")
    parser.add_argument("--csv", required=True, type=Path, help="productId,id pairs with a header")
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--rate-limit", type=float, default=2.0)
    parser.add_argument("--burst", type=float, default=50)
    return parser


def read_pairs(path: Path) -> list[tuple[int, int]]:
    with path.open(newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        return [(int(row[0]), int(row[1])) for row in rows if row]


def download_headers(webhook: str) -> dict[str, str]:
    parts = urlsplit(webhook)
    return {
        "User-Agent": "bench-baseline/1.0",
        "Accept": "*/*",
        "Accept-Language": "en-US,en;q=0.9",
        "Referer": f"{parts.scheme}://{parts.netloc}/",
    }


def backoff(attempt: int) -> None:
    time.sleep(min(10.0, 0.25 * 2**attempt))


def call(
    session: requests.Session, pacer: Pacer, counters: Counters, url: str, params: dict[str, Any]
) -> dict[str, Any]:
    """One REST call, paced, retried on 503."""
    for attempt in range(ATTEMPTS):
        pacer.wait()
        counters.requests += 1
        resp = session.post(url, json=params, timeout=30)
        if resp.status_code == 503:
            counters.got_503 += 1
            pacer.fill()
            backoff(attempt)
            continue
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data
    raise RuntimeError(f"{url}: still 503 after {ATTEMPTS} attempts")


def download(
    session: requests.Session,
    pacer: Pacer,
    counters: Counters,
    url: str,
    headers: dict[str, str],
    target: Path,
) -> None:
    """GET one ``downloadUrl`` into ``target``, paced, retried on 503."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(ATTEMPTS):
        pacer.wait()
        counters.requests += 1
        with session.get(url, headers=headers, stream=True, timeout=30) as resp:
            if resp.status_code == 503:
                counters.got_503 += 1
                pacer.fill()
                backoff(attempt)
                continue
            resp.raise_for_status()
            with target.open("wb") as out:
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                    counters.bytes += len(chunk)
        counters.downloaded += 1
        return
    raise RuntimeError(f"download of {target.name}: still 503 after {ATTEMPTS} attempts")


def target_for(dest: Path, image: dict[str, Any]) -> Path:
    name = Path(str(image["name"])).name or "image"
    return dest / str(image["productId"]) / f"{image['id']}-{name}"
