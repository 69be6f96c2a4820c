"""Small value types shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class ImageRef:
    """One product image, as the user names it: ``PRODUCT_ID:IMAGE_ID``."""

    product_id: int
    image_id: int

    def __str__(self) -> str:
        return f"{self.product_id}:{self.image_id}"


@dataclass(frozen=True)
class PortalImage:
    """What ``catalog.productImage.get`` says about one image.

    ``download_url`` is a secret (it carries a credential) and differs on every call: it is kept out of
    ``repr`` and is never used to decide anything.
    """

    product_id: int
    image_id: int
    name: str
    type: str
    create_time: str
    detail_url: str
    download_url: str = field(repr=False, compare=False)

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.product_id, self.image_id)

    def fingerprint(self) -> tuple[str, str, str, str]:
        """The fields that decide whether an image changed (the contract's skip rule)."""
        return (self.name, self.type, self.create_time, self.detail_url)

    @classmethod
    def from_api(cls, data: dict, ref: ImageRef | None = None) -> PortalImage:
        """Build from a ``productImage`` object; ``ref`` fills ids the portal left out."""
        product_id = int(data.get("productId") or (ref.product_id if ref else 0))
        image_id = int(data.get("id") or (ref.image_id if ref else 0))
        return cls(
            product_id=product_id,
            image_id=image_id,
            name=str(data.get("name") or ""),
            type=str(data.get("type") or ""),
            create_time=str(data.get("createTime") or ""),
            detail_url=str(data.get("detailUrl") or ""),
            download_url=str(data.get("downloadUrl") or ""),
        )


# --- what the report reads (see the ``# --- report queries ---`` block of ``Store``) ------------------------


@dataclass(frozen=True)
class BackupTotals:
    """How much is backed up: files recorded on local disk and objects recorded in S3, with their bytes."""

    local_files: int
    local_bytes: int
    s3_objects: int
    s3_bytes: int


@dataclass(frozen=True)
class RunStats:
    """One row of ``runs``; counts are 0 and times ``None`` where a run did not record them."""

    id: int
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    requested: int
    downloaded: int
    unchanged: int
    uploaded: int
    missing: int
    failed: int
    duration_s: float | None
    error: str | None


@dataclass(frozen=True)
class ImageState:
    """What the report shows of one image row: a failed or missing one, or a recently changed one."""

    product_id: int
    image_id: int
    name: str | None
    status: str
    error: str | None
    size: int | None
    sha256: str | None
    local_path: str | None
    s3_key: str | None
    last_checked_at: str | None
    last_changed_at: str | None


# --- the whole catalog (``sync --all``; see imgsync/catalog.py) -----------------------------------------------


@dataclass(frozen=True)
class ListedItem:
    """One item of a trade catalog as ``catalog.product.list`` shows it.

    ``type`` as the docs number it (simple 1, set 2, parent 3/6, variation 4/5, service 7; 0 when the
    listing did not say); ``parent_id`` is a variation's parent product. ``picture_ids`` are the sorted ids
    of its ``detailPicture``, ``previewPicture`` and MORE_PHOTO values. Whether these equal the image ids of
    ``catalog.productImage.list`` is not documented (see ``catalog.id_mismatches``).
    """

    id: int
    iblock_id: int
    type: int = 0
    parent_id: int | None = None
    picture_ids: tuple[int, ...] = ()
