"""``imgsync sync``'s pipeline: inputs in work order → metadata → a plan per image → transfers → rows.

- :mod:`.sources`: pairs, products, ``--recorded`` and the catalog (``--all``) as chunks, in work order.
- :mod:`.fetch`: a chunk's one ``batch`` call, and its answers as refs and plans.
- :mod:`.plan`: :func:`decide`, the skip rule (pure): each image's :class:`Plan`, with its reason.
- :mod:`.caps`: the one check of ``--max-*`` that every piece of new work asks.
- :mod:`.execute`: download, upload-only, ensure-uploaded; each returns an :class:`~imgsync.models.Outcome`.
- :mod:`.pipeline`: :class:`Syncer`, the scheduler: fetches ahead, plans, runs the executors in threads, and
  hands the outcomes to the store. :mod:`.summary`: the counts and the ``--json`` object.

:func:`imgsync.runner.run_sync` builds the client, store and uploader and runs all of it as one call.
"""

from .caps import Caps
from .execute import Executor
from .pipeline import AUTO_MAX_WORKERS, LINK_WAIT_S, Syncer
from .plan import Plan, SyncOptions, Uploader, backed_up_as_recorded, backup_state, decide, inside_dest
from .sources import (
    Chunk,
    PlannedChunk,
    ProductChunk,
    Request,
    catalog_chunks,
    gone_product,
    put_in_work_order,
    read_inputs,
    work_in_order,
)
from .summary import MAX_FAILURES, Summary, summary_json

__all__ = [
    "AUTO_MAX_WORKERS",
    "LINK_WAIT_S",
    "MAX_FAILURES",
    "Caps",
    "Chunk",
    "Executor",
    "Plan",
    "PlannedChunk",
    "ProductChunk",
    "Request",
    "Summary",
    "SyncOptions",
    "Syncer",
    "Uploader",
    "backed_up_as_recorded",
    "backup_state",
    "catalog_chunks",
    "decide",
    "gone_product",
    "inside_dest",
    "put_in_work_order",
    "read_inputs",
    "summary_json",
    "work_in_order",
]
