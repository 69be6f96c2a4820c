"""The fault suite: the real CLI in a subprocess against the portal emulator, and what a user would check after.

Every test here drives ``python -m imgsync`` as cron would, with the emulator's fault switches on, and then reads
the end state: the files (sha256 against the portal's bytes), the database and the emulator's counters.

Every CLI call goes through :class:`FaultEnv`, which runs it at ``-v`` and keeps what it printed. After each test
the autouse :func:`sweep` fixture searches all of that, plus the ``runs``, ``events`` and ``images.error`` rows of
every database the test used, for the webhook code, the OAuth client secret, every access and refresh token the
test's portals issued, and any unmasked ``auth=``/``token=`` value; a hit fails the test. It also fails a test
whose CLI printed a Python traceback or an "internal error": a user must get a clear message, never a stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from imgsync.emulator import CatalogImage, Portal, make_catalog
from imgsync.localfs import is_temp_name

#: Client settings that match the fast test portals: the client's defaults (2 requests/s) would make every test
#: wait, and a long timeout would make a hung test slow to fail.
FAST_CLIENT = {"rate_limit": 1000.0, "burst": 1000, "timeout": 10}

# A credential parameter whose value is not masked.
_UNMASKED = re.compile(
    r"(?i)(?<![\w-])(auth|sessid|token|access_token|refresh_token|client_secret)=(?!\*\*\*)"
)
_TRACEBACK = ("Traceback (most recent call last)", "internal error")


# --- the secrets sweep ---------------------------------------------------------------------------------------------


class Sweep:
    """What a test's runs printed and recorded, and the secrets none of it may contain."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.outputs: list[tuple[str, str]] = []
        self.dbs: set[Path] = set()
        self.portals: list[Portal] = []

    def add_portal(self, portal: Portal) -> None:
        """Watch a portal: its webhook code, client secret and every token it issues are secrets."""
        self.portals.append(portal)
        self.secrets.update({portal.webhook_code, portal.client_secret})
        issue = portal.issue_tokens

        def issue_and_note() -> tuple[str, str]:
            pair = issue()
            self.secrets.update(pair)
            return pair

        # The portal's OAuth endpoint calls self.issue_tokens(), so renewed tokens are noted too.
        portal.issue_tokens = issue_and_note  # type: ignore[method-assign]

    def record(self, where: str, text: str) -> None:
        self.outputs.append((where, text))

    def leaks(self, text: str) -> list[str]:
        """Why ``text`` would leak a secret (empty when it is clean)."""
        found = []
        for secret in self.secrets:
            if secret and (secret in text or quote(secret, safe="") in text):
                found.append(f"secret {secret[:3]}...")
        found.extend(f"unmasked {m.group(0)!r}" for m in _UNMASKED.finditer(text))
        return found

    def tables(self, db: Path) -> str:
        """The rows of ``runs`` and ``events``, and the errors of ``images``, as text."""
        if not db.exists() or db.is_dir():
            return ""
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        except sqlite3.Error:
            return ""
        try:
            parts = []
            for sql in ("select * from runs", "select * from events", "select error from images"):
                with contextlib.suppress(sqlite3.Error):  # a damaged file a test put there on purpose
                    parts.append(repr(con.execute(sql).fetchall()))
            return "\n".join(parts)
        finally:
            con.close()

    def check(self) -> None:
        problems = []
        for where, text in self.outputs:
            problems += [f"{where}: {leak}" for leak in self.leaks(text)]
            problems += [f"{where}: printed {marker!r}" for marker in _TRACEBACK if marker in text]
        for db in sorted(self.dbs):
            problems += [
                f"{db.name} runs/events/images.error: {leak}" for leak in self.leaks(self.tables(db))
            ]
        for portal in self.portals:
            problems += [
                f"the emulator itself failed: {err.splitlines()[-1]}" for err in portal.server_errors
            ]
        assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def sweep() -> Iterator[Sweep]:
    """Checks, after each test, every output and table the test's CLI calls produced (see the module doc)."""
    found = Sweep()
    yield found
    found.check()


# --- portals -------------------------------------------------------------------------------------------------------


def catalog(
    products: int = 6, per: int = 3, min_size: int = 1000, max_size: int = 8000, seed: int = 1
) -> list[CatalogImage]:
    return make_catalog(
        products=products, images_per_product=per, min_size=min_size, max_size=max_size, seed=seed
    )


@pytest.fixture
def make_portal(sweep: Sweep) -> Iterator[Callable[..., Portal]]:
    """``make_portal(images, **Portal kwargs)``: a started portal with fast limits, stopped after the test."""
    started: list[Portal] = []

    def make(images: Sequence[CatalogImage] | None = None, **kwargs: Any) -> Portal:
        kwargs.setdefault("rate_limit", 1000.0)
        kwargs.setdefault("burst", 1000)
        portal = Portal(catalog() if images is None else images, **kwargs).start()
        sweep.add_portal(portal)
        started.append(portal)
        return portal

    yield make
    for portal in started:
        portal.stop()


