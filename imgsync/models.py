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


@dataclass(frozen=True)
class S3Backup:
    """One image as an S3 object's metadata records it: what ``imgsync rebuild --from-s3`` restores its row from.

    ``last_modified``: the object's LastModified (ISO 8601, UTC); ``local_path``: the file under dest, when it
    is there with ``size`` bytes.
    """

    ref: ImageRef
    name: str
    type: str
    create_time: str
    detail_url: str
    sha256: str
    size: int
    content_type: str | None
    s3_key: str
    s3_etag: str
    last_modified: str
    local_path: str | None = None
