"""The one translation of botocore's, boto3's and s3transfer's errors into imgsync's (:class:`Translation`, which
:class:`~.uploader.S3Uploader` inherits): no ``botocore``/``boto3`` exception leaves the package, and only this
module imports their exception classes (the others take them from here).
"""

from __future__ import annotations

import enum
import os
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from boto3.exceptions import Boto3Error, S3UploadFailedError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from s3transfer import exceptions as transfer_errors

from ..errors import S3SetupError, UploadError
from ..redact import redact

__all__ = [
    "BOTO_ERRORS",
    "BotoCoreError",
    "ClientError",
    "Translation",
    "Why",
    "boto_text",
    "checksum_refused",
]

# Why a request failed, in words a user can act on. HEAD answers carry no body, so their code is the status.
_DENIED_CODES = {
    "AccessDenied": "access denied",
    "403": "access denied (HTTP 403)",
    "Forbidden": "access denied (HTTP 403)",
    "InvalidAccessKeyId": "the access key id is not known to the server",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "ExpiredToken": "the session token has expired",
    "TokenRefreshRequired": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "AllAccessDisabled": "all access to this bucket has been disabled",
    "AccountProblem": "the account has a problem that prevents access",
    "RequestTimeTooSkewed": "this machine's clock differs too much from the server's",
}
# botocore's names for where credentials came from, as a user would say it.
_CREDENTIAL_SOURCES = {
    "env": "from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY",
    "shared-credentials-file": "from ~/.aws/credentials",
    "config-file": "from ~/.aws/config",
    "iam-role": "from the instance role",
    "container-role": "from the container (task) role",
    "assume-role": "from an assumed role",
    "sso": "from AWS SSO",
}
_CONNECTION_ERRORS = (ConnectionError, HTTPClientError)
_TRANSFER_ERRORS = (
    Boto3Error,
    transfer_errors.RetriesExceededError,
    transfer_errors.S3UploadFailedError,
    transfer_errors.TransferNotDoneError,
    CancelledError,
)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, ProfileNotFound, CredentialRetrievalError)
#: What a store answers a checksum header it does not implement: R2 answers 501 NotImplemented (it keeps SHA-256
#: for multipart parts only), B2 "Unsupported header" (InvalidArgument), others InvalidRequest or a bare 400.
_CHECKSUM_REFUSED_CODES = {"NotImplemented", "InvalidRequest", "InvalidArgument", "501", "400"}


class Why(enum.Enum):
    """Why a botocore/boto3 request failed, as far as what a user must do differs."""

    PROFILE = "profile"  # AWS_PROFILE names a profile that is not there
    CREDENTIALS = "credentials"  # none found, or the source failed (an expired SSO login, a failing role)
    ENDPOINT = "endpoint"  # an endpoint URL botocore cannot use
    NO_BUCKET = "no bucket"
    NOT_FOUND = "not found"  # the object (or, for HeadBucket, the bucket: HEAD answers have no code)
    DENIED = "denied"
    WRONG_REGION = "wrong region"
    UNREACHABLE = "unreachable"
    OTHER = "other"


#: What ``_translate`` handles: botocore, boto3, and the transfer manager's own failures.
BOTO_ERRORS = (BotoCoreError, ClientError, *_TRANSFER_ERRORS)


def _error_code(exc: ClientError) -> tuple[str, str, int]:
    """``(code, message, http status)`` of a ClientError."""
    error = exc.response.get("Error") or {}
    status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return str(error.get("Code") or status or ""), str(error.get("Message") or ""), status


def _why(exc: BaseException) -> Why:
    if isinstance(exc, ProfileNotFound):
        return Why.PROFILE
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return Why.CREDENTIALS
    if isinstance(exc, _CONNECTION_ERRORS):
        return Why.UNREACHABLE
    if isinstance(exc, ValueError):
        return Why.ENDPOINT
    if not isinstance(exc, ClientError):
        return Why.OTHER
    code, _, status = _error_code(exc)
    if code == "NoSuchBucket":
        return Why.NO_BUCKET
    if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
        return Why.NOT_FOUND
    if status == 403 or code in _DENIED_CODES:
        return Why.DENIED
    if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
        return Why.WRONG_REGION
    return Why.OTHER


def checksum_refused(exc: BaseException) -> bool:
    """Did the store refuse the request for its checksum header (not for its bytes, nor its signature)?"""
    return isinstance(exc, ClientError) and _error_code(exc)[0] in _CHECKSUM_REFUSED_CODES


def boto_text(exc: BaseException) -> str:
    """A short, redacted description of a botocore/boto3 failure."""
    if isinstance(exc, ClientError):
        code, message, status = _error_code(exc)
        if code in _DENIED_CODES:
            text = _DENIED_CODES[code]
        elif code == "NoSuchBucket":
            text = "the bucket does not exist"
        else:
            text = f"{code}: {message}" if message and message != code else code or f"HTTP {status}"
    elif isinstance(exc, _CONNECTION_ERRORS):
        text = f"connection failed ({type(exc).__name__}: {exc})"
    elif isinstance(exc, _TRANSFER_ERRORS):
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = str(exc) or type(exc).__name__
    return redact(text)


