"""The errors imgsync raises, each with the exit code the CLI turns it into.

::

    ImgsyncError                      exit 1   base class
    ├── UsageError                    exit 2   bad arguments, configuration or input; nothing fetched
    │   ├── ConfigError                        a config key or value is wrong
    │   ├── InputError                         a CSV line or pair argument is wrong (file:line)
    │   └── StateError                         the state database is unreadable or corrupt
    ├── AuthError                     exit 3   the portal refused the credentials or their scope
    ├── PortalUnavailable             exit 4   retries exhausted, or REST blocked (OVERLOAD_LIMIT)
    ├── AlreadyRunning                exit 75  another sync holds the database's lock
    ├── LocalStorageError             exit 1   dest cannot be written (disk full, read-only): the run stops
    ├── Interrupted                   exit 130 SIGINT/SIGTERM: the run stopped early
    ├── TransientError                         may be retried: rate limit, 5xx, dropped connection
    │   └── OperationTimeLimit                 429: wait for ``operating_reset_at``
    ├── TokenExpired                           OAuth access token expired: renew once, retry
    ├── ImageError                             one image failed; the run goes on
    │   ├── ImageGone                          the portal says the product or image is not found
    │   ├── ImageDenied                        no permission to read that product
    │   ├── LinkRefused                        a download link was refused (401/403/404): fetch anew
    │   └── DownloadFailed                     the download did not complete or did not verify
    └── UploadError                            one S3 upload failed; the run goes on
        └── S3SetupError          exit 2/3 the bucket is missing or the credentials are refused

Only the CLI turns these into exit codes and messages; no ``requests`` or ``botocore`` exception travels
past the module that made the call. Every message is built from already-redacted text.
"""

from __future__ import annotations


class ImgsyncError(Exception):
    """imgsync failed."""

    exit_code = 1

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


class AuthError(ImgsyncError):
    """The portal refused the credentials."""

    exit_code = 3


class PortalUnavailable(ImgsyncError):
    """The portal stayed unavailable."""

    exit_code = 4


class AlreadyRunning(ImgsyncError):
    """Another imgsync sync is running on this database."""

    exit_code = 75


class LocalStorageError(ImgsyncError):
    """The destination folder cannot be written."""


class Interrupted(ImgsyncError):
    """The run was interrupted."""

    exit_code = 130


class TransientError(ImgsyncError):
    """A temporary failure that may be retried."""

    def __init__(self, message: str | None = None, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class OperationTimeLimit(TransientError):
    """The portal's per-method time limit was reached (OPERATION_TIME_LIMIT)."""

    def __init__(self, message: str | None = None, *, reset_at: float | None = None) -> None:
        super().__init__(message, code="OPERATION_TIME_LIMIT", status=429)
        self.reset_at = reset_at


class TokenExpired(ImgsyncError):
    """The OAuth access token expired."""


class ImageError(ImgsyncError):
    """An image could not be backed up."""


class ImageGone(ImageError):
    """The portal says the image no longer exists."""


class ImageDenied(ImageError):
    """Access to the product was denied."""


class LinkRefused(ImageError):
    """The download link was refused."""


class DownloadFailed(ImageError):
    """The download failed."""


class UploadError(ImgsyncError):
    """The upload to S3 failed."""


class S3SetupError(UploadError):
    """S3 cannot be used with these settings."""

    def __init__(self, message: str | None = None, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
