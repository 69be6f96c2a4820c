"""``cron/``: the wrapper script run as cron runs it (``env -i PATH=/usr/bin:/bin``), and the systemd unit.

The wrapper runs a fake ``imgsync`` that records its arguments and when it started, prints a JSON object,
sleeps a second and exits with the code the test chose; so the tests see what the wrapper finds, logs and
passes through, without a portal.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import REPO

CRON = REPO / "cron"
CRON_PATH = "/usr/bin:/bin"

FAKE = """#!/bin/sh
date +%s.%N > "{record}.started"
printf '%s\\n' "$@" > "{record}.args"
echo "imgsync: failed 12:345: a reason" >&2
printf '{{"run_id": 7, "requested": 2, "downloaded": 1, "failed": 1}}\\n'
sleep 1
exit {code}
"""


def fake_imgsync(path: Path, record: Path, code: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE.format(record=record, code=code))
    path.chmod(0o755)
    return path


def env_file(tmp_path: Path, log: Path, **extra: str) -> Path:
    lines = [
        f"IMGSYNC_LOG={log}",
        f"IMGSYNC_CSV={tmp_path / 'pairs.csv'}",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    path = tmp_path / "imgsync.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrapper(script: Path, envfile: Path, home: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """As cron runs it: an empty environment but for a minimal PATH and HOME."""
    home.mkdir(exist_ok=True)
    assignments = [f"PATH={CRON_PATH}", f"HOME={home}", *(f"{k}={v}" for k, v in environ.items())]
    return subprocess.run(
        ["env", "-i", *assignments, "bash", str(script), str(envfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def log_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def epoch(at: object) -> float:
    assert isinstance(at, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at), at
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("code", [0, 1, 5])
def test_wrapper_runs_imgsync_bin_logs_the_start_time_and_passes_the_exit_code(
    tmp_path: Path, code: int
) -> None:
    record = tmp_path / "run"
    fake = fake_imgsync(tmp_path / "bin" / "imgsync", record, code)
    log = tmp_path / "log" / "summary.jsonl"
    result = run_wrapper(
        CRON / "imgsync-cron.sh", env_file(tmp_path, log, IMGSYNC_BIN=str(fake)), tmp_path / "home"
    )
    assert result.returncode == code, result.stderr
    assert result.stdout == ""  # nothing for cron to mail on success
    assert result.stderr == "imgsync: failed 12:345: a reason\n"  # imgsync's stderr reaches cron's mail
    args = (record.with_suffix(".args")).read_text().splitlines()
    assert args == ["sync", "--json", "--quiet", "--no-progress", "--csv", str(tmp_path / "pairs.csv")]
    [line] = log_lines(log)
    assert line["exit_code"] == code
    assert line["summary"] == {"run_id": 7, "requested": 2, "downloaded": 1, "failed": 1}
    started = float(record.with_suffix(".started").read_text())
    # The start of the run (the log's second is cut, not rounded): before the fake slept, not after.
    assert epoch(line["at"]) <= started < epoch(line["at"]) + 5


def test_imgsync_bin_from_the_environment(tmp_path: Path) -> None:
    record = tmp_path / "run"
    fake = fake_imgsync(tmp_path / "bin" / "imgsync", record)
    log = tmp_path / "summary.jsonl"
    result = run_wrapper(
        CRON / "imgsync-cron.sh", env_file(tmp_path, log), tmp_path / "home", IMGSYNC_BIN=str(fake)
    )
    assert result.returncode == 0, result.stderr
    assert record.with_suffix(".args").exists()
    assert log_lines(log)[0]["exit_code"] == 0


def checkout_copy(tmp_path: Path) -> Path:
    """The wrapper alone in a checkout's layout: <tmp>/checkout/cron/imgsync-cron.sh."""
    script = tmp_path / "checkout" / "cron" / "imgsync-cron.sh"
    script.parent.mkdir(parents=True)
    shutil.copy2(CRON / "imgsync-cron.sh", script)
    return script


def test_without_imgsync_bin_the_checkouts_venv_is_found(tmp_path: Path) -> None:
    script = checkout_copy(tmp_path)
    record = tmp_path / "run"
    fake_imgsync(tmp_path / "checkout" / ".venv" / "bin" / "imgsync", record, 1)
    log = tmp_path / "summary.jsonl"
    result = run_wrapper(script, env_file(tmp_path, log), tmp_path / "home")
    assert result.returncode == 1, result.stderr
    assert record.with_suffix(".args").read_text().startswith("sync\n--json\n--quiet\n")
    assert log_lines(log)[0]["summary"] == {"run_id": 7, "requested": 2, "downloaded": 1, "failed": 1}


def test_through_a_symbolic_link_the_checkout_is_still_found(tmp_path: Path) -> None:
    script = checkout_copy(tmp_path)
    fake_imgsync(tmp_path / "checkout" / ".venv" / "bin" / "imgsync", tmp_path / "run")
    link = tmp_path / "elsewhere" / "imgsync-cron"
    link.parent.mkdir()
    link.symlink_to(script)
    result = run_wrapper(link, env_file(tmp_path, tmp_path / "summary.jsonl"), tmp_path / "home")
    assert result.returncode == 0, result.stderr