# --- running the CLI -----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished CLI call."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def summary(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, (
            f"expected one JSON line on stdout, got {self.stdout!r}\nstderr: {self.stderr}"
        )
        data: dict[str, Any] = json.loads(lines[0])
        return data

    def __str__(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\nstdout: {self.stdout}\nstderr: {self.stderr}"
        )


@dataclass
class Spawned:
    """A run started in the background."""

    proc: subprocess.Popen[bytes]
    cmd: list[str]
    started: float

    def signal(self, sig: signal.Signals) -> float:
        """Send ``sig``; return the monotonic time it was sent."""
        self.proc.send_signal(sig)
        return time.monotonic()


@dataclass
class FaultEnv:
    """A destination folder, a database and a config file in a temporary folder, and a way to run the CLI."""

    root: Path
    sweep: Sweep
    dest: Path = field(init=False)
    db: Path = field(init=False)
    config: Path = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dest = self.root / "images"
        self.db = self.root / "state" / "imgsync.db"
        self.config = self.root / "imgsync.toml"
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def write_config(self, *, workers: int = 4, **bitrix24: Any) -> None:
        """The config file every call uses: fast client limits, plus ``bitrix24`` keys (OAuth settings...)."""
        values = {**FAST_CLIENT, **bitrix24}
        lines = ["[bitrix24]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines += ["[sync]", f"workers = {workers}"]
        self.config.write_text("\n".join(lines) + "\n")

    def command(self, *args: str, verbose: bool = True, rlimits: dict[int, int] | None = None) -> list[str]:
        """``python -m imgsync --config ... -v ARGS``; with ``rlimits``, through a wrapper that sets those
        resource limits and then execs the CLI (``preexec_fn`` is not safe beside the portal's threads)."""
        cli_args = ["--config", str(self.config), *(["-v"] if verbose else []), *args]
        if not rlimits:
            return [sys.executable, "-m", "imgsync", *cli_args]
        limits = "; ".join(f"resource.setrlimit({k}, ({v}, {v}))" for k, v in rlimits.items())
        wrapper = (
            f"import os, resource, sys; {limits}; "
            "os.execv(sys.executable, [sys.executable, '-m', 'imgsync', *sys.argv[1:]])"
        )
        return [sys.executable, "-c", wrapper, *cli_args]

    def sync_args(self, portal: Portal | None, *extra: str, db: Path | None = None) -> list[str]:
        webhook = ["--webhook", portal.webhook_url] if portal is not None else []
        return ["sync", *webhook, "--dest", str(self.dest), "--db", str(db or self.db), "--json", *extra]

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGSYNC_", "AWS_"))}
        env.update(extra or {})
        return env

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        verbose: bool = True,
        rlimits: dict[int, int] | None = None,
    ) -> Run:
        """Run ``imgsync ARGS`` to its end; its output goes to the sweep."""
        cmd = self.command(*args, verbose=verbose, rlimits=rlimits)
        started = time.monotonic()
        done = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=self._env(env))
        return self._finished(cmd, done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    def run_measured(self, *args: str, stdin: Path | None = None, timeout: float = 120) -> tuple[Run, int]:
        """Run ``imgsync ARGS`` (``stdin`` from a file), sampling its resident memory every few milliseconds;
        return the run and its peak RSS in bytes."""
        import psutil

        cmd = self.command(*args)
        started = time.monotonic()
        with (stdin or Path(os.devnull)).open("rb") as source:
            proc = subprocess.Popen(
                cmd, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env(None)
            )
            self.procs.append(proc)
            output: list[bytes] = []
            reader = threading.Thread(target=lambda: output.extend(proc.communicate(timeout=timeout)))
            reader.start()
            watched, peak = psutil.Process(proc.pid), 0
            while reader.is_alive():
                with contextlib.suppress(psutil.Error):  # it has just ended
                    peak = max(peak, watched.memory_info().rss)
                time.sleep(0.005)
            reader.join()
        run = self._finished(cmd, proc.returncode, output[0], output[1], time.monotonic() - started)
        return run, peak

    def sync(self, portal: Portal | None, *extra: str, **kwargs: Any) -> Run:
        """``imgsync -v sync --webhook ... --dest ... --db ... --json EXTRA``."""
        self.sweep.dbs.add(self.db)
        return self.run(*self.sync_args(portal, *extra), **kwargs)

    def spawn(self, portal: Portal | None, *extra: str, env: dict[str, str] | None = None) -> Spawned:
        """Start a sync in the background (to signal or kill it); finish it with :meth:`reap`."""
        self.sweep.dbs.add(self.db)
        cmd = self.command(*self.sync_args(portal, *extra))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env(env))
        self.procs.append(proc)
        return Spawned(proc, cmd, time.monotonic())

    def reap(self, spawned: Spawned, timeout: float = 60) -> Run:
        """Wait for a spawned run to end; its output goes to the sweep."""
        out, err = spawned.proc.communicate(timeout=timeout)
        seconds = time.monotonic() - spawned.started
        return self._finished(spawned.cmd, spawned.proc.returncode, out, err, seconds)

    def _finished(self, cmd: list[str], code: int, out: bytes, err: bytes, seconds: float) -> Run:
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        label = "imgsync " + next((a for a in cmd if a in ("sync", "verify", "status")), "?")
        self.sweep.record(f"stdout of {label}", stdout)
        self.sweep.record(f"stderr of {label}", stderr)
        return Run(cmd, code, stdout, stderr, seconds)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)

    def rows(self, table: str = "images", db: Path | None = None) -> list[dict[str, Any]]:
        con = sqlite3.connect(db or self.db)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(f"select * from {table}")]
        finally:
            con.close()


