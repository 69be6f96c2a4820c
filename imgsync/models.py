"""Small value types shared by every layer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum


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
class ImageUpload:
    """One image to add to a product (``catalog.productImage.add``): where, which slot, name and bytes."""

    product_id: int
    type: str  # DETAIL_PICTURE, PREVIEW_PICTURE or MORE_PHOTO
    name: str
    content: bytes = field(repr=False)

    @property
    def encoded_size(self) -> int:
        """Bytes of base64 this add carries."""
        return 4 * ((len(self.content) + 2) // 3)


class StopRequest(threading.Event):
    """A request to stop the run (a signal), carrying the exit code the process will end with.

    A second signal stops the run at once (:meth:`interrupt` raises ``KeyboardInterrupt`` in the main thread),
    except inside :meth:`critical`: a commit of what finished is never cut short, the interrupt waits for it.
    """

    exit_code: int = 130

    def __init__(self) -> None:
        super().__init__()
        self._critical = 0  # critical sections open in the main thread (where signal handlers run)
        self._deferred = False

    def request(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self.set()

    def interrupt(self) -> None:
        """Stop at once: ``KeyboardInterrupt`` now, or at the end of the critical section under way."""
        if self._critical:
            self._deferred = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def critical(self, *, reraise: bool = True) -> Iterator[None]:
        """A section that a second signal must not cut short (writing the rows of finished work).

        An interrupt that came meanwhile is raised as it ends (``reraise=False``: dropped, for the run's
        last bookkeeping, after which it is stopping anyway). Other threads pass straight through: signal
        handlers run in the main thread only.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._deferred:
            self._deferred = False
            if reraise:
                raise KeyboardInterrupt


class Action(StrEnum):
    """What the plan does with one image (and what ``--dry-run`` prints)."""

    DOWNLOAD = "download"
    UPLOAD = "upload"
    UNCHANGED = "unchanged"
    MISSING = "missing"
    FAILED = "failed"


