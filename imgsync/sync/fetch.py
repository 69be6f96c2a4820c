"""The network half of a chunk: one ``batch`` call for its metadata, then its answers as refs and plans.

Runs in the pipeline's metadata workers (:func:`fetch`); the pipeline then turns the answers into what to plan
(:func:`unpack`) on its own thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..bitrix import BATCH_SIZE, Client, Listing
from ..errors import DeadlineReached, ImageError, ImageGone
from ..models import Action, ImageRef, PortalImage
from ..store import Store
from .plan import Plan
from .sources import ProductChunk, gone_product

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listed:
    """A :class:`ProductChunk`'s answers: each product's image list, ``get``'s answers for the images the
    lists left out (see :func:`left_out`), and which of the products' images are recorded."""

    listings: Mapping[int, Listing | ImageError]
    asked: Mapping[ImageRef, PortalImage | ImageError]
    recorded: frozenset[ImageRef]


@dataclass
class Unpacked:
    """A fetched chunk, ready to plan: its refs in order with their answers, the plans its products' listings
    already decided (gone, failed), and whether an answer came too late (the deadline passed)."""

    refs: list[ImageRef]
    found: dict[ImageRef, PortalImage | ImageError]
    extra: list[Plan] = field(default_factory=list)
    deadline_passed: bool = False


def fetch(client: Client, store: Store, item: list[ImageRef] | ProductChunk) -> dict[Any, Any] | Listed:
    """One ``batch`` call, and for products a ``get`` for each image their lists leave out that the run
    knows of otherwise (see :func:`left_out`)."""
    if not isinstance(item, ProductChunk):
        return client.get_images(item)
    listings = client.list_images(list(item.product_ids))
    recorded, ask = left_out(store, item, listings)
    asked: dict[ImageRef, PortalImage | ImageError] = {}
    for at in range(0, len(ask), BATCH_SIZE):
        asked.update(client.get_images(ask[at : at + BATCH_SIZE]))
    return Listed(listings, asked, recorded)


def left_out(
    store: Store, item: ProductChunk, listings: Mapping[int, Listing | ImageError]
) -> tuple[frozenset[ImageRef], list[ImageRef]]:
    """The recorded images of the listed products, and the images to ask ``get`` about: those recorded
    or shown by the catalog's listing that the image lists did not return.

    An image list is not proof that what it leaves out is gone: the docs leave open whether
    ``catalog.productImage.list`` caps its answer and whether it honours ``start`` (notes §13.5). So an
    image is marked missing only on ``get``'s own "not found", and a picture the catalog's listing
    shows is backed up even when the list hides it. Listing ids are used only where they share an id
    with the list: ids that are not image ids (the docs leave that open too) name nothing to ask.
    """
    recorded: set[ImageRef] = set()
    ask: list[ImageRef] = []
    for pid, listing in listings.items():
        if isinstance(listing, ImageError):
            continue
        returned = {image.image_id for image in listing.images}
        known = {
            row.image_id
            for row in store.rows_of_product(pid)
            if row.status != "missing" and row.ref not in item.skip
        }
        recorded.update(ImageRef(pid, i) for i in known)
        shown = item.listed.get(pid, frozenset()) if item.listed else frozenset()
        hidden = shown - returned if shown & returned else frozenset()
        if hidden:
            log.info(
                "item %d: the catalog listing shows pictures %s that catalog.productImage.list did not "
                "return; they are asked for one by one",
                pid,
                ", ".join(str(i) for i in sorted(hidden)[:10]) + (", ..." if len(hidden) > 10 else ""),
            )
        ask += [
            ref
            for ref in (ImageRef(pid, i) for i in sorted((known | hidden) - returned))
            if ref not in item.skip
        ]
    return frozenset(recorded), ask


def unpack(store: Store, item: list[ImageRef] | ProductChunk, result: dict[Any, Any] | Listed) -> Unpacked:
    """The refs and metadata of a fetched chunk. A product listing already holds every image's metadata and a
    fresh link, so its images need no ``get`` call of their own; the images it left out come with ``get``'s
    answers (gone: missing)."""
    if not isinstance(item, ProductChunk):
        assert not isinstance(result, Listed)
        return Unpacked(item, result)
    assert isinstance(result, Listed)
    unpacked = Unpacked([], {})
    found, extra = unpacked.found, unpacked.extra
    for pid, listing in result.listings.items():
        if isinstance(listing, DeadlineReached):
            unpacked.deadline_passed = True  # not listed: its images are left for the next run
            continue
        if isinstance(listing, ImageGone):
            # A deleted product is no failure: its recorded images are missing, their backups kept.
            gone = list(gone_product(store, pid, item.skip))
            if not gone:
                log.info("product %d is not found on the portal; nothing is recorded for it", pid)
            extra += gone
            continue
        if isinstance(listing, ImageError):
            extra.append(Plan(ImageRef(pid, 0), Action.FAILED, f"product {pid}: {listing.message}"))
            continue
        for image in listing.images:
            if image.ref not in item.skip and image.ref not in found:
                found[image.ref] = image
        if listing.problem:
            extra.append(Plan(ImageRef(pid, 0), Action.FAILED, f"product {pid}: {listing.problem}"))
    for ref, answer in result.asked.items():
        if ref in found or (isinstance(answer, ImageGone) and ref not in result.recorded):
            continue  # a picture the catalog listed, deleted since: nothing recorded, nothing to mark
        found[ref] = answer
    unpacked.refs = list(found)
    return unpacked