class Translation:
    """What a failure means for this bucket; every ``except`` of the uploader ends in :meth:`_translate`."""

    bucket: str
    client: Any
    _session: Any

    if TYPE_CHECKING:

        @property
        def where(self) -> str: ...

        def _url(self, key: str) -> str: ...

    def _credential_source(self) -> str:
        """Where boto3 found the credentials, for messages (never the credentials themselves)."""
        if self._session is None:
            return "the credentials of the given client"
        try:
            creds = self._session.get_credentials()
        except BotoCoreError:
            return "the standard AWS chain"
        method = str(getattr(creds, "method", None) or "")
        profile = os.environ.get("AWS_PROFILE")
        source = _CREDENTIAL_SOURCES.get(method, f"credentials from {method or 'the standard AWS chain'}")
        return source + (f", profile '{profile}'" if profile and method not in ("env", "") else "")

    def _denied_reason(self) -> str | None:
        """HEAD answers have no body; a GET on the bucket tells *why* access was refused."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError as exc:
            return _DENIED_CODES.get(_error_code(exc)[0])
        except BOTO_ERRORS:
            return None
        return None

    # --- check ---
    # -- the one translation point -------------------------------------------------------------------
    def _translate(
        self,
        exc: BaseException,
        *,
        key: str | None = None,
        doing: str | None = None,
        credentials: bool = False,
    ) -> UploadError:
        """What a botocore/boto3 failure means here, as imgsync's error: every ``except`` in this class ends here.

        ``key``: an operation on that object failed; an :class:`UploadError` fails that image alone. Otherwise a
        step of the setup failed, an :class:`S3SetupError` that stops the run: exit 3 when the credentials are
        missing or refused, else 2. ``doing`` names the step (``"cannot list s3://b/p/"``); without it the step is
        the bucket check, whose messages say what to fix. ``credentials``: the step was loading them, so any
        failure is theirs (a timeout there is the instance role's endpoint, not S3's).
        """
        if isinstance(exc, S3UploadFailedError) and (exc.__cause__ or exc.__context__) is not None:
            exc = exc.__cause__ or exc.__context__  # boto3's wrapper repeats the path; the cause says more
        why = _why(exc)
        if credentials and why is not Why.PROFILE:  # a role's endpoint that times out is no S3 endpoint
            why = Why.CREDENTIALS
        text, bucket, where = boto_text(exc), self.bucket, self.where
        if key is not None:
            url = self._url(key)
            if why is Why.NO_BUCKET:
                return UploadError(f"{url}: bucket '{bucket}' does not exist at {where}")
            if why is Why.DENIED:
                return UploadError(redact(f"{url}: S3 at {where} refused access ({text})"))
            if why is Why.UNREACHABLE:
                return UploadError(redact(f"{url}: cannot reach S3 at {where} ({type(exc).__name__})"))
            return UploadError(redact(f"{url}: {text}"))
        exit_code = 3 if why in (Why.PROFILE, Why.CREDENTIALS, Why.DENIED) else 2
        if why is Why.PROFILE:
            message = f"{exc}: fix AWS_PROFILE or add the profile to ~/.aws/config"
        elif why is Why.ENDPOINT:
            message = f"S3 endpoint {where}: {exc}"
        elif why is Why.CREDENTIALS:
            message = f"cannot load AWS credentials for S3 bucket '{bucket}': {text}"
        elif doing is not None:
            message = f"{doing} at {where}: {text}"
        elif why in (Why.NO_BUCKET, Why.NOT_FOUND):
            message = (
                f"S3 bucket '{bucket}' does not exist at {where}: create it, or fix s3.bucket "
                "(--s3-bucket, IMGSYNC_S3_BUCKET)"
            )
        elif why is Why.DENIED:
            assert isinstance(exc, ClientError)
            code, _, status = _error_code(exc)
            reason = self._denied_reason() or _DENIED_CODES.get(code, f"access denied (HTTP {status})")
            message = (
                f"S3 refused access to bucket '{bucket}' at {where}: {reason}. Check the AWS credentials "
                f"({self._credential_source()}) and that they allow s3:ListBucket on the bucket"
            )
        elif why is Why.WRONG_REGION:
            message = (
                f"S3 bucket '{bucket}' is in another region than {where}: set AWS_DEFAULT_REGION (or the "
                "profile's region) to the bucket's region"
            )
        elif why is Why.UNREACHABLE:
            message = (
                f"cannot reach S3 at {where} (bucket '{bucket}'): {text}; check s3.endpoint_url "
                "and that the server is running"
            )
        else:
            message = f"S3 bucket '{bucket}' at {where} cannot be used: {text}"
        return S3SetupError(redact(message), exit_code=exit_code)
