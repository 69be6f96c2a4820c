"""The restore's decision per image, pure: what the target product holds and the backup decide it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..models import StoredImage

#: The single-value slots: an add there replaces (and deletes) the picture the slot holds (notes §15).
SLOTS = ("DETAIL_PICTURE", "PREVIEW_PICTURE")


class RestoreAction(StrEnum):
    RESTORE = "restore"
    PRESENT = "present"
    NO_BACKUP = "no backup"
    PRODUCT_GONE = "product gone"
    UNMATCHED = "unmatched"
    SLOT_TAKEN = "slot taken"
    FAILED = "failed"  # cannot be decided safely, or refused before (the reason says which)

    @property
    def fails(self) -> bool:
        """Does this action count as a failed image (exit 1)?"""
        return self in (
            RestoreAction.NO_BACKUP,
            RestoreAction.PRODUCT_GONE,
            RestoreAction.UNMATCHED,
            RestoreAction.FAILED,
        )


@dataclass(frozen=True)
class TargetProduct:
    """What a target product holds now. ``hashes``: current image id -> sha256 of its bytes; ``unknown``:
    current images whose bytes could not be learnt (id -> why); ``slots``: slot -> the image id in it."""

    product_id: int
    exists: bool = True
    hashes: Mapping[int, str] = field(default_factory=dict)
    unknown: Mapping[int, str] = field(default_factory=dict)
    slots: Mapping[str, int] = field(default_factory=dict)
    error: str = ""  # why the product could not be looked at (then nothing is decided for it)


@dataclass(frozen=True)
class RestorePlan:
    row: StoredImage  # the backed-up image, by the ids it had when it was backed up
    target_product_id: int | None
    action: RestoreAction
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "product_id": self.row.product_id,
            "image_id": self.row.image_id,
            "target_product_id": self.target_product_id,
            "action": str(self.action),
            "reason": self.reason,
            "name": self.row.name,
        }


def decide_restore(
    row: StoredImage,
    target: TargetProduct | None,
    backup_problem: str | None,
    *,
    replace: bool = False,
    refused: str | None = None,
    force: bool = False,
    planned: frozenset[str] = frozenset(),
    slots_planned: Mapping[str, int] | None = None,
    unmatched_reason: str = "no target product",
) -> RestorePlan:
    """What to do with one backed-up image.

    ``target``: the target product as it is now (None: no target product was found, another portal);
    ``backup_problem``: why the backup cannot be sent (None: it holds the recorded bytes); ``refused``: the
    error of an earlier restore whose add the portal stored with other bytes (sent again only with
    ``force``); ``planned``: sha256 of images this run already adds to the product (the same bytes are
    never added twice); ``slots_planned``: slot -> the image this run restores into it (one slot holds one
    picture: a second add would replace the first).
    """

    def plan(action: RestoreAction, reason: str) -> RestorePlan:
        return RestorePlan(row, target.product_id if target else None, action, reason)

    if target is None:
        return plan(RestoreAction.UNMATCHED, unmatched_reason)
    if target.error:
        return plan(RestoreAction.FAILED, f"could not look at product {target.product_id}: {target.error}")
    if not target.exists:
        return plan(RestoreAction.PRODUCT_GONE, f"product {target.product_id} does not exist on the portal")
    sha = row.sha256 or ""
    holding = [iid for iid, h in target.hashes.items() if h == sha]
    if holding:
        return plan(
            RestoreAction.PRESENT, f"product {target.product_id} holds these bytes as image {min(holding)}"
        )
    if sha in planned:
        return plan(
            RestoreAction.PRESENT, "the same bytes are added once for another image of this selection"
        )
    if backup_problem is not None:
        return plan(RestoreAction.NO_BACKUP, backup_problem)
    if refused is not None and not force:
        return plan(RestoreAction.FAILED, f"not sent again ({refused}); --force sends it again")
    if target.unknown:
        iid, why = min(target.unknown.items())
        return plan(
            RestoreAction.FAILED,
            f"cannot tell whether product {target.product_id} holds these bytes: image {iid} could not be "
            f"read ({why})",
        )
    if row.type in SLOTS and slots_planned and row.type in slots_planned:
        return plan(
            RestoreAction.SLOT_TAKEN,
            f"image {slots_planned[row.type]} of this selection is restored into {row.type} of product "
            f"{target.product_id} (one picture per slot)",
        )
    if row.type in SLOTS and row.type in target.slots:
        holder = target.slots[row.type]
        if not replace:
            return plan(
                RestoreAction.SLOT_TAKEN,
                f"{row.type} of product {target.product_id} holds image {holder}; --replace restores it anyway",
            )
        return plan(RestoreAction.RESTORE, f"replaces image {holder} in {row.type} (backed up)")
    return plan(RestoreAction.RESTORE, "the backup is intact and the product does not hold these bytes")
