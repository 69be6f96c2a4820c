"""What the target products hold now, by content: their image lists and the sha256 of each image.

An image the database records unchanged (the same skip-rule fields, a sha256) is known by its recorded
sha256; any other is downloaded and hashed. A real run keeps what it downloads, as ``sync`` would (the
file in dest, the S3 object, an ``ok`` row); a dry run hashes in memory and keeps nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..bitrix import Body, Client, Listing
from ..errors import ImageError, ImageGone, ImgsyncError, UploadError
from ..localfs import relative_path, resolve_inside, save_stream
from ..models import Event, ImageRef, Outcome, PortalImage, S3Object
from ..store import Store
from .plan import SLOTS, TargetProduct

log = logging.getLogger(__name__)


class Uploader(Protocol):
    def key_for(self, relative: str) -> str: ...

    def put(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        size: int,
        content_type: str,
        ref: ImageRef,
        image: PortalImage | None = None,
    ) -> str: ...


@dataclass(frozen=True)
class Keeper:
    """Where a run keeps the images it downloads: dest, S3 (optional), the database; or nowhere (dry run)."""

    client: Client
    store: Store
    dest: Path
    uploader: Uploader | None = None
    keep_local: bool = True
    dry_run: bool = False
    run_id: int | None = None

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

        def write(current: PortalImage, body: Body) -> tuple[str, int, str, str]:
            relative = relative_path(current.ref, current.name)
            size, sha256 = save_stream(
                body.chunks(), resolve_inside(self.dest, relative), expected_size=body.content_length
            )
            return relative, size, sha256, body.content_type

        image, (relative, size, sha256, content_type) = self.client.download(image, write)
        outcome = Outcome(
            image.ref,
            Event.DOWNLOADED,
            f"{size} bytes, {detail}",
            image=image,
            sha256=sha256,
            size=size,
            content_type=content_type or None,
            local_path=relative,
            changed=True,
        )
        if self.uploader is not None:
            key = self.uploader.key_for(relative)
            try:
                etag = self.uploader.put(
                    resolve_inside(self.dest, relative),
                    key,
                    sha256=sha256,
                    size=size,
                    content_type=content_type or "application/octet-stream",
                    ref=image.ref,
                    image=image,
                )
            except UploadError as exc:
                outcome = replace(outcome, upload_error=exc.message)
            else:
                outcome = replace(outcome, s3=S3Object(key, etag, sha256), uploaded=True)
                if not self.keep_local:
                    outcome = replace(outcome, local_path=None, clear_local=True)
        self.store.save(self.run_id, [outcome])
        if outcome.clear_local:
            try:
                os.unlink(resolve_inside(self.dest, relative))
            except OSError as exc:
                log.warning("could not remove %s: %s", relative, exc.strerror)
        return sha256


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
