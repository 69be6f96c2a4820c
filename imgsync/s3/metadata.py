"""The object's user metadata: ``sha256``, the product and image ids, and the skip rule's fields (percent-encoded,
since metadata is ASCII), so that ``imgsync rebuild --from-s3`` can restore a row from the bucket alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import quote, unquote

from ..models import ImageRef, PortalImage

__all__ = [
    "METADATA_LIMIT",
    "SKIP_METADATA_KEYS",
    "decode_skip_fields",
    "encode_skip_fields",
    "fingerprint_of",
    "object_metadata",
]

log = logging.getLogger("imgsync.s3")

#: The metadata keys that hold what the skip rule compares, in the order of ``PortalImage.fingerprint()``.
SKIP_METADATA_KEYS = ("name", "type", "create-time", "detail-url")
#: S3 refuses a PUT whose user metadata (keys and values) exceeds 2 KiB.
METADATA_LIMIT = 2048


def encode_skip_fields(name: str, type: str, create_time: str, detail_url: str) -> dict[str, str]:
    """The skip rule's fields as S3 user metadata: each percent-encoded UTF-8, since metadata is ASCII."""
    values = (name, type, create_time, detail_url)
    return {key: quote(value, safe="") for key, value in zip(SKIP_METADATA_KEYS, values, strict=True)}


def decode_skip_fields(metadata: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    """``(name, type, create_time, detail_url)`` from an object's metadata, or None when it holds none of them
    (uploaded before imgsync wrote them). Raises :class:`ValueError` when they are there but damaged: some
    missing, or not the percent-encoded UTF-8 that :func:`encode_skip_fields` writes."""
    present = [key for key in SKIP_METADATA_KEYS if key in metadata]
    if not present:
        return None
    if len(present) != len(SKIP_METADATA_KEYS):
        missing = [key for key in SKIP_METADATA_KEYS if key not in metadata]
        raise ValueError(f"metadata {', '.join(missing)} missing")
    values = []
    for key in SKIP_METADATA_KEYS:
        raw = metadata[key]
        try:
            value = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"metadata {key} is not percent-encoded UTF-8") from None
        if quote(value, safe="") != raw:  # a stray "%", a raw space: not what imgsync writes
            raise ValueError(f"metadata {key} is not percent-encoded UTF-8")
        values.append(value)
    return values[0], values[1], values[2], values[3]


def object_metadata(sha256: str, ref: ImageRef, image: PortalImage | None = None) -> dict[str, str]:
    """The user metadata of an uploaded object: ``sha256``, ``product-id``, ``image-id`` and, with ``image``,
    the skip rule's fields, so that ``imgsync rebuild --from-s3`` can restore the row.

    Fields too long for S3's 2 KiB limit are left out (the object is then reported by ``rebuild``, not lost).
    """
    metadata = {"sha256": sha256, "product-id": str(ref.product_id), "image-id": str(ref.image_id)}
    if image is not None:
        skip = encode_skip_fields(*image.fingerprint())
        size = sum(len(k) + len(v) for k, v in {**metadata, **skip}.items())
        if size <= METADATA_LIMIT:
            metadata.update(skip)
        else:
            log.warning("%s: name and detailUrl too long for S3 metadata (%d bytes); not stored", ref, size)
    return metadata


def fingerprint_of(metadata: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    """The skip rule's fields an object records, or None when it records none (or damaged ones)."""
    try:
        return decode_skip_fields(metadata)
    except ValueError:
        return None
