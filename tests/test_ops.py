"""Running it unattended: the JSON summary's fixed keys, the log file and its progress line, the metrics file,
event retention, ``status --failed`` and the pacing and cap flags."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgsync.emulator import Portal
from imgsync.progress import LogProgress, format_bytes, format_eta
from imgsync.store import Store

from .conftest import Env, all_pairs, invoke, summary_of

KEYS = [
    "run_id",
    "exit_code",
    "complete",
    "requested",
    "downloaded",
    "unchanged",
    "uploaded",
    "missing",
    "failed",
    "deferred",
    "bytes_downloaded",
    "bytes_uploaded",
    "requests",
    "retries",
    "answers_503",
    "answers_429",
    "duration_s",
    "error",
    "failures",
]


# --- the JSON summary -----------------------------------------------------------------------------------------


def test_a_good_run_has_every_key(env: Env, portal: Portal) -> None:
    result = invoke(env.args(portal, "--json", *all_pairs(portal)))
    assert result.exit_code == 0, result.stderr
    summary = summary_of(result.stdout)
    assert list(summary) == KEYS
    assert (summary["exit_code"], summary["complete"], summary["error"], summary["failures"]) == (
        0,
        True,
        None,
        [],
    )
    assert summary["bytes_downloaded"] == sum(len(img.content) for img in portal.images())
    assert summary["bytes_uploaded"] == 0 and summary["deferred"] == 0
    assert summary["requests"] == portal.stats.requests  # 1 batch + 30 downloads, as the portal counted them
    assert summary["retries"] == 0


def test_failures_are_objects_with_integer_ids(env: Env, portal: Portal) -> None:
    img = portal.images()[0]
    portal.fail_image(img.product_id, img.image_id)
    result = invoke(env.args(portal, "--json", *all_pairs(portal)))
    assert result.exit_code == 1
    summary = summary_of(result.stdout)
    assert summary["failures"] == [
        {"product_id": img.product_id, "image_id": img.image_id, "reason": "0: Internal error"}
    ]
    # The text summary still lists it, from the same data.
    text = invoke(env.args(portal, *all_pairs(portal)))
    assert f"  failed {img.product_id}:{img.image_id}: 0: Internal error" in text.stderr.splitlines()


def test_a_bad_dest_prints_the_same_keys_with_zeros(env: Env, portal: Portal) -> None:
    env.dest.parent.mkdir(parents=True, exist_ok=True)
    env.dest.write_text("a file")
    # --dest is not given on the command line (click would refuse a file): the config's dest is.
    Path("imgsync.toml").write_text(Path("imgsync.toml").read_text() + f'[storage]\ndest = "{env.dest}"\n')
    result = invoke(["sync", "--webhook", portal.webhook_url, "--db", str(env.db), "--json", "1:1"])
    assert result.exit_code == 2
    summary = summary_of(result.stdout)
    assert list(summary) == KEYS
    assert summary["exit_code"] == 2 and summary["complete"] is False
    assert summary["error"].startswith(f"storage.dest {env.dest}: cannot write there (")
    assert all(summary[k] == 0 for k in ("requested", "downloaded", "requests", "bytes_downloaded"))
    assert summary["failures"] == [] and summary["run_id"] is None
    assert result.stderr.startswith("imgsync: error: storage.dest")  # the message, once, on stderr


def test_a_bad_flag_value_is_exit_2_with_a_json_object(env: Env, portal: Portal) -> None:
    result = invoke(env.args(portal, "--json", "--max-duration", "6 hours", "1:1"))
    assert result.exit_code == 2
    message = "--max-duration must be a duration like 90m, 6h or 1h30m (units d, h, m, s), got '6 hours'"
    assert result.stderr == f"imgsync: error: {message}\n"
    summary = summary_of(result.stdout)
    assert (summary["exit_code"], summary["complete"], summary["error"]) == (2, False, message)


def test_a_wrong_webhook_code_is_exit_3_with_requests_counted(env: Env, portal: Portal) -> None:
    wrong = portal.webhook_url.replace(portal.webhook_code, "wrongcode0000000")
    result = invoke(
        ["sync", "--webhook", wrong, "--dest", str(env.dest), "--db", str(env.db), "--json", "1:1"]
    )
    assert result.exit_code == 3
    summary = summary_of(result.stdout)
    assert list(summary) == KEYS
    assert (summary["exit_code"], summary["complete"], summary["requests"]) == (3, False, 1)
    assert "wrongcode0000000" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--rate-limit", "fast", "--rate-limit must be a positive number, got 'fast'"),
        ("--burst", "0", "--burst must be a whole number of at least 1, got '0'"),
        ("--timeout", "-3", "--timeout must be a positive number, got '-3'"),
        ("--max-downloads", "-1", "--max-downloads must be a whole number of at least 1, got '-1'"),
        (
            "--max-bytes",
            "20Q",
            "--max-bytes must be a size like 20G, 512M or a number of bytes (K, M, G, T are powers of 1024), "
            "got '20Q'",
        ),
    ],
)
def test_bad_pacing_and_cap_flags_name_the_flag(
    env: Env, portal: Portal, flag: str, value: str, message: str
) -> None:
    result = invoke(env.args(portal, flag, value, "1:1"))
    assert result.exit_code == 2
    assert result.stderr == f"imgsync: error: {message}\n"
    assert portal.stats.requests == 0


def test_pacing_flags_pace_the_run(env: Env, portal: Portal) -> None:
    # 6 images: one batch and 6 downloads. --burst 2 lets 2 go at once, --rate-limit 1 the rest one a
    # second: at least 5 s, which the portal's own limits (2/s, 50 at once) would never impose.
    pairs = all_pairs(portal)[:6]
    result = invoke(
        env.args(portal, "--json", "--rate-limit", "1", "--burst", "2", "--timeout", "7.5", *pairs)
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["downloaded"], summary["requests"], portal.stats.requests) == (6, 7, 7)
    assert summary["duration_s"] >= 4.5
    assert portal.stats.max_bucket_level <= 3  # never more than the burst in the portal's bucket (+1 drained)


# --- the log file -----------------------------------------------------------------------------------------------


def test_the_log_file_gets_timestamped_redacted_lines_and_the_outcome(env: Env, portal: Portal) -> None:
    log_file = env.root / "imgsync.log"
    img = portal.images()[0]
    portal.fail_image(img.product_id, img.image_id)
    result = invoke(env.args(portal, "--log-file", str(log_file), *all_pairs(portal)))
    assert result.exit_code == 1
    text = log_file.read_text()
    lines = text.splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} imgsync\[\d+\]: "
    assert all(re.match(stamp, line) for line in lines), lines
    assert re.search(stamp + r"INFO: sync started", lines[0])
    assert re.search(stamp + r"INFO: 30 images to check \(0 duplicate pairs skipped\)$", text, re.M)
    assert re.search(
        stamp + rf"WARNING: {img.product_id}:{img.image_id} failed: 0: Internal error$", text, re.M
    )
    assert (
        re.search(stamp + r"ERROR: sync finished: exit 1; 30 requested: downloaded 29, ", lines[-1]) is None
    )
    assert re.search(stamp + r"INFO: sync finished: exit 1; 30 requested: downloaded 29, ", lines[-1])
    assert portal.webhook_code not in text
    # stderr (no -v) still shows only the warning, not the INFO lines.
    assert "images to check" not in result.stderr

    # Appended, not replaced.
    invoke(env.args(portal, "--log-file", str(log_file), *all_pairs(portal)))
    assert log_file.read_text().startswith(text) and log_file.read_text().count("sync started") == 2


def test_the_log_file_records_a_fatal_error(env: Env, portal: Portal) -> None:
    log_file = env.root / "imgsync.log"
    wrong = portal.webhook_url.replace(portal.webhook_code, "wrongcode0000000")
    args = [
        "sync",
        "--webhook",
        wrong,
        "--dest",
        str(env.dest),
        "--db",
        str(env.db),
        "--log-file",
        str(log_file),
    ]
    result = invoke([*args, "1:1"])
    assert result.exit_code == 3
    last = log_file.read_text().splitlines()[-1]
    assert "ERROR: sync finished: exit 3: wrong webhook code or access token" in last
    assert "wrongcode0000000" not in log_file.read_text()


def test_an_unwritable_log_file_is_exit_2_naming_it(env: Env, portal: Portal) -> None:
    missing = env.root / "no-such-folder" / "imgsync.log"
    result = invoke(env.args(portal, "--log-file", str(missing), "1:1"))
    assert result.exit_code == 2
    assert result.stderr == (
        f"imgsync: error: cannot write the log file {missing} (--log-file, sync.log_file, IMGSYNC_SYNC_LOG_FILE): "
        "No such file or directory\n"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = LogProgress(interval=60, clock=clock)
    caplog.set_level(logging.INFO, logger="imgsync.progress")
    progress.total(5000)
    for _ in range(119):
        clock.now += 0.5
        progress.advance("downloaded")
    assert caplog.messages == []  # 59.5 s: not yet
    progress.add_bytes(int(35.1 * 1024 * 1024))
    clock.now += 3.7
    progress.advance("downloaded")
    assert caplog.messages == ["progress: 120/5000 images (2.4%), 35.1 MiB, 1.9 img/s, ETA 43m"]
    clock.now += 30
    progress.advance("unchanged")
    assert len(caplog.messages) == 1  # the next one is a minute after the last
    progress.extend(100)
    clock.now += 30
    assert progress.tick()
    assert caplog.messages[-1] == "progress: 121/5100 images (2.4%), 35.1 MiB, 1.0 img/s, ETA 1h24m"


def test_progress_ticker_reports_a_stalled_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imgsync.progress")
    progress = LogProgress(interval=0.05).start(poll=0.01)
    progress.total(10)
    try:
        import time

        deadline = time.monotonic() + 5
        while not caplog.messages and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        progress.close()
    assert caplog.messages[0].startswith("progress: 0/10 images (0.0%), 0 B, 0.0 img/s, ETA ?")


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (36805017, "35.1 MiB"), (3 * 1024**3, "3.0 GiB")],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(("s", "text"), [(45, "45s"), (2520, "42m"), (11100, "3h05m")])
def test_format_eta(s: float, text: str) -> None:
    assert format_eta(s) == text


def test_the_log_file_gets_progress_lines(env: Env, portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgsync.progress as progress

    monkeypatch.setattr(progress.LogProgress.__init__, "__defaults__", (0.0,))  # a line per image
    log_file = env.root / "imgsync.log"
    result = invoke(env.args(portal, "--log-file", str(log_file), *all_pairs(portal)))
    assert result.exit_code == 0, result.stderr
    lines = [line for line in log_file.read_text().splitlines() if "progress: " in line]
    assert lines[-1].split("INFO: ")[1].startswith("progress: 30/30 images (100.0%), ")
    total = sum(len(img.content) for img in portal.images())
    assert f", {format_bytes(total)}, " in lines[-1]


# --- the metrics file -------------------------------------------------------------------------------------------


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_metrics_equal_the_json_summary(env: Env, portal: Portal) -> None:
    prom = env.root / "textfile" / "imgsync.prom"
    prom.parent.mkdir()
    img = portal.images()[0]
    portal.fail_image(img.product_id, img.image_id)
    result = invoke(env.args(portal, "--json", "--metrics-file", str(prom), *all_pairs(portal)))
    assert result.exit_code == 1
    summary = summary_of(result.stdout)
    found = metrics(prom)
    assert all(name.startswith("imgsync_") for name, _ in found)
    assert value(found, "imgsync_last_run_exit_code") == 1
    assert value(found, "imgsync_last_run_success") == 0
    assert value(found, "imgsync_last_run_complete") == 1
    assert value(found, "imgsync_last_run_downloaded_bytes") == summary["bytes_downloaded"] > 0
    assert value(found, "imgsync_last_run_uploaded_bytes") == 0
    assert value(found, "imgsync_last_run_requests") == summary["requests"]
    assert value(found, "imgsync_last_run_retries") == summary["retries"]
    assert value(found, "imgsync_last_run_duration_seconds") == summary["duration_s"]
    for key in ("requested", "downloaded", "unchanged", "uploaded", "missing", "failed", "deferred"):
        assert value(found, "imgsync_last_run_images", result=key) == summary[key], key
    assert value(found, "imgsync_last_run_portal_answers", status="503") == summary["answers_503"]
    assert value(found, "imgsync_last_run_portal_answers", status="429") == summary["answers_429"]
    assert value(found, "imgsync_images", status="ok") == 29
    assert value(found, "imgsync_images", status="failed") == 1
    assert value(found, "imgsync_images", status="missing") == 0
    start = value(found, "imgsync_last_run_start_timestamp_seconds")
    end = value(found, "imgsync_last_run_end_timestamp_seconds")
    assert 0 <= end - start < 60 and start > 1.7e9
    assert sorted(p.name for p in prom.parent.iterdir()) == ["imgsync.prom"]  # no temporary file left


def test_metrics_after_a_fatal_error(env: Env, portal: Portal) -> None:
    prom = env.root / "imgsync.prom"
    wrong = portal.webhook_url.replace(portal.webhook_code, "wrongcode0000000")
    args = [
        "sync",
        "--webhook",
        wrong,
        "--dest",
        str(env.dest),
        "--db",
        str(env.db),
        "--metrics-file",
        str(prom),
    ]
    result = invoke([*args, "--json", "1:1"])
    assert result.exit_code == 3
    summary = summary_of(result.stdout)
    found = metrics(prom)
    assert value(found, "imgsync_last_run_exit_code") == 3
    assert value(found, "imgsync_last_run_success") == 0
    assert value(found, "imgsync_last_run_complete") == 0
    assert value(found, "imgsync_last_run_requests") == summary["requests"] == 1
    assert sorted(p.name for p in prom.parent.iterdir() if p.name.startswith("imgsync.prom")) == [
        "imgsync.prom"
    ]


def test_metrics_from_the_config_file_and_replaced_each_run(env: Env, portal: Portal) -> None:
    prom = env.root / "imgsync.prom"
    Path("imgsync.toml").write_text(Path("imgsync.toml").read_text() + f'[metrics]\ntextfile = "{prom}"\n')
    assert invoke(env.args(portal, *all_pairs(portal))).exit_code == 0
    assert value(metrics(prom), "imgsync_last_run_images", result="downloaded") == 30
    assert invoke(env.args(portal, *all_pairs(portal))).exit_code == 0
    found = metrics(prom)
    assert value(found, "imgsync_last_run_images", result="downloaded") == 0
    assert value(found, "imgsync_last_run_images", result="unchanged") == 30
    assert value(found, "imgsync_last_run_success") == 1


def test_no_metrics_on_a_dry_run(env: Env, portal: Portal) -> None:
    prom = env.root / "imgsync.prom"
    result = invoke(env.args(portal, "--dry-run", "--metrics-file", str(prom), *all_pairs(portal)))
    assert result.exit_code == 0, result.stderr
    assert not prom.exists()


def test_an_unwritable_metrics_file_is_a_warning_not_a_failure(env: Env, portal: Portal) -> None:
    prom = env.root / "no-such-folder" / "imgsync.prom"
    result = invoke(env.args(portal, "--metrics-file", str(prom), *all_pairs(portal)))
    assert result.exit_code == 0
    assert (
        f"imgsync: WARNING: cannot write the metrics file {prom}: No such file or directory" in result.stderr
    )


# --- retention ----------------------------------------------------------------------------------------------------


def test_old_events_are_pruned_at_the_end_of_a_run(env: Env, portal: Portal) -> None:
    pairs = all_pairs(portal)
    assert invoke(env.args(portal, *pairs)).exit_code == 0
    con = sqlite3.connect(env.db)
    with con:
        con.execute("update events set at = '2020-01-01T00:00:00Z' where id <= 10")
    con.close()
    img = portal.images()[-1]
    portal.replace_image(img.product_id, img.image_id, content=b"new bytes")
    assert invoke(env.args(portal, *pairs)).exit_code == 0
    events = env.rows("events")
    assert len(events) == 30 - 10 + 1  # the 10 old ones are gone, the new download is recorded
    assert all(e["at"] > "2021" for e in events)


def test_keep_events_days_0_keeps_everything(env: Env, portal: Portal) -> None:
    Path("imgsync.toml").write_text(Path("imgsync.toml").read_text() + "[storage]\nkeep_events_days = 0\n")
    pairs = all_pairs(portal)
    assert invoke(env.args(portal, *pairs)).exit_code == 0
    con = sqlite3.connect(env.db)
    with con:
        con.execute("update events set at = '2000-01-01T00:00:00Z'")
    con.close()
    assert invoke(env.args(portal, *pairs)).exit_code == 0
    assert len(env.rows("events")) == 30


def test_prune_events_counts_what_it_deleted(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        run = store.start_run()
        store.db.execute(
            "insert into events (run_id, product_id, image_id, action, detail, at) values "
            "(?, 1, 1, 'downloaded', '', '2000-01-01T00:00:00Z'), (?, 1, 2, 'downloaded', '', '2999-01-01T00:00:00Z')",
            [run, run],
        )
        store.db.conn.commit()
        assert store.prune_events(180) == 1
        assert store.prune_events(180) == 0
        assert [r["image_id"] for r in store.db.query("select image_id from events")] == [2]


# --- status --failed --------------------------------------------------------------------------------------------


def test_status_failed_lists_each_failed_image_with_reason_and_when(env: Env, portal: Portal) -> None:
    a, b = portal.images()[0], portal.images()[5]
    for img in (a, b):
        portal.fail_image(img.product_id, img.image_id)
    assert invoke(env.args(portal, *all_pairs(portal))).exit_code == 1
    rows = {(r["product_id"], r["image_id"]): r for r in env.rows()}
    result = invoke(["status", "--db", str(env.db), "--failed"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    expected = sorted(
        (
            f"{str(f'{i.product_id}:{i.image_id}'):<15} {rows[(i.product_id, i.image_id)]['last_checked_at']:<20}  "
            "0: Internal error"
        )
        for i in (a, b)
    )
    assert sorted(lines[:2]) == expected
    assert lines[2:] == ["2 failed images"]

    as_json = invoke(["status", "--db", str(env.db), "--failed", "--json"])
    data = json.loads(as_json.stdout)
    assert data["count"] == 2 and data["db"] == str(env.db)
    assert sorted((f["product_id"], f["image_id"], f["reason"]) for f in data["failed"]) == sorted(
        (i.product_id, i.image_id, "0: Internal error") for i in (a, b)
    )
    assert all(f["at"] == rows[(f["product_id"], f["image_id"])]["last_checked_at"] for f in data["failed"])


def test_status_failed_with_none(env: Env, portal: Portal) -> None:
    assert invoke(env.args(portal, *all_pairs(portal))).exit_code == 0
    assert invoke(["status", "--db", str(env.db), "--failed"]).stdout == "0 failed images\n"
    data = json.loads(invoke(["status", "--db", str(env.db), "--failed", "--json"]).stdout)
    assert data == {"db": str(env.db), "failed": [], "count": 0}


def test_a_defect_outside_the_pipeline_still_prints_the_json_summary(
    env: Env, portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README: --json prints one object in every run. A defect of ours after the settings are read and
    before the pipeline starts (here: the progress set-up) exits 70 with that object, not with nothing."""

    def broken(self: Any, bar: Any) -> Any:
        raise RuntimeError("a defect")

    monkeypatch.setattr("imgsync.cli._logging.RunLog.progress", broken)
    result = invoke(env.args(portal, "--json", *all_pairs(portal)[:2]))
    assert result.exit_code == 70
    summary = summary_of(result.stdout)
    assert summary["exit_code"] == 70 and summary["complete"] is False
    assert summary["error"].startswith("internal error: RuntimeError")
    assert "imgsync: internal error" in result.stderr
    assert portal.stats.requests == 0
