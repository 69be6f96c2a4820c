"""The emulated catalog: product images with deterministic content."""

from __future__ import annotations

import colorsys
import hashlib
import io
import os
import random
import string
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any

__all__ = [
    "CatalogImage",
    "CatalogItem",
    "content_type_for",
    "make_catalog",
    "make_store_catalog",
    "random_detail_url",
    "PORTAL_TZ",
]

#: The portal's time zone, as in the docs' examples ("2024-10-17T10:48:05+02:00").
PORTAL_TZ = timezone(timedelta(hours=2))

_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".svg": "image/svg+xml",
}
_ALNUM = string.ascii_lowercase + string.digits


def content_type_for(name: str) -> str:
    """The MIME type the portal sends for a file called ``name`` (by its extension)."""
    ext = os.path.splitext(name)[1].lower()
    return _CONTENT_TYPES.get(ext, "application/octet-stream")


def random_detail_url(name: str, rng: random.Random | None = None) -> str:
    """A ``detailUrl`` as the portal makes them: ``/upload/iblock/<3 hex>/<32 alnum>/<name>``."""
    r = rng or random.SystemRandom()
    folder = "".join(r.choices(_ALNUM, k=32))
    return f"/upload/iblock/{r.getrandbits(12):03x}/{folder}/{name}"


