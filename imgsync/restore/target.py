"""What the target products hold now, by content: their image lists and the sha256 of each image.

An image the database records unchanged (the same skip-rule fields, a sha256) is known by its recorded
sha256; any other is downloaded and hashed. A real run keeps what it downloads, as ``sync`` would (the
file in dest, the S3 object, an ``ok`` row); a dry run hashes in memory and keeps nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from ..bitrix import Body, Client, Listing
from ..errors import ImageError, ImageGone, ImgsyncError
from ..localfs import relative_path
from ..models import Action, PortalImage
from ..store import Store
from ..sync.caps import Caps
from ..sync.execute import Executor
from ..sync.pipeline import record
from ..sync.plan import Plan, SyncOptions, Uploader
from ..sync.summary import Summary
from .plan import SLOTS, TargetProduct

log = logging.getLogger(__name__)


class Keeper:
    """Where a run keeps the images it downloads: dest, S3 (optional), the database, exactly as ``sync`` keeps
    them (its :class:`~imgsync.sync.execute.Executor` and :func:`~imgsync.sync.pipeline.record`); or nowhere (a
    dry run, which only hashes)."""

    def __init__(
        self,
        client: Client,
        store: Store,
        dest: Path,
        uploader: Uploader | None = None,
        *,
        keep_local: bool = True,
        dry_run: bool = False,
        run_id: int | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.dest = dest
        self.dry_run = dry_run
        self.run_id = run_id
        opts = SyncOptions(dest=dest, keep_local=keep_local, uploader=uploader)
        self._executor = Executor(client, store, opts, Caps(opts, Summary()))

    def fetch(self, image: PortalImage, detail: str) -> str:
        """Download ``image``, keep it (a real run) and return the sha256 of its bytes.

        Raises :class:`ImageError` when it cannot be downloaded; a failed upload is recorded on the row
        (as ``sync`` records one) and the sha256 is still returned: the bytes are known."""
        if self.dry_run:

            def digest(_image: PortalImage, body: Body) -> str:
                h = hashlib.sha256()
                for chunk in body.chunks():
                    h.update(chunk)
                return h.hexdigest()

            _, sha = self.client.download(image, digest)
            return sha
        row = self.store.rows_for([image.ref]).get(image.ref)
        plan = Plan(image.ref, Action.DOWNLOAD, detail, image, row, relative_path(image.ref, image.name))
        outcome = self._executor.download(plan)
        record(self.store, self.dest, self.run_id, [outcome])
        assert outcome.sha256 is not None
        return outcome.sha256


def look_at(keeper: Keeper, product_ids: Sequence[int]) -> dict[int, TargetProduct]:
    """Each product's current images by content (see the module docstring)."""
    listings = keeper.client.list_images(list(product_ids))
    rows = keeper.store.rows_of_products(list(product_ids))
    out: dict[int, TargetProduct] = {}
    for pid in product_ids:
        listing = listings.get(pid)
        if isinstance(listing, ImageGone):
            out[pid] = TargetProduct(pid, exists=False)
            continue
        if not isinstance(listing, Listing):
            why = listing.message if isinstance(listing, ImgsyncError) else "no answer"
            out[pid] = TargetProduct(pid, error=why)
            continue
        if not listing.complete:
            out[pid] = TargetProduct(pid, error="its image list is incomplete")
            continue
        recorded = {row.image_id: row for row in rows.get(pid, [])}
        hashes: dict[int, str] = {}
        unknown: dict[int, str] = {}
        slots: dict[str, int] = {}
        for image in listing.images:
            if image.type in SLOTS:
                slots.setdefault(image.type, image.image_id)
            row = recorded.get(image.image_id)
            if (
                row is not None
                and row.sha256
                and (row.name, row.type, row.create_time, row.detail_url) == (image.fingerprint())
            ):
                hashes[image.image_id] = row.sha256
                continue
            try:
                hashes[image.image_id] = keeper.fetch(image, "a current image of a product being restored")
            except ImageError as exc:
                if isinstance(exc, ImageGone):
                    continue  # deleted meanwhile: the product does not hold it
                unknown[image.image_id] = exc.message
        out[pid] = TargetProduct(pid, hashes=hashes, unknown=unknown, slots=slots)
    return out
