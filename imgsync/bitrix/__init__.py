"""The portal: everything imgsync says to Bitrix24 and how it understands the answers.

Data flows one way through the files of this package::

    images / files / catalog   what to ask: catalog.productImage.*, the download links, the whole catalog
        -> batch                up to 50 commands in one request, each answered (or failed) alone
        -> transport            the one request path and the one retry loop: pacing, auth, redirects, parsing
        -> errors               the portal's codes and ``requests``' exceptions become :mod:`imgsync.errors`

``pacing`` (the leaky bucket, the operating-time budget, the retry policy) and ``auth`` (webhook, OAuth
renewal, a moved portal) serve the transport. :class:`Client` (``client``) is the one public class; no
``requests`` exception leaves this package. ``catalog`` (the ``sync --all`` listing) is imported as
``imgsync.bitrix.catalog``.
"""

from __future__ import annotations

from .auth import USER_AGENT, Auth, OAuth, WebhookAuth
from .batch import Answer
from .client import Client
from .errors import DENIED, UNREACHABLE, classify
from .files import NOT_THE_FILE_ATTEMPTS, Body, not_the_file
from .images import MAX_LIST_PAGES, Listing
from .pacing import BATCH_SIZE, HEADROOM, LeakyBucket, OperatingBudget, RetryPolicy
from .transport import UNREACHABLE_ATTEMPTS, refuse_downgrade

__all__ = [
    "BATCH_SIZE",
    "DENIED",
    "HEADROOM",
    "MAX_LIST_PAGES",
    "NOT_THE_FILE_ATTEMPTS",
    "UNREACHABLE",
    "UNREACHABLE_ATTEMPTS",
    "USER_AGENT",
    "Answer",
    "Auth",
    "Body",
    "Client",
    "LeakyBucket",
    "Listing",
    "OAuth",
    "OperatingBudget",
    "RetryPolicy",
    "WebhookAuth",
    "classify",
    "not_the_file",
    "refuse_downgrade",
]
