"""Giving images back: ``catalog.productImage.add`` and ``.delete``, their faults, and the web tier's
request size limit.

:class:`ImageWrites` holds what the writes need beyond the catalog (the image id high-water mark, the
per-thread "drop this answer" flag); the portal's method table names its two handlers (:mod:`.images`),
:mod:`.rest` calls :meth:`ImageWrites.begin` / :meth:`ImageWrites.finish` around each REST answer, and the
portal calls :func:`too_large` before it handles a request. The behaviour is described in the package docstring
(:mod:`imgsync.emulator`), "Giving images back".
"""

from __future__ import annotations

import binascii
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .answers import ApiError, int_param
from .catalog import CatalogImage
from .server import Reply, Request

if TYPE_CHECKING:
    from .faults import Faults
    from .oauth import Cred
    from .portal import Portal

__all__ = [
    "ADD_OPERATING_S",
    "MORE_PHOTO_EXTENSIONS",
    "NGINX_413",
    "ImageWrites",
    "php_base64_decode",
    "sniff_image",
    "too_large",
]

#: Operating seconds one add costs by default: the docs' example add took ``processing`` 1.1 s.
ADD_OPERATING_S = 1.1
#: The extensions MORE_PHOTO accepts ([core25]: only the name's extension is checked).
MORE_PHOTO_EXTENSIONS = frozenset({"jpg", "bmp", "jpeg", "jpe", "gif", "png", "webp"})
SLOTS = ("DETAIL_PICTURE", "PREVIEW_PICTURE")
NGINX_413 = (
    b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    b"<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
    b"</html>\r\n"
)
_ADD = "catalog.productImage.add"
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NO_RIGHTS = 200040300020
_NOT_SAVED = "Could not save image."


def php_base64_decode(text: str) -> bytes:
    """PHP's ``base64_decode`` without ``strict``: characters outside the alphabet (spaces, line breaks, a
    ``+`` that became a space) are skipped, ``=`` anywhere is ignored, a lone last character is dropped.
    Never fails; what cannot be read gives fewer (or no) bytes."""
    data = text.encode("latin-1", "ignore")
    kept = bytes(c for c in data if c in _B64)
    kept = kept[: len(kept) - (len(kept) % 4 == 1)]
    try:
        return binascii.a2b_base64(kept + b"=" * (-len(kept) % 4))
    except binascii.Error:  # pragma: no cover - only alphabet characters remain
        return b""


