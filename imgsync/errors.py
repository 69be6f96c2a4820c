"""The errors imgsync raises, each with the exit code the CLI turns it into.

::

    ImgsyncError                      exit 1   base class
    ├── UsageError                    exit 2   bad arguments, configuration or input; nothing fetched
    │   ├── ConfigError                        a config key or value is wrong
    │   ├── InputError                         a CSV line or pair argument is wrong (file:line)
    │   └── StateError                         the state database is unreadable or corrupt
    │   └── PortalAddressError                 the portal's address cannot work (TLS mismatch, no such host)
    ├── AuthError                     exit 3   the portal refused the credentials or their scope
    ├── PortalUnavailable             exit 4   retries exhausted, or REST blocked (OVERLOAD_LIMIT)
    ├── AlreadyRunning                exit 75  another sync holds the database's lock
    ├── LocalStorageError             exit 1   dest cannot be written (disk full, read-only): the run stops
    ├── Interrupted                   exit 130 SIGINT/SIGTERM: the run stopped early
    ├── InternalError                 exit 70  a defect of imgsync: what finished is recorded
    ├── TransientError                         may be retried: rate limit, 5xx, dropped connection, not JSON
    │   ├── NotTheFile                         a download answered a page or an error, not the file
    │   └── OperationTimeLimit                 429: wait for ``operating_reset_at``
    ├── TokenExpired                           OAuth access token expired: renew once, retry
    ├── RequestTooLarge                        HTTP 413: the request was not run; send less at once
    ├── SendUnknown                            a request that changes the portal got no sure answer: it
    │                                          may have been run; never sent again blindly (look first)
    ├── ImageError                             one image failed; the run goes on
    │   ├── ImageGone                          the portal says the product or image is not found
    │   ├── ImageDenied                        no permission to read that product
    │   ├── LinkRefused                        a download link was refused (401/403/404): fetch anew
    │   ├── DownloadFailed                     the download did not complete or did not verify
    │   └── DeadlineReached                    --max-duration passed while the request waited: not sent,
    │                                          the image is deferred (never a failure)
    └── UploadError                            one S3 upload failed; the run goes on
        ├── LocalFileChanged                   the file is not the recorded bytes: not uploaded
        └── S3SetupError          exit 2/3 the bucket is missing or the credentials are refused

Each class carries the decision about it, so no caller keeps a list of classes: ``fatal`` (the run stops:
configuration, credentials, an unavailable portal, a full disk, a stop request) or not (one image fails and the
run goes on), and ``retryable`` (the same request may succeed later) with ``retry_after``, the seconds the portal
asked to wait (``operating_reset_at``), when it said so.

Only the CLI turns these into exit codes and messages; no ``requests`` or ``botocore`` exception travels
past the module that made the call. Every message is built from already-redacted text.
"""

from __future__ import annotations

from typing import Any


class ImgsyncError(Exception):
    """imgsync failed."""

    exit_code = 1
    #: The run cannot go on: the pipeline stops and raises it (after recording what finished).
    fatal = True
    #: The same request may succeed if sent again (after ``retry_after`` seconds, or a backoff).
    retryable = False

    #: What the run had done when this stopped it (set by the pipeline for the CLI's summary).
    summary: Any = None

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(ImgsyncError):
    """Bad usage."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration is not valid."""


class InputError(UsageError):
    """An input line is not valid."""


class StateError(UsageError):
    """The state database cannot be used."""


class PortalAddressError(ConfigError):
    """The portal's address cannot work as configured."""


class AuthError(ImgsyncError):
    """The portal refused the credentials."""

    exit_code = 3


class PortalUnavailable(ImgsyncError):
    """The portal stayed unavailable."""

    exit_code = 4


class AlreadyRunning(ImgsyncError):
    """Another imgsync sync is running on this database."""

    exit_code = 75


class InternalError(ImgsyncError):
    """imgsync failed: this is a defect, please report it."""

    exit_code = 70


class LocalStorageError(ImgsyncError):
    """The destination folder cannot be written."""


class Interrupted(ImgsyncError):
    """The run was interrupted."""

    exit_code = 130


class TransientError(ImgsyncError):
    """A temporary failure that may be retried."""

    fatal = False
    retryable = True

    def __init__(self, message: str | None = None, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def bucket_full(self) -> bool:
        """The portal refused the request because its leaky bucket is full (503 QUERY_LIMIT_EXCEEDED)."""
        return self.code.upper() == "QUERY_LIMIT_EXCEEDED"

    @property
    def link_spent(self) -> bool:
        """The failure may have used up a one-time download link: fetch a new one before retrying."""
        return not self.bucket_full

    def retry_after(self, now: float) -> float | None:
        """Seconds the portal asked to wait, or None for an ordinary backoff."""
        return None


class NotTheFile(TransientError):
    """A download answered something that is not the file (an HTML page, a JSON error)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, code="NOT_THE_FILE")


class OperationTimeLimit(TransientError):
    """The portal's per-method time limit was reached (OPERATION_TIME_LIMIT)."""

    def __init__(self, message: str | None = None, *, reset_at: float | None = None) -> None:
        super().__init__(message, code="OPERATION_TIME_LIMIT", status=429)
        self.reset_at = reset_at

    @property
    def link_spent(self) -> bool:
        return False

    def retry_after(self, now: float) -> float | None:
        if self.reset_at and self.reset_at > now:
            return self.reset_at - now + 0.2
        return None


class TokenExpired(ImgsyncError):
    """The OAuth access token expired."""

    fatal = False
    retryable = True  # once, after the token is renewed


class SendUnknown(ImgsyncError):
    """A request that changes the portal (an add) got no sure answer: it may have been run. It is never
    sent again as it is; the caller looks at the portal first."""

    fatal = False
    retryable = False


class RequestTooLarge(ImgsyncError):
    """The web tier refused a request as too large (HTTP 413): it was not run; send less in one request."""

    fatal = False
    retryable = False


class ImageError(ImgsyncError):
    """An image could not be backed up."""

    fatal = False


class ImageGone(ImageError):
    """The portal says the image no longer exists."""


class ImageDenied(ImageError):
    """Access to the product was denied."""


class LinkRefused(ImageError):
    """The download link was refused."""


class DownloadFailed(ImageError):
    """The download failed."""


class DeadlineReached(ImageError):
    """The run's deadline (--max-duration) passed while a request waited for its turn: it was not sent.

    Not a failure: the work it belonged to is deferred to the next run. An :class:`ImageError` so that, as the
    answer of one command of a batch, it stays with that command's image."""


class UploadError(ImgsyncError):
    """The upload to S3 failed."""

    fatal = False


class LocalFileChanged(UploadError):
    """The local file does not hold the bytes the database records (damaged, or changed behind imgsync's back):
    it is not uploaded."""


class S3SetupError(UploadError):
    """S3 cannot be used with these settings."""

    fatal = True

    def __init__(self, message: str | None = None, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
