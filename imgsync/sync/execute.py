"""The executors: what each planned action does. Each returns an :class:`~imgsync.models.Outcome`, which
only the pipeline hands to the store (rows are written after the file is in place).

:meth:`Executor.download` (then the upload, when S3 is on), :meth:`Executor.upload_only` (the local file is
current, S3 is not), :meth:`Executor.ensure_uploaded` (the object is asked before anything is sent), and
:func:`immediate` for the actions that need no transfer (unchanged, missing, failed).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..bitrix import Body, Client
from ..errors import DeadlineReached, DownloadFailed, ImageGone, ImgsyncError, LocalFileChanged, UploadError
from ..localfs import relative_path, resolve_inside, save_stream
from ..models import Action, Event, Outcome, PortalImage, S3Object, StoredImage
from ..store import Store
from .caps import Caps
from .plan import Plan, SyncOptions, inside_dest

log = logging.getLogger(__name__)


def immediate(plan: Plan) -> Outcome:
    """unchanged, missing and failed need no download: just the row and the event."""
    if plan.action == Action.UNCHANGED:
        return Outcome(plan.ref, Event.UNCHANGED)
    if plan.action == Action.MISSING:
        return Outcome(plan.ref, Event.MISSING, plan.reason)
    # A product that could not be listed (image id 0) has no row: its event says what happened.
    return Outcome(plan.ref, Event.FAILED, plan.reason)


def from_error(plan: Plan, exc: ImgsyncError) -> Outcome:
    """What a transfer that raised records: gone upstream is missing (the backup kept), the rest failed."""
    if isinstance(exc, ImageGone):
        return Outcome(plan.ref, Event.MISSING, "gone upstream; the backup is kept")
    return Outcome(plan.ref, Event.FAILED, exc.message)


class Executor:
    """Runs the transfers of one sync (in the pipeline's worker threads); everything it needs is passed in."""

    def __init__(self, client: Client, store: Store, opts: SyncOptions, caps: Caps) -> None:
        self.client = client
        self.store = store
        self.opts = opts
        self.caps = caps

    def download(self, plan: Plan) -> Outcome:
        """Download one image (the client fetches fresh links and retries), then upload it if S3 is on."""
        assert plan.image is not None
        ref = plan.ref
        marked = False

        def write(image: PortalImage, body: Body) -> tuple[int, str, str]:
            nonlocal marked
            relative = relative_path(ref, image.name)
            target = resolve_inside(self.opts.dest, relative)
            if not marked and not self.opts.dry_run and self.replaces_backup(plan.row, relative):
                # Only now, with the file's bytes arriving, does this download go over the backup its ok
                # row describes: the row stops claiming it first (a kill between the rename and the row's
                # commit would leave it describing bytes that are gone). Deferred work is never marked.
                self.store.mark_replacing([ref])
                marked = True
            size, sha256 = save_stream(body.chunks(), target, expected_size=body.content_length)
            return size, sha256, body.content_type

        image, (size, sha256, content_type) = self.client.download(plan.image, write)
        # The link fetched last may name the image anew (renamed meanwhile): the file is where it says.
        relative = plan.relative if image.name == plan.image.name else relative_path(ref, image.name)
        assert relative is not None
        log.info("downloaded %s (%d bytes, %s)", ref, size, plan.reason)
        row = plan.row
        outcome = Outcome(
            ref,
            Event.DOWNLOADED,
            f"{size} bytes, {plan.reason}",
            image=image,
            sha256=sha256,
            size=size,
            content_type=content_type or None,
            local_path=relative,
            changed=row is None or row.sha256 != sha256,
        )
        if self.opts.uploader is not None:
            key = self.opts.uploader.key_for(relative)
            try:
                outcome = self.ensure_uploaded(
                    outcome, resolve_inside(self.opts.dest, relative), key, row, image
                )
            except LocalFileChanged as exc:  # changed on disk since it was written: no backup, none claimed
                outcome = replace(outcome, local_path=None, upload_error=exc.message)
        if row is not None and row.local_path and row.local_path != relative and not outcome.failed:
            # Replaced under a new name: the new file supersedes the old one, which goes once the new row
            # is committed (see Syncer._flush), never while the old row still names it.
            outcome = replace(outcome, remove_after=(*outcome.remove_after, row.local_path))
        return outcome

    def upload_only(self, plan: Plan) -> Outcome:
        """The local file is current but S3 is not: upload without downloading.

        The file is hashed as it is read for the upload; one that no longer holds the recorded bytes (same size,
        other content) is not uploaded: the image is downloaded again, or, when that fails, its row fails and
        stops naming the file."""
        row = plan.row
        assert row is not None and row.local_path and plan.s3_key is not None
        path = inside_dest(self.opts.dest, row.local_path)
        if path is None:
            raise DownloadFailed(f"the recorded path {row.local_path!r} is outside the destination folder")
        outcome = Outcome(
            plan.ref,
            Event.UNCHANGED,
            plan.reason,
            sha256=row.sha256,
            size=row.size,
            local_path=row.local_path,
        )
        try:
            return self.ensure_uploaded(outcome, path, plan.s3_key, row, plan.image)
        except LocalFileChanged as exc:
            damaged = exc.message
        log.warning("%s: the local file is damaged, downloading it again: %s", plan.ref, damaged)
        # Whatever happens next, the row stops naming a file that does not hold its bytes.
        failed = replace(outcome, local_path=None, clear_local=True)
        cap = self.caps.check()
        if cap is not None:
            return replace(failed, upload_error=f"{damaged}; not downloaded again ({cap} reached)")
        self.caps.download_started()
        try:
            return self.download(replace(plan, action=Action.DOWNLOAD, reason="local file damaged"))
        except DeadlineReached:
            cap = self.caps.check() or self.caps.duration()
            return replace(failed, upload_error=f"{damaged}; not downloaded again ({cap} reached)")
        except ImgsyncError as exc:
            if exc.fatal or isinstance(exc, ImageGone):
                raise
            return replace(failed, upload_error=f"{damaged}; downloading it again failed: {exc.message}")

    def ensure_uploaded(
        self, outcome: Outcome, path: Path, key: str, row: StoredImage | None, image: PortalImage | None
    ) -> Outcome:
        """Put the file in S3 unless its bytes are known to be there already; the outcome says what happened.

        The database's record of the object is not enough (the local file may come back after a repair, and
        ``keep_local = false`` removes it next): the object is asked (a HEAD). One whose bytes the store's
        checksum shows to be these is kept; when its metadata holds older skip-rule fields than ``image``'s, a
        server-side copy brings them up to date. Anything else is uploaded. Raises :class:`LocalFileChanged`
        when the file does not hold ``outcome.sha256``."""
        uploader = self.opts.uploader
        assert uploader is not None and outcome.sha256 is not None and outcome.size is not None
        sha256, size = outcome.sha256, outcome.size
        force = self.opts.force and outcome.event == Event.DOWNLOADED
        content_type = outcome.content_type or (row.content_type if row else None)
        content_type = content_type or "application/octet-stream"
        try:
            found = None if force else uploader.head(key)
            if found is not None and uploader.holds(found, path, sha256, size):
                etag = found.etag
                if image is not None and found.fingerprint != image.fingerprint():
                    etag = uploader.refresh(
                        key,
                        found,
                        sha256=sha256,
                        size=size,
                        content_type=content_type,
                        ref=outcome.ref,
                        image=image,
                        path=path,
                    )
                    log.info("%s: metadata of %s brought up to date", outcome.ref, key)
                s3, sent = S3Object(key, etag, sha256), False
            else:
                etag = uploader.put(
                    path,
                    key,
                    sha256=sha256,
                    size=size,
                    content_type=content_type,
                    ref=outcome.ref,
                    image=image,
                )
                s3, sent = S3Object(key, etag, sha256), True
        except LocalFileChanged:
            raise
        except UploadError as exc:
            return replace(outcome, upload_error=exc.message)
        outcome = replace(outcome, s3=s3, uploaded=sent)
        if not self.opts.keep_local:
            # Removed after the commit (see Syncer._flush): the old row may still name this file until then.
            assert outcome.local_path is not None
            outcome = replace(
                outcome,
                remove_after=(*outcome.remove_after, outcome.local_path),
                local_path=None,
                clear_local=True,
            )
        return outcome

    def replaces_backup(self, row: StoredImage | None, relative: str) -> bool:
        """Will a download to ``relative`` land on the file, or S3 object, that the ``ok`` row describes?"""
        if row is None or row.status != "ok":
            return False
        if row.local_path == relative:
            return True
        uploader = self.opts.uploader
        return row.s3 is not None and uploader is not None and row.s3.key == uploader.key_for(relative)
