"""The plan: what to do with each image, and why (the skip rule). Pure but for a stat of the local file.

:func:`decide` turns one image's answer from the portal and its stored row into a :class:`Plan`; a dry run
prints the plans, a real run hands them to :mod:`imgsync.sync.execute`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import DownloadFailed, ImageError, ImageGone
from ..localfs import NotPlain, file_matches, relative_path, resolve_inside, size_inside
from ..models import Action, ImageRef, ObjectInfo, PortalImage, StoredImage


class Uploader(Protocol):
    """What the sync needs of an S3 store (implemented by :mod:`imgsync.s3`)."""

    def check(self) -> None:
        """Raise :class:`~imgsync.errors.S3SetupError` when the bucket or credentials cannot work."""

    def key_for(self, relative: str) -> str: ...

    def head(self, key: str) -> ObjectInfo | None:
        """What the object is (its sha256 metadata, size, ETag), or None when it does not exist."""

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
    ) -> str:
        """Upload a file that is hashed as it is read and checked by the store (with ``image``'s skip-rule
        fields in the metadata); return the ETag. Raises :class:`~imgsync.errors.LocalFileChanged` when the
        file does not hold ``sha256``, :class:`~imgsync.errors.UploadError` otherwise."""
        ...

    def holds(self, found: ObjectInfo, path: Path | None, sha256: str, size: int) -> bool:
        """Are ``found``'s bytes known (by the checksum the store verified) to be these?"""
        ...

    def refresh(
        self,
        key: str,
        found: ObjectInfo,
        *,
        sha256: str,
        size: int,
        content_type: str,
        ref: ImageRef,
        image: PortalImage,
        path: Path | None = None,
    ) -> str:
        """Replace the object's metadata with ``image``'s by a server-side copy; return the ETag."""
        ...


@dataclass
class SyncOptions:
    dest: Path
    force: bool = False
    dry_run: bool = False
    workers: int = 4
    keep_local: bool = True
    uploader: Uploader | None = None
    #: Caps (None: none). At a cap the run takes no new work, finishes what is in flight and exits 5.
    max_duration_s: float | None = None
    max_downloads: int | None = None
    max_bytes: int | None = None
    _root: str | None = field(default=None, init=False, repr=False, compare=False)

    def dest_root(self) -> str:
        """``dest``, resolved once per run (the skip rule checks every image's file under it)."""
        if self._root is None:
            self._root = str(self.dest.resolve())
        return self._root


@dataclass(frozen=True)
class Plan:
    """The decision for one image, with the reason a person reads in ``--dry-run``.

    ``relative`` (the file under dest) and ``s3_key`` are computed once, from the image as the portal
    names it now, for the executors to use as they are.
    """

    ref: ImageRef
    action: Action
    reason: str
    image: PortalImage | None = None
    row: StoredImage | None = None
    relative: str | None = None
    s3_key: str | None = None

    @property
    def name(self) -> str:
        return self.image.name if self.image else (self.row.name if self.row else "")

    def as_json(self) -> dict[str, Any]:
        return {
            "product_id": self.ref.product_id,
            "image_id": self.ref.image_id,
            "action": str(self.action),
            "reason": self.reason,
            "name": self.name,
        }


def decide(
    ref: ImageRef, found: PortalImage | ImageError, row: StoredImage | None, opts: SyncOptions
) -> Plan:
    """The contract's skip rule, for one image. Pure but for a stat of the local file."""
    if isinstance(found, ImageGone):
        reason = "gone upstream; the backup is kept" if row and row.sha256 else "not found on the portal"
        return Plan(ref, Action.MISSING, reason, None, row)
    if isinstance(found, ImageError):
        return Plan(ref, Action.FAILED, found.message, None, row)
    image = found
    relative = relative_path(ref, image.name)
    key = opts.uploader.key_for(relative) if opts.uploader is not None else None

    def plan(action: Action, reason: str) -> Plan:
        return Plan(ref, action, reason, image, row, relative, key)

    if row is None or not row.sha256:
        return plan(Action.DOWNLOAD, "new")
    if opts.force:
        return plan(Action.DOWNLOAD, "forced")
    changed = [
        label
        for label, old, new in zip(
            ("name", "type", "createTime", "detailUrl"), row.fingerprint(), image.fingerprint(), strict=True
        )
        if old != new
    ]
    if changed:
        return plan(Action.DOWNLOAD, "changed: " + ", ".join(changed))
    local, in_s3 = backup_state(row, key, opts)
    if opts.keep_local and not local:
        return plan(Action.DOWNLOAD, "local file missing or of another size")
    if opts.uploader is not None and not in_s3:
        if local:
            return plan(Action.UPLOAD, "not in S3 yet")
        return plan(Action.DOWNLOAD, "not in S3 and no local copy")
    if not opts.keep_local and not local and not in_s3:
        return plan(Action.DOWNLOAD, "no backup present")
    return plan(Action.UNCHANGED, "unchanged")


def backup_state(row: StoredImage, key: str | None, opts: SyncOptions) -> tuple[bool, bool]:
    """(the local file is there with the recorded size, the recorded S3 object is the one at ``key``)."""
    local = _local_present(opts, row.local_path, row.size)
    in_s3 = row.s3 is not None and row.s3.sha256 == row.sha256 and row.s3.key == key
    return local, in_s3


def _local_present(opts: SyncOptions, relative: str | None, size: int | None) -> bool:
    """The row's local file is there under dest with the recorded size (``file_matches(inside_dest(...))``)."""
    if size is None or not relative or not isinstance(relative, str):
        return False
    try:
        return size_inside(opts.dest_root(), relative) == size
    except NotPlain:
        local_file = inside_dest(opts.dest, relative)
        return local_file is not None and file_matches(local_file, size)


def backed_up_as_recorded(row: StoredImage, opts: SyncOptions) -> bool:
    """The skip rule's half that needs no metadata: the row is ``ok`` and its backup is present. For an
    item whose listing shows exactly its recorded pictures (``sync --all``), that is all there is to check."""
    if row.status != "ok" or not row.sha256:
        return False
    key = opts.uploader.key_for(relative_path(row.ref, row.name)) if opts.uploader is not None else None
    local, in_s3 = backup_state(row, key, opts)
    if opts.keep_local and not local:
        return False
    if opts.uploader is not None and not in_s3:
        return False
    return local or in_s3


def inside_dest(dest: Path, relative: Any) -> Path | None:
    """The file a row's ``local_path`` names, or None when there is none or it would lie outside dest.

    Paths read back from the database pass here: a damaged row must not make a sync read or delete
    anything outside dest.
    """
    if not relative or not isinstance(relative, str):
        return None
    try:
        return resolve_inside(dest, relative)
    except DownloadFailed:
        return None