@dataclass(frozen=True)
class S3Object:
    """The object a backup was uploaded to, as recorded: its key, ETag and the sha256 sent beside it."""

    key: str
    etag: str | None
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD of an S3 object tells: the sha256 imgsync wrote beside it (None when absent), its size, ETag,
    content type and user metadata (keys lower-cased)."""

    sha256: str | None
    size: int
    etag: str | None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: The skip rule's fields (name, type, createTime, detailUrl) the metadata records, decoded; None if not.
    fingerprint: tuple[str, str, str, str] | None = None
    #: The store's own SHA-256 checksum of the bytes (base64; ``<value>-<parts>`` for a multipart object), as
    #: verified when they were uploaded; None when the object was sent without one or the store keeps none.
    checksum_sha256: str | None = None

    def same_bytes(self, sha256: str | None, size: int | None) -> bool:
        """Is this object the backup of a file with this sha256 and size? The one answer to that question."""
        return sha256 is not None and self.sha256 == sha256 and self.size == size

    def backs_up(self, sha256: str | None, size: int | None, image: PortalImage | None) -> bool:
        """The same bytes, and (given the image) the skip rule's fields in its metadata, so that
        ``imgsync rebuild --from-s3`` can restore the row from it. An object uploaded before imgsync wrote
        them does not count: it is sent again, with them."""
        return self.same_bytes(sha256, size) and (image is None or self.fingerprint == image.fingerprint())


@dataclass(frozen=True)
class StoredImage:
    """One row of the state: what was last seen of an image and where its backup is.

    ``local_path`` is relative to dest and ``s3`` the recorded object, each None when there is no such backup.
    """

    product_id: int
    image_id: int
    name: str = ""
    type: str = ""
    create_time: str = ""
    detail_url: str = ""
    sha256: str | None = None
    size: int | None = None
    content_type: str | None = None
    local_path: str | None = None
    s3: S3Object | None = None
    status: str = ""
    error: str | None = None
    first_synced_at: str | None = None
    last_checked_at: str | None = None
    last_changed_at: str | None = None

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.product_id, self.image_id)

    def fingerprint(self) -> tuple[str, str, str, str]:
        """The recorded fields of the skip rule, to compare with :meth:`PortalImage.fingerprint`."""
        return (self.name, self.type, self.create_time, self.detail_url)


class Event(StrEnum):
    """What a run did with an image, as the ``events`` table names it."""

    DOWNLOADED = "downloaded"
    UNCHANGED = "unchanged"
    UPLOADED = "uploaded"
    MISSING = "missing"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What happened to one image in a run: the one thing the pipeline hands the store to record.

    - ``DOWNLOADED``: ``image`` (the metadata seen), ``sha256``/``size``/``content_type`` of the file now in
      place, ``local_path`` (None once it was removed after an upload), ``changed`` when the bytes differ
      from the recorded ones;
    - ``UNCHANGED``: the backup stands (``local_path`` None with ``clear_local``: removed after an upload);
    - ``MISSING``: gone upstream, the backup kept; ``FAILED``: not backed up this run, ``detail`` says why.

    ``s3`` is the object it was (found or) uploaded to, ``uploaded`` when it was sent this run, and
    ``upload_error`` when that failed: the image is then failed too. ``remove_after`` lists files (relative
    to dest) the new row supersedes: the pipeline removes them once the row is committed.
    """

    ref: ImageRef
    event: Event
    detail: str = ""
    image: PortalImage | None = None
    sha256: str | None = None
    size: int | None = None
    content_type: str | None = None
    local_path: str | None = None
    changed: bool = False
    clear_local: bool = False
    s3: S3Object | None = None
    uploaded: bool = False
    upload_error: str | None = None
    remove_after: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.event == Event.FAILED or self.upload_error is not None

    @property
    def reason(self) -> str:
        """Why the image failed, or the detail."""
        return f"upload failed: {self.upload_error}" if self.upload_error else self.detail


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
    restored_as: int | None = None  # the new image id an ``imgsync restore`` put back in its place
    restored_at: str | None = None


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


# --- the whole catalog (``sync --all``; see imgsync/bitrix/catalog.py) ----------------------------------------


@dataclass(frozen=True)
class ListedItem:
    """One item of a trade catalog as ``catalog.product.list`` shows it.

    ``type`` as the docs number it (simple 1, set 2, parent 3/6, variation 4/5, service 7; 0 when the
    listing did not say); ``parent_id`` is a variation's parent product. ``picture_ids`` are the sorted ids
    of its ``detailPicture``, ``previewPicture`` and MORE_PHOTO values. Whether these equal the image ids of
    ``catalog.productImage.list`` is not documented (see ``catalog.id_mismatches``).

    ``xml_id``, ``code``, ``name``: the item's external code, symbolic code and name as listed (``""`` when
    the listing showed none, None when it was not asked): the keys that map it to an item of another portal
    (``restore --match``). They do not take part in comparisons: an item is its id and pictures.
    """

    id: int
    iblock_id: int
    type: int = 0
    parent_id: int | None = None
    picture_ids: tuple[int, ...] = ()
    xml_id: str | None = field(default=None, compare=False, repr=False)
    code: str | None = field(default=None, compare=False, repr=False)
    name: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ProductKeys:
    """The keys the ``products`` table recorded for an item: its external code (``xml_id``), symbolic code
    and name as the last listing showed them (``""``: none; None: no listing recorded them)."""

    product_id: int
    xml_id: str | None
    code: str | None
    name: str | None
    status: str = ""


@dataclass(frozen=True)
class RestoreEntry:
    """One row of the ``restores`` journal: an add that a restore sent (``state`` sent, done or failed)."""

    id: int
    product_id: int  # the source image, by the ids it had when it was backed up
    image_id: int
    target_product_id: int
    sha256: str
    type: str
    name: str
    state: str
    sent_at: str
    new_image_id: int | None = None
    error: str | None = None

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.product_id, self.image_id)
