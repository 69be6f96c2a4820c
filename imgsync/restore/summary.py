"""What a restore did: the counts, and the ``--json`` object (the contract's keys, in every run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..redact import redact

#: The most failures and restored images the JSON object lists.
MAX_FAILURES = 100
MAX_RESTORED = 1000


@dataclass
class RestoreSummary:
    run_id: int | None = None
    exit_code: int = 0
    complete: bool = True
    selected: int = 0
    restored: int = 0
    present: int = 0
    skipped: int = 0  # slots taken
    failed: int = 0
    deferred: int = 0
    bytes_sent: int = 0
    requests: int = 0
    retries: int = 0
    answers_503: int = 0
    answers_429: int = 0
    duration_s: float = 0.0
    error: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    restored_images: list[dict[str, int]] = field(default_factory=list)
    plan: list[dict[str, Any]] | None = None  # a dry run's plan
    #: A restore from another portal: each source product's target, or why none (``--json``: ``mapping``).
    mapping: list[dict[str, Any]] | None = None
    to_dir: bool = False  # --to DIR: no portal, no run row

    def add_failure(self, product_id: int, image_id: int, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES:
            self.failures.append({"product_id": product_id, "image_id": image_id, "reason": reason})

    def add_restored(self, product_id: int, image_id: int, target_product_id: int, new_image_id: int) -> None:
        self.restored += 1
        if len(self.restored_images) < MAX_RESTORED:
            self.restored_images.append(
                {
                    "product_id": product_id,
                    "image_id": image_id,
                    "target_product_id": target_product_id,
                    "new_image_id": new_image_id,
                }
            )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "exit_code": self.exit_code,
            "complete": self.complete,
            "selected": self.selected,
            "restored": self.restored,
            "present": self.present,
            "skipped": self.skipped,
            "failed": self.failed,
            "deferred": self.deferred,
            "bytes_sent": self.bytes_sent,
            "requests": self.requests,
            "retries": self.retries,
            "answers_503": self.answers_503,
            "answers_429": self.answers_429,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "failures": self.failures,
            "restored_images": self.restored_images,
        }
        if self.mapping is not None:
            out["mapping"] = self.mapping[:MAX_RESTORED]
        if self.plan is not None:
            out["dry_run"] = True
            out["plan"] = self.plan
        return out

    def counts_line(self) -> str:
        return (
            f"{self.selected} selected: restored {self.restored}, present {self.present}, "
            f"slot taken {self.skipped}, failed {self.failed}, deferred {self.deferred}"
        )


def restore_json(
    summary: RestoreSummary | None, dry_run: bool, *, error: str | None = None, code: int | None = None
) -> dict[str, Any]:
    """The ``--json`` object of a restore: every key in every run; one stopped before it began has zeros and
    ``"complete": false``."""
    data = (summary or RestoreSummary(complete=False, plan=[] if dry_run else None)).as_json()
    if error:
        data["error"], data["complete"] = redact(error), False
    if code is not None:
        data["exit_code"] = code
    return data