def sniff_image(data: bytes) -> str | None:
    """The picture format the bytes start with (``jpeg``, ``png``, ``gif``, ``webp``, ``bmp``), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM" and len(data) >= 26:
        return "bmp"
    return None


def too_large(portal: Portal, request: Request) -> Reply | None:
    """nginx's 413 page when the request body exceeds ``portal.max_request_bytes`` (before the portal
    sees the request: no bucket, no ``stats.requests``; counted in ``stats.injected["413"]``)."""
    limit = portal.max_request_bytes
    if limit is None or len(request.body) <= limit:
        return None
    portal._inject("413")
    return Reply(413, NGINX_413, "text/html", delay=portal.latency)


def _error(code: int, text: str) -> ApiError:
    return ApiError(400, code, text)


class ImageWrites:
    """The add and delete methods of one portal. Catalog state is the portal's, under its state lock."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._last_id = 0  # the highest image id ever given out, so a deleted id is never reused
        self._local = threading.local()

    # ----------------------------------------------------------------- ids and test helpers

    def note_id(self, image_id: int) -> None:
        """An image with this id was stored (the portal's ``_insert``). Call with the state lock held."""
        self._last_id = max(self._last_id, image_id)

    def next_image_id(self) -> int:
        """A new image id: above every id that exists or ever existed (1000 on an empty portal), so a
        deleted or replaced image's id never comes back. Call with the state lock held."""
        self._last_id = max(self._last_id, 999) + 1
        return self._last_id

    def gallery(self, product_id: int) -> list[tuple[int, str, str]]:
        """``(image id, type, sha256 of the stored bytes)`` of each image of a product, by id."""
        portal = self._portal
        with portal._state_lock:
            stored = sorted(portal._products.get(product_id, {}).items())
            return [(iid, s.image.type, s.image.sha256) for iid, s in stored]

    # ----------------------------------------------------------------- per-request drop flag

    def begin(self) -> None:
        """A REST request starts on this thread: no answer is to be dropped yet."""
        self._local.drop = False

    def finish(self, reply: Reply) -> Reply:
        """The answer, or a dropped connection when an add of this request asked for it."""
        if getattr(self._local, "drop", False):
            self._local.drop = False
            return Reply(drop=True, delay=reply.delay)
        return reply

    def _take(self, faults: Faults, count: str, rate: str) -> bool:
        """A count-down fault (the next N adds) or else a rate fault; counted in ``stats.injected``."""
        portal = self._portal
        with portal._lock:
            left = getattr(faults, count)
            if left > 0:
                setattr(faults, count, left - 1)
                hit = True
            else:
                hit = faults.roll(getattr(faults, rate))
            if hit:
                portal._stats.injected[count] += 1
        return hit

    # ----------------------------------------------------------------- the methods

    def add(self, params: dict[str, Any], cred: Cred) -> tuple[Any, None]:
        """``catalog.productImage.add``: check, sleep ``slow_add``, store, count, answer ``productImage``."""
        portal = self._portal
        if not portal.admin:
            raise _error(_NO_RIGHTS, "Access Denied")
        fields = params.get("fields")
        content = params.get("fileContent")
        if not fields or not isinstance(fields, dict):
            raise _error(100, "Required parameter 'fields' is not specified")
        if not content or not isinstance(content, list | dict | str):
            raise _error(100, "Required parameter 'fileContent' is not specified")
        product_id = _product_id(fields.get("productId"))
        kind = str(fields.get("type") or "MORE_PHOTO")
        kind = kind if kind in SLOTS else "MORE_PHOTO"  # any other type, a typo included
        with portal._state_lock:
            exists = product_id in portal._items
            denied = product_id in portal._denied
        if denied:
            raise _error(_NO_RIGHTS, "Access Denied")
        if not exists:
            raise _error(0, "Product is not found")
        name, encoded = _file_content(content)
        if not name:
            raise _error(0, "The file name is not specified")
        if "/" in name or "\\" in name or "\0" in name:
            raise _error(0, "The file name contains invalid characters")
        if len(name) > 255:
            raise _error(0, "The file name is too long")
        sent = php_base64_decode(encoded) if isinstance(encoded, str) else b""
        if not sent:
            raise _error(0, _NOT_SAVED)
        if os.path.splitext(name)[1][1:].lower() not in MORE_PHOTO_EXTENSIONS:
            raise _error(0, "Invalid file type")
        if kind in SLOTS and sniff_image(sent) is None:
            raise _error(0, "Invalid file type: the file is not an image")

        faults = portal.faults
        if faults.slow_add > 0:
            portal._inject("slow_add")
            time.sleep(faults.slow_add)
        stored_bytes = sent
        if self._take(faults, "add_other_bytes", "rate_add_other_bytes"):
            stored_bytes = sent + b"\0"
        with portal._state_lock:
            if product_id not in portal._items:  # deleted while this add slept
                raise _error(0, "Product is not found")
            image_id = self.next_image_id()
            if kind in SLOTS:
                for old in [s for s in portal._products[product_id].values() if s.image.type == kind]:
                    portal._remove(product_id, old.image.image_id)
            portal._insert(CatalogImage(product_id, image_id, name, kind, stored_bytes))
            stored = portal._products[product_id][image_id]
        with portal._lock:
            portal._stats.adds += 1
            portal._stats.add_bytes += len(sent)
        portal._account(_ADD, portal.add_operating_s, time.time())
        if self._take(faults, "add_drop_answer", "rate_add_drop_answer"):
            self._local.drop = True
        return {"productImage": portal._image_json(stored, cred, None)}, None

    def delete(self, params: dict[str, Any], cred: Cred) -> tuple[Any, None]:
        """``catalog.productImage.delete``: ``true``, or the documented errors."""
        portal = self._portal
        if not portal.admin:
            raise _error(_NO_RIGHTS, "Access Denied")
        product_id = int_param(params, "productId")
        image_id = int_param(params, "id")
        with portal._state_lock:
            if product_id in portal._denied:
                raise _error(_NO_RIGHTS, "Access Denied")
            product = portal._products.get(product_id)
            if product_id not in portal._items or product is None:
                raise _error(0, "Product is not found")
            if image_id not in product:
                raise _error(0, "Image is not found")
            portal._remove(product_id, image_id)
        with portal._lock:
            portal._stats.deletes += 1
        return True, None


def _product_id(value: Any) -> int:
    if value is None or value == "" or isinstance(value, bool):
        raise _error(0, "Product identifier not specified")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _error(0, "Product identifier not specified") from None


def _file_content(content: Any) -> tuple[str, Any]:
    """``[name, base64]`` as a list, a PHP array with keys 0 and 1, or a bare string (no name)."""
    if isinstance(content, str):
        return "", content
    values = list(content.values()) if isinstance(content, dict) else list(content)
    name = values[0] if values and isinstance(values[0], str) else ""
    return name.strip(), values[1] if len(values) > 1 else None
