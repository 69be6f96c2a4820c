"""The emulated catalog: product images with deterministic content."""

from __future__ import annotations

import hashlib
import os
import random
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property

__all__ = ["CatalogImage", "content_type_for", "make_catalog", "random_detail_url", "PORTAL_TZ"]

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
# File signatures, so the sample files look like what their names say.
_JPEG_HEAD, _JPEG_TAIL = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\xff\xd9"
_PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def content_type_for(name: str) -> str:
    """The MIME type the portal sends for a file called ``name`` (by its extension)."""
    ext = os.path.splitext(name)[1].lower()
    return _CONTENT_TYPES.get(ext, "application/octet-stream")


def random_detail_url(name: str, rng: random.Random | None = None) -> str:
    """A ``detailUrl`` as the portal makes them: ``/upload/iblock/<3 hex>/<32 alnum>/<name>``."""
    r = rng or random.SystemRandom()
    folder = "".join(r.choice(_ALNUM) for _ in range(32))
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


def _fake_image(rng: random.Random, size: int, ext: str) -> bytes:
    """``size`` random bytes that start (and, for JPEG, end) like a real file of that type."""
    head, tail = (_PNG_HEAD, b"") if ext == ".png" else (_JPEG_HEAD, _JPEG_TAIL)
    if size < len(head) + len(tail):
        return rng.randbytes(size)
    return head + rng.randbytes(size - len(head) - len(tail)) + tail


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
    name is ``photo-<image id>.jpg`` for even ids and ``.png`` for odd ones. Sizes are uniform in
    ``[min_size, max_size]``.
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
            ext = ".jpg" if image_id % 2 == 0 else ".png"
            name = f"photo-{image_id}{ext}"
            created = base + timedelta(seconds=rng.randrange(300 * 86400))
            images.append(
                CatalogImage(
                    product_id=first_product_id + p,
                    image_id=image_id,
                    name=name,
                    type="DETAIL_PICTURE" if k % 2 == 0 else "MORE_PHOTO",
                    content=_fake_image(rng, rng.randint(min_size, max_size), ext),
                    create_time=created.isoformat(),
                    detail_url=random_detail_url(name, rng),
                )
            )
            image_id += 1
    return images