def test_no_imgsync_anywhere_exits_127_saying_what_was_tried(tmp_path: Path) -> None:
    if Path("/opt/imgsync/.venv/bin/imgsync").exists() or shutil.which("imgsync", path=CRON_PATH):
        pytest.skip("this machine has an imgsync where the wrapper looks")
    script = checkout_copy(tmp_path)
    log = tmp_path / "summary.jsonl"
    envfile = env_file(tmp_path, log)
    result = run_wrapper(script, envfile, tmp_path / "home")
    assert result.returncode == 127
    checkout = (tmp_path / "checkout").resolve()
    assert result.stderr == (
        f"imgsync-cron: imgsync not found (tried {checkout}/.venv/bin/imgsync, /opt/imgsync/.venv/bin/imgsync "
        f"and PATH={CRON_PATH}); set IMGSYNC_BIN in {envfile}\n"
    )
    assert not log.exists()


def test_an_imgsync_bin_that_is_not_there_is_not_replaced_by_another(tmp_path: Path) -> None:
    script = checkout_copy(tmp_path)
    record = tmp_path / "run"
    fake_imgsync(tmp_path / "checkout" / ".venv" / "bin" / "imgsync", record)
    envfile = env_file(tmp_path, tmp_path / "summary.jsonl", IMGSYNC_BIN="/nowhere/imgsync")
    result = run_wrapper(script, envfile, tmp_path / "home")
    assert result.returncode == 127
    assert result.stderr == (
        f"imgsync-cron: IMGSYNC_BIN=/nowhere/imgsync is not an executable command; fix IMGSYNC_BIN in {envfile}\n"
    )
    assert not record.with_suffix(".args").exists()


def test_output_that_is_not_one_json_object_keeps_the_log_valid(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "imgsync"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf \'a "quoted"\\\\ line\\n{"x": 1}\\n\'\nexit 70\n')
    fake.chmod(0o755)
    log = tmp_path / "summary.jsonl"
    result = run_wrapper(
        CRON / "imgsync-cron.sh", env_file(tmp_path, log, IMGSYNC_BIN=str(fake)), tmp_path / "home"
    )
    assert result.returncode == 70
    [line] = log_lines(log)
    assert (line["summary"], line["stdout"]) == (None, 'a "quoted"\\ line\n{"x": 1}')


def test_an_unreadable_env_file_exits_2(tmp_path: Path) -> None:
    result = run_wrapper(CRON / "imgsync-cron.sh", tmp_path / "nope.env", tmp_path / "home")
    assert (result.returncode, result.stderr) == (2, f"imgsync-cron: cannot read {tmp_path / 'nope.env'}\n")


# --- systemd ---------------------------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (keys may repeat), and each key's comment lines as ``#Key``."""
    out: dict[str, list[str]] = {}
    comment: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comment.append(line.lstrip("# "))
        elif "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
            out.setdefault("#" + key, []).extend(comment)
            comment = []
        else:
            comment = []
    return out


def test_service_keeps_files_private_and_counts_capped_and_partly_failed_runs_as_finished() -> None:
    service = unit(CRON / "imgsync.service")
    assert service["UMask"] == ["0077"]
    statuses = service["SuccessExitStatus"][0].split()
    assert statuses == ["0", "1", "5"]
    # The comment above says the same: each of these codes is named as a finished run.
    comment = " ".join(service["#SuccessExitStatus"])
    finished = comment.split("Every other code")[0]
    assert re.findall(r"\b(\d+) ", finished) == statuses, comment
    assert service["ExecStart"] == ["/opt/imgsync/cron/imgsync-cron.sh /etc/imgsync/imgsync.env"]


def test_service_may_write_where_the_example_env_file_puts_things() -> None:
    writable = [Path(p) for v in unit(CRON / "imgsync.service")["ReadWritePaths"] for p in v.split()]
    settings = dict(
        line.split("=", 1)
        for line in (CRON / "imgsync.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in ("IMGSYNC_DEST", "IMGSYNC_DB", "IMGSYNC_LOG"):
        target = Path(settings[name])
        # The database's folder too: its -wal, -shm and .lock files live beside it.
        folder = target if name == "IMGSYNC_DEST" else target.parent
        assert any(folder == p or p in folder.parents for p in writable), (name, target, writable)


def test_crontab_and_service_call_the_wrapper_where_the_readme_installs_it() -> None:
    readme = (REPO / "README.md").read_text()
    assert "git clone" in readme and "/opt/imgsync" in readme
    assert "cd /opt/imgsync && python3 -m venv .venv && .venv/bin/pip install ." in readme
    assert (
        "/opt/imgsync/cron/imgsync-cron.sh /etc/imgsync/imgsync.env" in (CRON / "crontab.example").read_text()
    )