@pytest.fixture
def fenv(tmp_path: Path, sweep: Sweep) -> Iterator[FaultEnv]:
    env = FaultEnv(tmp_path / "run", sweep)
    yield env
    env.kill_all()


def pairs_of(portal: Portal, images: Sequence[CatalogImage] | None = None) -> list[str]:
    return [f"{img.product_id}:{img.image_id}" for img in (images if images is not None else portal.images())]


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# --- the end state -------------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_temp(path: Path) -> bool:
    """A download's temporary file, by the one rule the program uses."""
    return is_temp_name(path.name)


def final_files(dest: Path) -> dict[str, Path]:
    """Every file under ``dest`` that is not a temporary file, by its path relative to dest."""
    if not dest.exists():
        return {}
    return {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if p.is_file() and not is_temp(p)}


def temp_files(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.is_file() and is_temp(p)] if dest.exists() else []


def assert_inside(dest: Path, path: Path) -> None:
    real_dest, real = os.path.realpath(dest), os.path.realpath(path)
    assert real.startswith(real_dest + os.sep), f"{real} is outside {real_dest}"


def assert_sound(
    env: FaultEnv, images: Sequence[CatalogImage], *older: Sequence[CatalogImage]
) -> list[dict[str, Any]]:
    """What must hold after any run, even one killed at a random moment; returns the image rows.

    - the database passes SQLite's integrity check;
    - every file under a final name holds exactly the bytes of its image (of ``images``, or of an ``older``
      version of the catalog the run was replacing): nothing partial is in place;
    - every ``ok`` row has its file, of the recorded size and sha256.
    """
    known: dict[tuple[int, int], set[str]] = {}
    for version in (images, *older):
        for img in version:
            known.setdefault((img.product_id, img.image_id), set()).add(img.sha256)
    for relative, path in final_files(env.dest).items():
        assert_inside(env.dest, path)
        product, _, name = relative.partition("/")
        image_id = name.partition("-")[0]
        shas = known.get((int(product), int(image_id)))
        assert shas is not None, f"unexpected file {relative}"
        assert sha256_of(path) in shas, f"{relative} is in place but does not hold the image's bytes"
    if not env.db.exists():
        return []
    con = sqlite3.connect(env.db)
    try:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    rows = env.rows()
    for row in rows:
        if row["status"] != "ok":
            continue
        ref = f"{row['product_id']}:{row['image_id']}"
        path = env.dest / row["local_path"]
        assert path.is_file(), f"row {ref} claims {row['local_path']}, which is not there"
        assert path.stat().st_size == row["size"], (
            f"row {ref}: {row['local_path']} is not of the recorded size"
        )
        assert sha256_of(path) == row["sha256"], (
            f"row {ref}: {row['local_path']} does not hold the recorded bytes"
        )
        assert row["sha256"] in known[(row["product_id"], row["image_id"])]
    return rows


def assert_complete(env: FaultEnv, images: Sequence[CatalogImage]) -> list[dict[str, Any]]:
    """:func:`assert_sound`, and every image is backed up: an ``ok`` row each, and no file without a row."""
    rows = assert_sound(env, images)
    by_ref = {(r["product_id"], r["image_id"]): r for r in rows}
    for img in images:
        row = by_ref.get((img.product_id, img.image_id))
        assert row is not None and row["status"] == "ok", (
            f"{img.product_id}:{img.image_id} not backed up: {row}"
        )
    recorded = {r["local_path"] for r in rows if r["local_path"]}
    unrecorded = sorted(set(final_files(env.dest)) - recorded)
    assert unrecorded == [], f"files without a row: {unrecorded}"
    return rows
