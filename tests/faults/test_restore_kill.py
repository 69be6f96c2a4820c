"""SIGKILL at random moments of a paced restore, then reruns: no product ever holds the same bytes twice, and the
last run brings every image back exactly once.

Each add is journaled (``restores``, ``sent``) before it leaves; a killed run's adds are looked for on their
product before anything is sent to it again, once they can no longer be running (``[restore] request_limit``,
1 s here instead of the cloud's 60 s).
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from imgsync.emulator import Faults, Portal

from .conftest import FaultEnv, Run, Sweep, catalog, pairs_of, wait_for

TRIALS = 6


def restore_cmd(env: FaultEnv, portal: Portal, *extra: str) -> list[str]:
    return env.command(
        "restore",
        "--webhook",
        portal.webhook_url,
        "--dest",
        str(env.dest),
        "--db",
        str(env.db),
        "--json",
        *extra,
    )


def no_bytes_twice(portal: Portal, products: set[int]) -> None:
    for pid in products:
        counts = Counter(h for _, _, h in portal.gallery(pid))
        assert max(counts.values()) == 1, f"product {pid} holds the same bytes twice: {portal.gallery(pid)}"


def test_sigkill_during_a_restore_never_adds_an_image_twice(
    tmp_path: Path, sweep: Sweep, make_portal: Callable[..., Portal]
) -> None:
    rng = random.Random(20261207)
    killed_mid = 0
    for trial in range(TRIALS):
        images = catalog(products=3, per=6, min_size=2_000, max_size=20_000, seed=80 + trial)
        portal = make_portal(images)
        env = FaultEnv(tmp_path / f"trial-{trial}", sweep)
        with env.config.open("a") as config:
            config.write('[restore]\nrequest_limit = "1s"\n')
        assert env.sync(portal, *pairs_of(portal)).returncode == 0
        gone = [(i.product_id, i.image_id) for i in images if i.type == "MORE_PHOTO"]
        content = {(i.product_id, i.image_id): hashlib.sha256(i.content).hexdigest() for i in images}
        for pid, iid in gone:
            portal.delete_image(pid, iid)
        assert env.sync(portal, "--recorded").returncode == 0
        products = {pid for pid, _ in gone}
        portal.faults = Faults(slow_add=0.12)  # about a second of adds, made while the process may die
        for _ in range(1 + trial % 2):
            adds_before, requests_before = portal.stats.adds, portal.stats.requests
            proc = subprocess.Popen(
                restore_cmd(env, portal, "--missing"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            env.procs.append(proc)
            # The restore has reached the portal (however slowly a loaded machine started it), or ended.
            wait_for(lambda: portal.stats.requests > requests_before or proc.poll() is not None)  # noqa: B023
            time.sleep(rng.uniform(0.05, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            killed_mid += proc.returncode == -signal.SIGKILL and portal.stats.adds > adds_before
            no_bytes_twice(portal, products)
        portal.faults = Faults()
        done = subprocess.run(restore_cmd(env, portal, "--missing"), capture_output=True, timeout=120)
        run = Run([], done.returncode, done.stdout.decode(), done.stderr.decode(), 0)
        assert run.returncode == 0, run
        summary = run.summary
        assert summary["restored"] + summary["present"] == len(gone)
        no_bytes_twice(portal, products)
        for ref in gone:
            assert [h for _, _, h in portal.gallery(ref[0])].count(content[ref]) == 1
        states = Counter(r["state"] for r in env.rows("restores"))
        assert states["sent"] == 0  # every add's outcome is known now
        again = subprocess.run(restore_cmd(env, portal, "--missing"), capture_output=True, timeout=120)
        assert again.returncode == 0 and b'"restored": 0' in again.stdout
    assert killed_mid >= TRIALS // 3  # the kills landed while adds were being made
