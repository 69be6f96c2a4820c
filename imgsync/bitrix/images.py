"""The image methods: ``catalog.productImage.get`` for many (``get_images``), ``.list`` page by page
(``list_images``) and ``.add`` sent once (``add_images``)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..errors import (
    DeadlineReached,
    ImageError,
    ImgsyncError,
    SendUnknown,
    TransientError,
)
from ..models import ImageRef, ImageUpload, PortalImage
from ..redact import redact
from .batch import BatchCalls, _as_image_error, _section
from .errors import _NOT_RUN
from .pacing import BATCH_SIZE

log = logging.getLogger(__name__)

#: A product with more images than this many pages is used as listed, and nothing is inferred from it.
MAX_LIST_PAGES = 20


@dataclass(frozen=True)
class Listing:
    """The images a product listing showed; ``complete`` is false when pages are known to be missing."""

    images: tuple[PortalImage, ...]
    complete: bool = True
    #: Why an image of the answer was left out (an id that is no number): that image fails.
    problem: str = ""


class ImageCalls(BatchCalls):
    # -- catalog methods ----------------------------------------------------------------------------
    def get_images(self, refs: Sequence[ImageRef]) -> dict[ImageRef, PortalImage | ImageError]:
        """``catalog.productImage.get`` for up to 50 images in one ``batch``; errors stay per image."""
        commands = {
            f"i{n}": f"catalog.productImage.get?productId={ref.product_id}&id={ref.image_id}"
            for n, ref in enumerate(refs)
        }
        by_key = dict(zip(commands, refs, strict=True))
        out: dict[ImageRef, PortalImage | ImageError] = {}
        for key, answer in self.batch(commands).items():
            ref = by_key[key]
            if isinstance(answer.value, ImageError):
                out[ref] = answer.value
            else:
                try:
                    out[ref] = _image_from_result(answer.value, ref)
                except ImageError as exc:
                    out[ref] = exc
        return out

    def list_images(self, product_ids: Sequence[int]) -> dict[int, Listing | ImageError]:
        """Every image of up to 50 products: ``catalog.productImage.list`` commands in ``batch`` calls.

        A product whose answer says there is more (``next``) is asked again from there until it is
        complete; a listing that could not be completed comes back with ``complete=False``, so nothing is
        concluded from what it does not show.
        """
        out: dict[int, Listing | ImageError] = {}
        collected: dict[int, list[PortalImage]] = {pid: [] for pid in dict.fromkeys(product_ids)}
        problems: dict[int, str] = {}
        start: dict[int, int] = dict.fromkeys(collected, 0)
        stalled: set[int] = set()  # a next that brought the same page again: the rest is unknown
        for _page in range(MAX_LIST_PAGES):
            if not start:
                break
            commands = {
                f"p{n}": f"catalog.productImage.list?productId={pid}" + (f"&start={at}" if at else "")
                for n, (pid, at) in enumerate(start.items())
            }
            by_key = dict(zip(commands, start, strict=True))
            try:
                answers = self.batch(commands)
            except DeadlineReached:
                if _page == 0:
                    raise
                break  # the pages still to read stay unread: those listings are incomplete
            asked, start = start, {}
            for key, answer in answers.items():
                pid = by_key[key]
                if isinstance(answer.value, ImageError):
                    out[pid] = answer.value
                    continue
                items = answer.value.get("productImages") if isinstance(answer.value, dict) else None
                if not isinstance(items, list):
                    out[pid] = ImageError("catalog.productImage.list: unexpected answer")
                    continue
                known = {image.image_id for image in collected[pid]}
                fresh: list[PortalImage] = []
                for item in items:
                    if not isinstance(item, dict):
                        continue
                    try:
                        image = PortalImage.from_api(item, ImageRef(pid, 0))
                    except (TypeError, ValueError):
                        # An image the answer does not identify fails alone; the others are used.
                        problems[pid] = (
                            f"catalog.productImage.list answered an image with the id {_shown(item)}"
                        )
                        continue
                    if image.image_id not in known:
                        fresh.append(image)
                collected[pid] += fresh
                if answer.next and items:
                    if not fresh or answer.next <= asked[pid]:
                        # The portal does not page this method as asked: the same page came again. Asking
                        # on would bring it MAX_LIST_PAGES times; what lies beyond it is unknown.
                        log.info(
                            "product %d: catalog.productImage.list answered the same page again for start=%d; "
                            "its listing is incomplete (what it leaves out is asked for by id)",
                            pid,
                            asked[pid],
                        )
                        stalled.add(pid)
                    else:
                        start[pid] = answer.next
        for pid, images in collected.items():
            if pid not in out:
                # Still pages to read after MAX_LIST_PAGES: use what came, infer nothing from the rest.
                # An image left out (not identified) makes the listing incomplete too: nothing is inferred.
                out[pid] = Listing(
                    tuple(images),
                    complete=pid not in start and pid not in stalled and pid not in problems,
                    problem=problems.get(pid, ""),
                )
        return out

    # -- adds: sent once ------------------------------------------------------------------------------
    def add_images(self, adds: Sequence[ImageUpload]) -> list[PortalImage | ImgsyncError]:
        """``catalog.productImage.add`` for each of ``adds``, in ONE request: a direct call for one, else
        ``batch`` commands (in order: the portal runs a batch's commands one after another), whose
        parameters travel as a URL-encoded query string (notes §15).

        Returns, per add in order, the new image (its new id, the name the portal gave it, a fresh link)
        or the error: an :class:`ImageError` the portal answered (nothing was added), or a
        :class:`TransientError` that proves the command was not run (it may be sent again). The request
        is never sent twice: without a sure answer it raises :class:`SendUnknown`, and the adds may have
        happened. Waits for the add method's operating-time budget first, as every call does.
        """
        if not adds or len(adds) > BATCH_SIZE:
            raise ValueError(f"add_images takes 1 to {BATCH_SIZE} adds, got {len(adds)}")
        method = "catalog.productImage.add"
        if len(adds) == 1:
            add = adds[0]
            try:
                data = self.call(method, _add_params(add), once=True)
            except ImageError as exc:
                return [exc]
            except TransientError as exc:  # proven not run, and out of attempts
                return [exc]
            return [_added_image(data.get("result"), add)]
        commands = {f"a{n}": f"{method}?{urlencode(_flat(_add_params(add)))}" for n, add in enumerate(adds)}
        with self.operating.reserve({method: len(adds)}, self._sleep):
            data = self.call("batch", {"halt": 0, "cmd": commands}, once=True)
        result = data.get("result")
        results, errors = _section(result, "result"), _section(result, "result_error")
        for timing in _section(result, "result_time").values():
            self.operating.note(method, timing)
        out: list[PortalImage | ImgsyncError] = []
        for key, add in zip(commands, adds, strict=True):
            if key in errors:
                err = self.command_error(errors[key], data)
                if err.fatal:
                    raise err
                if isinstance(err, TransientError) and err.code.upper() not in _NOT_RUN:
                    # e.g. INTERNAL_SERVER_ERROR inside the batch: the add may have been made.
                    raise SendUnknown(f"{method} in a batch: {err.message}; it may have been run")
                out.append(err if isinstance(err, TransientError) else _as_image_error(err))
            elif key in results:
                out.append(_added_image(results[key], add))
            else:
                raise SendUnknown(f"{method} in a batch: the answer says nothing of command {key}")
        return out


def _add_params(add: ImageUpload) -> dict[str, Any]:
    encoded = base64.b64encode(add.content).decode("ascii")
    return {"fields": {"productId": add.product_id, "type": add.type}, "fileContent": [add.name, encoded]}


def _flat(params: Mapping[Any, Any], prefix: str = "") -> list[tuple[str, str]]:
    """PHP-style query pairs (``fields[productId]=12``, ``fileContent[0]=a.png``) of nested params."""
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            out += _flat(value, name)
        elif isinstance(value, list | tuple):
            out += _flat(dict(enumerate(value)), name)
        else:
            out.append((name, str(value)))
    return out


def _added_image(result: Any, add: ImageUpload) -> PortalImage | ImgsyncError:
    item = result.get("productImage") if isinstance(result, dict) else None
    if not isinstance(item, dict):
        return SendUnknown(
            "catalog.productImage.add: an answer without the new image; it may have been added"
        )
    try:
        image = PortalImage.from_api(item, ImageRef(add.product_id, 0))
    except (TypeError, ValueError):
        return SendUnknown(
            "catalog.productImage.add: an answer with a malformed image; it may have been added"
        )
    if not image.image_id:
        return SendUnknown("catalog.productImage.add: an answer without the new image's id")
    return image


def _image_from_result(result: Any, ref: ImageRef) -> PortalImage:
    item = result.get("productImage") if isinstance(result, dict) else None
    if not isinstance(item, dict):
        raise ImageError("catalog.productImage.get: unexpected answer")
    try:
        image = PortalImage.from_api(item, ref)
    except (TypeError, ValueError):
        raise ImageError(f"catalog.productImage.get answered the image with the id {_shown(item)}") from None
    if (image.product_id, image.image_id) != (ref.product_id, ref.image_id):
        raise ImageError(f"the portal answered for image {image.product_id}:{image.image_id}, asked {ref}")
    return image


def _shown(item: Mapping[str, Any]) -> str:
    """An answer's ``productId``/``id`` pair for a message, short and without control characters."""
    text = f"{item.get('productId')!r}:{item.get('id')!r}"
    return redact("".join(c for c in text if c.isprintable())[:80])
