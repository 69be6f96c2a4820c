"""The one public client: the transport with its REST calls, batches, image methods and downloads."""

from __future__ import annotations

from .files import Downloads
from .images import ImageCalls


class Client(Downloads, ImageCalls):
    """The portal client. Thread-safe: one instance serves every worker of a run.

    Composed of the layers of this package, each in its own file: :class:`~.transport.Transport` (the one
    request path: pacing, the one retry loop, redirects, answers parsed), :class:`~.batch.BatchCalls`
    (``batch``), :class:`~.images.ImageCalls` (``get_images``, ``list_images``, ``add_images``) and
    :class:`~.files.Downloads` (``download`` with fresh links). Each error says whether it may be retried
    and when (:mod:`imgsync.errors`); the transport asks it, waits through one stop-aware sleep, and gives
    up with :class:`~imgsync.errors.PortalUnavailable` after ``retry.attempts``.
    """
