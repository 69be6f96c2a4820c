"""A sync's counts: the ``--json`` summary, and what the runner needs to choose an exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..models import Action, Event, ImageRef, Outcome
from ..redact import redact
from .plan import Plan

#: How many failed images the summary lists (``failures``); ``failed`` counts them all.
MAX_FAILURES = 100


@dataclass
class Summary:
    """The counts of the ``--json`` summary, plus what the CLI needs to choose an exit code.

    ``failures``: up to :data:`MAX_FAILURES` ``{"product_id", "image_id", "reason"}``. ``complete`` is false when
    the run stopped before the end (an error, a signal, a cap); ``deferred``: images left for the next run.
    """

    run_id: int | None = None
    requested: int = 0
    downloaded: int = 0
    unchanged: int = 0
    uploaded: int = 0
    missing: int = 0
    failed: int = 0
    duration_s: float = 0.0
    error: str | None = None
    exit_code: int = 0
    complete: bool = True
    deferred: int = 0
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    requests: int = 0
    retries: int = 0
    answers_503: int = 0
    answers_429: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: A dry run's plan, one ``Plan.as_json()`` per image (None in a real run).
    plan: list[dict[str, Any]] | None = None

    #: The keys of :meth:`as_json`, in order: every run's object has all of them.
    KEYS = (
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
    )

    def add_failure(self, ref: ImageRef, reason: str) -> None:
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(
                {"product_id": int(ref.product_id), "image_id": int(ref.image_id), "reason": reason}
            )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.KEYS}
        out["duration_s"] = round(self.duration_s, 3)
        out["error"] = self.error or None
        out["failures"] = [dict(f) for f in self.failures]
        if self.plan is not None:
            out["plan"] = list(self.plan)
        return out

    def count(self, outcome: Outcome) -> None:
        """One image done: its event, its bytes, its failure."""
        self.requested += 1
        if outcome.event == Event.DOWNLOADED:
            self.downloaded += 1
            self.bytes_downloaded += outcome.size or 0
        elif outcome.event == Event.UNCHANGED and not outcome.failed:
            self.unchanged += 1
        elif outcome.event == Event.MISSING:
            self.missing += 1
        if outcome.uploaded:
            self.uploaded += 1
            self.bytes_uploaded += outcome.size or 0
        if outcome.failed:
            self.failed += 1
            self.add_failure(outcome.ref, outcome.reason)  # what -q prints on stderr, one line each

    def count_plan(self, plan: Plan) -> None:
        """One image planned (a dry run): counted as what the plan would do."""
        self.requested += 1
        if self.plan is not None:
            self.plan.append(plan.as_json())
        if plan.action == Action.DOWNLOAD:
            self.downloaded += 1
        elif plan.action == Action.UPLOAD:
            self.unchanged += 1
            self.uploaded += 1
        elif plan.action == Action.UNCHANGED:
            self.unchanged += 1
        elif plan.action == Action.MISSING:
            self.missing += 1
        else:
            self.failed += 1


def summary_json(
    summary: Summary | None, dry_run: bool, *, error: str | None = None, code: int | None = None
) -> dict[str, Any]:
    """The ``--json`` object: every key in every run. A run stopped before it began has zeros and
    ``"complete": false``."""
    data = (summary or Summary(complete=False)).as_json()
    if dry_run:
        data["dry_run"] = True
    if error:
        data["error"] = redact(error)
        data["complete"] = False
    if code is not None:
        data["exit_code"] = code
    return data
