"""The metrics file: Prometheus text format for node_exporter's textfile collector.

Written at the end of every sync but a dry run, failed and interrupted ones included, so that an alert can
watch ``imgsync_last_run_success`` and ``imgsync_last_run_end_timestamp_seconds``. ``write_to_textfile``
writes a temporary file beside the target and renames it over the target: the collector never reads half a
file. Every value is a gauge about the last run (or, for ``imgsync_images``, the database after it): the file
is replaced each run, so nothing here counts across runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

__all__ = ["RUN_COUNTS", "write_metrics", "write_restore_metrics"]

#: The summary's image counts, as ``imgsync_last_run_images{result="..."}``.
RUN_COUNTS = ("requested", "downloaded", "unchanged", "uploaded", "missing", "failed", "deferred")

#: Single values of the summary: (metric name, summary key, help).
_SINGLE = (
    (
        "last_run_exit_code",
        "exit_code",
        "Exit code of the last imgsync sync (0 ok, 1 some images failed, ...).",
    ),
    ("last_run_complete", "complete", "1 when the last sync went through every image; 0 when stopped early."),
    ("last_run_duration_seconds", "duration_s", "How long the last sync took."),
    ("last_run_downloaded_bytes", "bytes_downloaded", "Bytes downloaded by the last sync."),
    ("last_run_uploaded_bytes", "bytes_uploaded", "Bytes uploaded to S3 by the last sync."),
    ("last_run_requests", "requests", "HTTP requests the last sync sent to the portal, downloads included."),
    ("last_run_retries", "retries", "Requests the last sync had to retry."),
)


def write_metrics(
    path: Path | str,
    summary_json: Mapping[str, Any],
    status_counts: Mapping[str, int],
    *,
    started_at: float,
    finished_at: float,
) -> None:
    """Write the metrics of one run to ``path`` atomically.

    ``summary_json``: the run's ``--json`` object (:meth:`imgsync.sync.Summary.as_json`, with the exit code
    the process exits with); ``status_counts``: images in the database by status; ``started_at`` and
    ``finished_at``: Unix times. Raises ``OSError`` when the file cannot be written (no temporary file remains).
    """
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        metric = Gauge(f"imgsync_{name}", doc, list(labels or {}), registry=registry)
        (metric.labels(**labels) if labels else metric).set(value)

    exit_code = int(summary_json.get("exit_code") or 0)
    gauge("last_run_start_timestamp_seconds", "When the last imgsync sync started (Unix time).", started_at)
    gauge("last_run_end_timestamp_seconds", "When the last imgsync sync ended (Unix time).", finished_at)
    gauge("last_run_success", "1 when the last imgsync sync exited 0.", 1.0 if exit_code == 0 else 0.0)
    for name, key, doc in _SINGLE:
        gauge(name, doc, float(summary_json.get(key) or 0))

    images = Gauge(
        "imgsync_last_run_images",
        "Images of the last sync by what happened to them.",
        ["result"],
        registry=registry,
    )
    for key in RUN_COUNTS:
        images.labels(result=key).set(float(summary_json.get(key) or 0))

    answers = Gauge(
        "imgsync_last_run_portal_answers",
        "Answers of the portal that ask to slow down, seen by the last sync: 503 (QUERY_LIMIT_EXCEEDED) "
        "and 429 (OPERATION_TIME_LIMIT).",
        ["status"],
        registry=registry,
    )
    for status in ("503", "429"):
        answers.labels(status=status).set(float(summary_json.get(f"answers_{status}") or 0))

    by_status = Gauge(
        "imgsync_images", "Images recorded in the state database, by status.", ["status"], registry=registry
    )
    for status in sorted({"ok", "missing", "failed", *status_counts}):
        by_status.labels(status=status).set(float(status_counts.get(status, 0)))

    write_to_textfile(os.fspath(path), registry)


#: The restore summary's counts, as ``imgsync_restore_last_run_images{result="..."}``.
RESTORE_COUNTS = ("selected", "restored", "present", "skipped", "failed", "deferred")


def write_restore_metrics(
    path: Path | str, summary_json: Mapping[str, Any], *, started_at: float, finished_at: float
) -> None:
    """The metrics of one ``imgsync restore`` (its own names, ``imgsync_restore_*``, so that a restore
    written to the sync's file never passes for a sync)."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(f"imgsync_restore_{name}", doc, registry=registry).set(value)

    exit_code = int(summary_json.get("exit_code") or 0)
    gauge(
        "last_run_start_timestamp_seconds", "When the last imgsync restore started (Unix time).", started_at
    )
    gauge("last_run_end_timestamp_seconds", "When the last imgsync restore ended (Unix time).", finished_at)
    gauge("last_run_success", "1 when the last imgsync restore exited 0.", 1.0 if exit_code == 0 else 0.0)
    gauge("last_run_exit_code", "Exit code of the last imgsync restore.", float(exit_code))
    gauge(
        "last_run_sent_bytes",
        "Bytes of images the last restore sent.",
        float(summary_json.get("bytes_sent") or 0),
    )
    gauge(
        "last_run_requests", "HTTP requests the last restore sent.", float(summary_json.get("requests") or 0)
    )
    images = Gauge(
        "imgsync_restore_last_run_images",
        "Images of the last restore by outcome.",
        ["result"],
        registry=registry,
    )
    for key in RESTORE_COUNTS:
        images.labels(result=key).set(float(summary_json.get(key) or 0))
    write_to_textfile(os.fspath(path), registry)