@dataclass(frozen=True)
class CatalogImage:
    """One product image held by the emulated portal.

    Empty ``content_type``, ``create_time`` and ``detail_url`` are filled in: the type from the name's
    extension, the time with "now" in the portal's zone, the URL with a fresh random folder.
    """

    product_id: int
    image_id: int
    name: str
    type: str = "MORE_PHOTO"
    content: bytes = field(default=b"", repr=False)
    create_time: str = ""
    detail_url: str = ""
    content_type: str = ""

    def __post_init__(self) -> None:
        if not self.content_type:
            object.__setattr__(self, "content_type", content_type_for(self.name))
        if not self.create_time:
            now = datetime.now(PORTAL_TZ).replace(microsecond=0)
            object.__setattr__(self, "create_time", now.isoformat())
        if not self.detail_url:
            object.__setattr__(self, "detail_url", random_detail_url(self.name))

    @property
    def size(self) -> int:
        return len(self.content)

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of ``content``."""
        return hashlib.sha256(self.content).hexdigest()


# ----------------------------------------------------------------- sample pictures
#
# Real, decodable pictures: a gradient in a colour taken from the image id, with a lighter disc, rendered
# once per (format, hue, side) and cached; each file is then padded to its chosen size with bytes that
# decoders skip (a JPEG COM segment, a private ancillary PNG chunk, an unknown chunk of an extended-format
# WebP), beginning with ``imgsync image <id>`` and then seeded random bytes, so every file is distinct.

_SIDES = (8, 16, 32, 64, 128, 256)
_HUES = 24
_TAG = b"imgsync image %d;"
_JPEG_OVERHEAD, _PNG_OVERHEAD, _WEBP_OVERHEAD = 4, 12, 26
_COM_MAX = 65533  # payload bytes of one JPEG COM segment
_render_cache: dict[tuple[str, int, int], bytes] = {}
_tiny_cache: dict[str, bytes] = {}


def _ext_for(image_id: int) -> str:
    """The sample file type of an image id: ``.webp`` when id % 4 == 3, else ``.png`` for odd, ``.jpg``."""
    if image_id % 4 == 3:
        return ".webp"
    return ".png" if image_id % 2 else ".jpg"


def _encode(image: Any, ext: str) -> bytes:
    out = io.BytesIO()
    if ext == ".jpg":
        image.save(out, "JPEG", quality=85)
    elif ext == ".png":
        image.save(out, "PNG", compress_level=6)
    else:
        image.save(out, "WEBP", quality=80)
    return out.getvalue()


def _render(ext: str, hue: int, side: int) -> bytes:
    """A ``side`` x ``side`` picture of one hue (cached)."""
    key = (ext, hue, side)
    found = _render_cache.get(key)
    if found is None:
        from PIL import Image, ImageDraw, ImageOps

        r, g, b = (round(c * 255) for c in colorsys.hsv_to_rgb(hue / _HUES, 0.75, 0.95))
        ramp = Image.linear_gradient("L").rotate(45).resize((side, side))
        picture = ImageOps.colorize(ramp, black=(r // 4, g // 4, b // 4), white=(r, g, b))
        m = side // 4
        ImageDraw.Draw(picture).ellipse(
            (m, m, side - m, side - m), fill=((r + 255) // 2, (g + 255) // 2, (b + 255) // 2)
        )
        found = _render_cache[key] = _encode(picture, ext)
    return found


def _tiny(ext: str) -> bytes:
    """The smallest picture of a type the emulator makes (1x1; a JPEG without its JFIF segment)."""
    found = _tiny_cache.get(ext)
    if found is None:
        from PIL import Image

        out = io.BytesIO()
        if ext == ".jpg":
            Image.new("L", (1, 1), 128).save(out, "JPEG", quality=1, optimize=True)
            data = out.getvalue()
            if data[2:4] == b"\xff\xe0":  # drop APP0 (JFIF): decoders do not need it
                data = data[:2] + data[4 + int.from_bytes(data[4:6], "big") :]
        else:
            Image.new("RGB", (1, 1), (200, 60, 60)).save(
                out, "PNG" if ext == ".png" else "WEBP", lossless=True
            )
            data = out.getvalue()
        found = _tiny_cache[ext] = data
    return found


def _pad(base: bytes, ext: str, payload: bytes, side: int) -> bytes:
    """``base`` (``side`` pixels square) with ``payload`` where decoders skip it (adds the format's overhead)."""
    if ext == ".jpg":
        at = 2
        if base[2:4] == b"\xff\xe0":  # after SOI and the JFIF segment, which must come first
            at = 4 + int.from_bytes(base[4:6], "big")
        segments = [
            b"\xff\xfe" + (len(part) + 2).to_bytes(2, "big") + part
            for part in (payload[i : i + _COM_MAX] for i in range(0, max(len(payload), 1), _COM_MAX))
        ]
        return base[:at] + b"".join(segments) + base[at:]
    if ext == ".png":
        kind = b"imGs"  # ancillary, private, reserved bit clear, safe to copy
        chunk = len(payload).to_bytes(4, "big") + kind + payload
        chunk += zlib.crc32(kind + payload).to_bytes(4, "big")
        return base[:-12] + chunk + base[-12:]  # before IEND
    # WebP: the simple file becomes an extended one (VP8X, no feature flags) with an unknown chunk.
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + b"\0\0\0\0" + (side - 1).to_bytes(3, "little") * 2
    chunk = b"IMGS" + len(payload).to_bytes(4, "little") + payload + b"\0" * (len(payload) & 1)
    body = b"WEBP" + vp8x + base[12:] + chunk
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def sample_picture(
    image_id: int, ext: str, size: int, rng: random.Random, min_size: int, max_size: int
) -> bytes:
    """A real picture of type ``ext`` for ``image_id``, ``size`` bytes long where the format allows.

    The largest cached render that fits is padded to ``size``. When even the smallest picture (1x1, about
    150 bytes for JPEG, 90 for PNG, 70 for WebP, padding tag included) is bigger, that one is used and
    the file is bigger than ``size``. A WebP is always even-sized (RIFF chunks are): an odd ``size``
    becomes ``size - 1`` or ``size + 1`` within [min_size, max_size], or, when neither fits, keeps one
    byte after the RIFF container (which decoders ignore).
    """
    tag = _TAG % image_id
    overhead = {".jpg": _JPEG_OVERHEAD, ".png": _PNG_OVERHEAD, ".webp": _WEBP_OVERHEAD}[ext]
    trailing = b""
    if ext == ".webp" and size % 2:
        if size - 1 >= min_size:
            size -= 1
        elif size + 1 <= max_size:
            size += 1
        else:
            size -= 1
            trailing = b"\0"
    hue = image_id % _HUES
    base, side = _tiny(ext), 1
    for candidate_side in _SIDES:
        candidate = _render(ext, hue, candidate_side)
        if len(candidate) + overhead + len(tag) > size:
            break
        base, side = candidate, candidate_side
    need = max(len(tag), size - len(base) - overhead)
    if ext == ".jpg" and need > _COM_MAX:
        need -= 4 * ((need - 1) // (_COM_MAX + 4))  # each further COM segment costs 4 bytes
    payload = tag + rng.randbytes(need - len(tag))
    out = _pad(base, ext, payload, side)
    if ext == ".webp" and len(out) < size:  # an odd payload took a RIFF pad byte
        out = _pad(base, ext, payload + b"\0", side)
    return out + trailing


def make_catalog(
    products: int = 10,
    images_per_product: int = 3,
    min_size: int = 1000,
    max_size: int = 20000,
    seed: int = 1,
    *,
    first_product_id: int = 100,
    first_image_id: int = 1000,
) -> list[CatalogImage]:
    """A sample catalog, the same for the same arguments.

    Product ids start at ``first_product_id``; image ids are unique across the catalog and increase from
    ``first_image_id``. Within a product the type alternates ``DETAIL_PICTURE``, ``MORE_PHOTO``, ...; the
    name is ``photo-<image id>.webp`` for ids with id % 4 == 3, else ``.png`` for odd ids and ``.jpg`` for
    even ones. The content is a real picture of that type (see :func:`sample_picture`; Pillow opens and
    loads it) whose size is uniform in ``[min_size, max_size]``, except that no file is smaller than the
    smallest picture of its type (about 150 bytes).
    """
    if products < 0 or images_per_product < 0:
        raise ValueError("products and images_per_product must not be negative")
    if not 0 <= min_size <= max_size:
        raise ValueError("need 0 <= min_size <= max_size")
    rng = random.Random(seed)
    base = datetime(2024, 10, 17, 10, 48, 5, tzinfo=PORTAL_TZ)
    images: list[CatalogImage] = []
    image_id = first_image_id
    for p in range(products):
        for k in range(images_per_product):
            ext = _ext_for(image_id)
            name = f"photo-{image_id}{ext}"
            created = base + timedelta(seconds=rng.randrange(300 * 86400))
            images.append(
                CatalogImage(
                    product_id=first_product_id + p,
                    image_id=image_id,
                    name=name,
                    type="DETAIL_PICTURE" if k % 2 == 0 else "MORE_PHOTO",
                    content=sample_picture(
                        image_id, ext, rng.randint(min_size, max_size), rng, min_size, max_size
                    ),
                    create_time=created.isoformat(),
                    detail_url=random_detail_url(name, rng),
                )
            )
            image_id += 1
    return images


# ----------------------------------------------------------------- the whole catalog

#: The trade catalogs of the emulated portal: products (and sets, parents, services) and variations.
PRODUCT_IBLOCK_ID = 23
OFFER_IBLOCK_ID = 25
#: The variation catalog's property that links a variation to its parent (``skuPropertyId``).
SKU_PROPERTY_ID = 97
#: The MORE_PHOTO file property of each catalog (``property<N>`` in listings).
MORE_PHOTO_PROPERTY_ID = {PRODUCT_IBLOCK_ID: 120, OFFER_IBLOCK_ID: 121}

#: Item types as the docs number them.
SIMPLE, SET, SKU, OFFER, FREE_OFFER, EMPTY_SKU, SERVICE = 1, 2, 3, 4, 5, 6, 7
_TYPE_NAMES = {
    1: "Product",
    2: "Set",
    3: "Parent product",
    4: "Variation",
    5: "Variation",
    6: "Parent",
    7: "Service",
}


@dataclass(frozen=True)
class CatalogItem:
    """One element of a trade catalog: a product, set, parent, variation or service.

    ``iblock_id`` 0 means "from the type": variations (4, 5) live in the variation catalog, everything
    else in the product catalog. A variation (4) names its ``parent_id``. ``xml_id`` ("External code")
    and ``code`` ("Symbolic code"), None for the portal's defaults: ``XML_ID`` is the element's own id
    when none was set (notes §15), and the emulator's ``code`` is ``item-<id>``.
    """

    id: int
    type: int = SIMPLE
    name: str = ""
    iblock_id: int = 0
    parent_id: int | None = None
    xml_id: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise ValueError(f"unknown item type {self.type}")
        if not self.iblock_id:
            iblock = OFFER_IBLOCK_ID if self.type in (OFFER, FREE_OFFER) else PRODUCT_IBLOCK_ID
            object.__setattr__(self, "iblock_id", iblock)
        if not self.name:
            object.__setattr__(self, "name", f"{_TYPE_NAMES[self.type]} {self.id}")


def make_store_catalog(
    products: int = 10,
    *,
    sets: int = 0,
    parents: int = 0,
    variations_per_parent: int = 2,
    services: int = 0,
    images_per_item: int = 2,
    min_size: int = 1000,
    max_size: int = 20000,
    seed: int = 1,
    first_item_id: int = 100,
    first_image_id: int = 1000,
) -> tuple[list[CatalogItem], list[CatalogImage]]:
    """A whole catalog, the same for the same arguments: ``(items, images)`` for ``Portal(images, items=...)``.

    Item ids increase from ``first_item_id`` in this order: ``products`` simple products, ``sets`` sets,
    ``parents`` parent products each followed by its ``variations_per_parent`` variations (a parent with
    none is type 6, "empty"), then ``services``. Every item, parents and variations included, gets
    ``images_per_item`` pictures: the first is its ``DETAIL_PICTURE``, the second its ``PREVIEW_PICTURE``,
    the rest ``MORE_PHOTO``; contents as in :func:`make_catalog`.
    """
    if min(products, sets, parents, variations_per_parent, services, images_per_item) < 0:
        raise ValueError("counts must not be negative")
    if not 0 <= min_size <= max_size:
        raise ValueError("need 0 <= min_size <= max_size")
    items: list[CatalogItem] = []
    ids = iter(range(first_item_id, 1 << 62))
    items += [CatalogItem(next(ids), SIMPLE) for _ in range(products)]
    items += [CatalogItem(next(ids), SET) for _ in range(sets)]
    for _ in range(parents):
        parent = CatalogItem(next(ids), SKU if variations_per_parent else EMPTY_SKU)
        items.append(parent)
        items += [CatalogItem(next(ids), OFFER, parent_id=parent.id) for _ in range(variations_per_parent)]
    items += [CatalogItem(next(ids), SERVICE) for _ in range(services)]

    rng = random.Random(seed)
    base = datetime(2024, 10, 17, 10, 48, 5, tzinfo=PORTAL_TZ)
    images: list[CatalogImage] = []
    image_id = first_image_id
    for item in items:
        for k in range(images_per_item):
            ext = _ext_for(image_id)
            name = f"photo-{image_id}{ext}"
            created = base + timedelta(seconds=rng.randrange(300 * 86400))
            images.append(
                CatalogImage(
                    product_id=item.id,
                    image_id=image_id,
                    name=name,
                    type=("DETAIL_PICTURE", "PREVIEW_PICTURE")[k] if k < 2 else "MORE_PHOTO",
                    content=sample_picture(
                        image_id, ext, rng.randint(min_size, max_size), rng, min_size, max_size
                    ),
                    create_time=created.isoformat(),
                    detail_url=random_detail_url(name, rng),
                )
            )
            image_id += 1
    return items, images
