"""S3 and S3-compatible storage: upload only what changed, with the content's sha256 in the object's metadata.

:class:`S3Uploader` is what :class:`imgsync.sync.Syncer` calls (the ``Uploader`` protocol): ``check()`` once
before anything is downloaded, ``head()`` to learn what an object holds, ``holds()`` to tell whether those are
known to be a file's bytes, ``put()`` to upload a file and ``refresh()`` to bring an object's metadata up to date
with a server-side copy. One boto3 client serves every worker thread (clients are thread-safe; sessions are not,
so the session is private to the uploader).

S3 holds only checked bytes: ``put()`` hashes the file as it reads it for the upload and sends nothing whose
SHA-256 is not the recorded one (:class:`~imgsync.errors.LocalFileChanged`). Each request carries the SHA-256
checksum of its body (``x-amz-checksum-sha256``; per part for a multipart upload, which is completed only once
the whole file's hash is known to be right), so the store refuses bytes damaged on the way and keeps the
checksum, which ``head()`` reads back. A store that refuses the checksum header (Cloudflare R2 for single
uploads, Backblaze B2, older gateways) is sent ``Content-MD5`` instead, from then on, with a warning.

Credentials, region and profile come from boto3's standard chain only (environment, ``AWS_PROFILE`` and the
shared files, container or instance roles); imgsync's own configuration never holds them.

No ``botocore``/``boto3`` exception leaves this module. A failure of the whole setup (missing bucket, refused
or missing credentials, unreachable endpoint) is an :class:`~imgsync.errors.S3SetupError`; a failure of one
object is an :class:`~imgsync.errors.UploadError` and fails that image alone. Both come from one place,
:meth:`S3Uploader._translate`, which every ``except`` of the uploader ends in. Every message names the bucket
and endpoint, never a secret: the secret key and session token are registered with
:func:`imgsync.redact.register_secret` as soon as they are resolved.

The test and demo server (moto's S3 on 127.0.0.1) lives with the portal emulator: :mod:`imgsync.emulator.s3`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import boto3
from boto3.exceptions import Boto3Error, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
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

from .errors import LocalFileChanged, S3SetupError, UploadError
from .models import ImageRef, ObjectInfo, PortalImage
from .redact import redact, redact_url, register_secret

__all__ = [
    "S3Uploader",
    "SKIP_METADATA_KEYS",
    "decode_skip_fields",
    "encode_skip_fields",
    "object_metadata",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Files above this size go up in parts of ``DEFAULT_CHUNKSIZE`` (S3's minimum part size is 5 MiB).
DEFAULT_THRESHOLD = 8 * MiB
DEFAULT_CHUNKSIZE = 8 * MiB

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


# --- the skip rule's fields in the object's metadata ------------------------------------------------------------

#: The metadata keys that hold what the skip rule compares, in the order of ``PortalImage.fingerprint()``.
SKIP_METADATA_KEYS = ("name", "type", "create-time", "detail-url")
#: S3 refuses a PUT whose user metadata (keys and values) exceeds 2 KiB.
METADATA_LIMIT = 2048
_SHA256 = re.compile(r"[0-9a-f]{64}")


def encode_skip_fields(name: str, type: str, create_time: str, detail_url: str) -> dict[str, str]:
    """The skip rule's fields as S3 user metadata: each percent-encoded UTF-8, since metadata is ASCII."""
    values = (name, type, create_time, detail_url)
    return {key: quote(value, safe="") for key, value in zip(SKIP_METADATA_KEYS, values, strict=True)}


def decode_skip_fields(metadata: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    """``(name, type, create_time, detail_url)`` from an object's metadata, or None when it holds none of them
    (uploaded before imgsync wrote them). Raises :class:`ValueError` when they are there but damaged: some
    missing, or not the percent-encoded UTF-8 that :func:`encode_skip_fields` writes."""
    present = [key for key in SKIP_METADATA_KEYS if key in metadata]
    if not present:
        return None
    if len(present) != len(SKIP_METADATA_KEYS):
        missing = [key for key in SKIP_METADATA_KEYS if key not in metadata]
        raise ValueError(f"metadata {', '.join(missing)} missing")
    values = []
    for key in SKIP_METADATA_KEYS:
        raw = metadata[key]
        try:
            value = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"metadata {key} is not percent-encoded UTF-8") from None
        if quote(value, safe="") != raw:  # a stray "%", a raw space: not what imgsync writes
            raise ValueError(f"metadata {key} is not percent-encoded UTF-8")
        values.append(value)
    return values[0], values[1], values[2], values[3]


def object_metadata(sha256: str, ref: ImageRef, image: PortalImage | None = None) -> dict[str, str]:
    """The user metadata of an uploaded object: ``sha256``, ``product-id``, ``image-id`` and, with ``image``,
    the skip rule's fields, so that ``imgsync rebuild --from-s3`` can restore the row.

    Fields too long for S3's 2 KiB limit are left out (the object is then reported by ``rebuild``, not lost).
    """
    metadata = {"sha256": sha256, "product-id": str(ref.product_id), "image-id": str(ref.image_id)}
    if image is not None:
        skip = encode_skip_fields(*image.fingerprint())
        size = sum(len(k) + len(v) for k, v in {**metadata, **skip}.items())
        if size <= METADATA_LIMIT:
            metadata.update(skip)
        else:
            log.warning("%s: name and detailUrl too long for S3 metadata (%d bytes); not stored", ref, size)
    return metadata


def fingerprint_of(metadata: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    """The skip rule's fields an object records, or None when it records none (or damaged ones)."""
    try:
        return decode_skip_fields(metadata)
    except ValueError:
        return None


class _Why(enum.Enum):
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
_BOTO_ERRORS = (BotoCoreError, ClientError, *_TRANSFER_ERRORS)


def _error_code(exc: ClientError) -> tuple[str, str, int]:
    """``(code, message, http status)`` of a ClientError."""
    error = exc.response.get("Error") or {}
    status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return str(error.get("Code") or status or ""), str(error.get("Message") or ""), status


def _why(exc: BaseException) -> _Why:
    if isinstance(exc, ProfileNotFound):
        return _Why.PROFILE
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return _Why.CREDENTIALS
    if isinstance(exc, _CONNECTION_ERRORS):
        return _Why.UNREACHABLE
    if isinstance(exc, ValueError):
        return _Why.ENDPOINT
    if not isinstance(exc, ClientError):
        return _Why.OTHER
    code, _, status = _error_code(exc)
    if code == "NoSuchBucket":
        return _Why.NO_BUCKET
    if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
        return _Why.NOT_FOUND
    if status == 403 or code in _DENIED_CODES:
        return _Why.DENIED
    if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
        return _Why.WRONG_REGION
    return _Why.OTHER


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _checksum_refused(exc: BaseException) -> bool:
    """Did the store refuse the request for its checksum header (not for its bytes, nor its signature)?"""
    return isinstance(exc, ClientError) and _error_code(exc)[0] in _CHECKSUM_REFUSED_CODES


def composite_sha256(path: Path, part_size: int) -> str:
    """The SHA-256 checksum S3 keeps for a multipart upload of ``path`` in parts of ``part_size``: base64 of the
    SHA-256 of the parts' SHA-256 digests (without the ``-<parts>`` suffix)."""
    parts = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            parts.update(hashlib.sha256(chunk).digest())
    return _b64(parts.digest())


def _etag(value: object) -> str:
    return str(value or "").strip('"')


def _boto_text(exc: BaseException) -> str:
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


class S3Uploader:
    """Uploads files to one bucket under one key prefix; implements :class:`imgsync.sync.Uploader`.

    ``client``: a boto3 S3 client to use instead of building one (tests, custom sessions). ``workers``: how many
    threads will call :meth:`put` at once, to size the connection pool. Each upload uses at most
    ``max_concurrency`` parts of ``multipart_chunksize`` bytes in flight, so memory stays bounded whatever the
    file's size. ``checksums``: let boto3 send CRC32 checksums with uploads; by default on for AWS and off for
    custom endpoints, because several S3-compatible servers reject the new checksum headers.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        client: Any = None,
        workers: int = 4,
        multipart_threshold: int = DEFAULT_THRESHOLD,
        multipart_chunksize: int = DEFAULT_CHUNKSIZE,
        max_concurrency: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        checksums: bool | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix or ""
        self.endpoint_url = endpoint_url or None
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max(1, max_concurrency),
            use_threads=max_concurrency > 1,
        )
        self._session: boto3.session.Session | None = None
        # Set once the store refused the checksum header and took the request without it: from then on uploads
        # carry Content-MD5 and HEADs ask for no checksum.
        self._checksums_refused = False
        if client is not None:
            self.client = client
        else:
            self.client = self._make_client(
                workers, max_concurrency, connect_timeout, read_timeout, checksums
            )

    # -- setup ------------------------------------------------------------------------------------
    def _make_client(
        self,
        workers: int,
        max_concurrency: int,
        connect_timeout: float,
        read_timeout: float,
        checksums: bool | None,
    ) -> Any:
        if checksums is None:
            checksums = self.endpoint_url is None
        checksum_mode = "when_supported" if checksums else "when_required"
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            # Every worker may have a multipart upload in flight (max_concurrency parts) plus a HEAD.
            max_pool_connections=max(10, workers * (max(1, max_concurrency) + 1)),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent_extra="imgsync",
            # MinIO and most self-hosted stores serve buckets by path, not by host name.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
            request_checksum_calculation=checksum_mode,
            response_checksum_validation=checksum_mode,
        )
        try:
            # A session of our own: boto3's default session is not safe to share between threads.
            self._session = boto3.session.Session()
            return self._session.client("s3", endpoint_url=self.endpoint_url, config=config)
        except (*_BOTO_ERRORS, ValueError) as exc:  # ValueError: an endpoint botocore cannot use
            raise self._translate(exc, doing="cannot set up the S3 client") from None

    @property
    def where(self) -> str:
        """The endpoint, for messages: the URL given, or AWS and the region."""
        if self.endpoint_url:
            return redact_url(self.endpoint_url)
        region = getattr(getattr(self, "client", None), "meta", None)
        name = getattr(region, "region_name", None) or "us-east-1"
        return f"AWS S3 ({name})"

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

    def _resolve_credentials(self) -> None:
        """Fail early, and clearly, when there are no usable credentials; register the secret parts."""
        if self._session is None:
            return
        try:
            creds = self._session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except _BOTO_ERRORS as exc:  # also an expired SSO login, a failing role
            raise self._translate(exc, credentials=True) from None
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise S3SetupError(
                f"no AWS credentials found for S3 bucket '{self.bucket}' at {self.where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws/credentials), or run with an "
                "instance or task role",
                exit_code=3,
            )
        register_secret(frozen.secret_key)
        register_secret(frozen.token)

    def check(self) -> None:
        """HeadBucket, once, before anything is downloaded. Raises :class:`S3SetupError`.

        Missing bucket: exit 2. Refused or missing credentials: exit 3. Endpoint unreachable: exit 2 (nothing was
        fetched; the message says to check ``s3.endpoint_url`` and the server).
        """
        self._resolve_credentials()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _BOTO_ERRORS as exc:
            raise self._translate(exc) from None

    def _denied_reason(self) -> str | None:
        """HEAD answers have no body; a GET on the bucket tells *why* access was refused."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError as exc:
            return _DENIED_CODES.get(_error_code(exc)[0])
        except _BOTO_ERRORS:
            return None
        return None

    # --- check ---
    def probe(self) -> str:
        """Write and delete a tiny object ``<prefix>.imgsync-check`` (``imgsync check``); return its key.

        Raises :class:`S3SetupError`: exit 3 when access is refused, else 2.
        """
        key = f"{self.prefix}.imgsync-check"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"imgsync check\n")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, doing=f"cannot write {self._url(key)}") from None
        return key

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
        if credentials and why is not _Why.PROFILE:  # a role's endpoint that times out is no S3 endpoint
            why = _Why.CREDENTIALS
        text, bucket, where = _boto_text(exc), self.bucket, self.where
        if key is not None:
            url = self._url(key)
            if why is _Why.NO_BUCKET:
                return UploadError(f"{url}: bucket '{bucket}' does not exist at {where}")
            if why is _Why.DENIED:
                return UploadError(redact(f"{url}: S3 at {where} refused access ({text})"))
            if why is _Why.UNREACHABLE:
                return UploadError(redact(f"{url}: cannot reach S3 at {where} ({type(exc).__name__})"))
            return UploadError(redact(f"{url}: {text}"))
        exit_code = 3 if why in (_Why.PROFILE, _Why.CREDENTIALS, _Why.DENIED) else 2
        if why is _Why.PROFILE:
            message = f"{exc}: fix AWS_PROFILE or add the profile to ~/.aws/config"
        elif why is _Why.ENDPOINT:
            message = f"S3 endpoint {where}: {exc}"
        elif why is _Why.CREDENTIALS:
            message = f"cannot load AWS credentials for S3 bucket '{bucket}': {text}"
        elif doing is not None:
            message = f"{doing} at {where}: {text}"
        elif why in (_Why.NO_BUCKET, _Why.NOT_FOUND):
            message = (
                f"S3 bucket '{bucket}' does not exist at {where}: create it, or fix s3.bucket "
                "(--s3-bucket, IMGSYNC_S3_BUCKET)"
            )
        elif why is _Why.DENIED:
            assert isinstance(exc, ClientError)
            code, _, status = _error_code(exc)
            reason = self._denied_reason() or _DENIED_CODES.get(code, f"access denied (HTTP {status})")
            message = (
                f"S3 refused access to bucket '{bucket}' at {where}: {reason}. Check the AWS credentials "
                f"({self._credential_source()}) and that they allow s3:ListBucket on the bucket"
            )
        elif why is _Why.WRONG_REGION:
            message = (
                f"S3 bucket '{bucket}' is in another region than {where}: set AWS_DEFAULT_REGION (or the "
                "profile's region) to the bucket's region"
            )
        elif why is _Why.UNREACHABLE:
            message = (
                f"cannot reach S3 at {where} (bucket '{bucket}'): {text}; check s3.endpoint_url "
                "and that the server is running"
            )
        else:
            message = f"S3 bucket '{bucket}' at {where} cannot be used: {text}"
        return S3SetupError(redact(message), exit_code=exit_code)

    # -- per object ---------------------------------------------------------------------------------
    def key_for(self, relative: str) -> str:
        """The object key of a file at ``relative`` (``<product_id>/<image_id>-<safe name>``) under dest."""
        return self.prefix + relative

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def head(self, key: str) -> ObjectInfo | None:
        """What the object holds, or None when it does not exist. ``sha256`` is None for an object not
        written by imgsync; ``checksum_sha256`` the store's own checksum, when it keeps one. Raises
        :class:`UploadError`."""
        try:
            reply = self._head(key)
        except _BOTO_ERRORS as exc:
            if _why(exc) is _Why.NOT_FOUND:
                return None
            raise self._translate(exc, key=key) from None
        metadata = {str(k).lower(): str(v) for k, v in (reply.get("Metadata") or {}).items()}
        return ObjectInfo(
            sha256=metadata.get("sha256"),
            size=int(reply.get("ContentLength") or 0),
            etag=_etag(reply.get("ETag")),
            content_type=reply.get("ContentType"),
            metadata=metadata,
            fingerprint=fingerprint_of(metadata),
            checksum_sha256=reply.get("ChecksumSHA256") or None,
        )

    def _head(self, key: str) -> Any:
        """HeadObject, asking for the stored checksum unless the store refuses that (B2 refused the header)."""
        if self._checksums_refused:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if not _checksum_refused(exc):
                raise
            refusal = exc
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _why(exc) is _Why.NOT_FOUND:  # an answer: it was the header that was refused
                self._refused_checksums(self._url(key), refusal)
            raise
        self._refused_checksums(self._url(key), refusal)
        return reply

    def holds(self, found: ObjectInfo, path: Path | None, sha256: str, size: int) -> bool:
        """Are the object's bytes known to be these (``sha256``, ``size``, the file at ``path``)?

        Its ``sha256`` metadata and size are only labels, written beside whatever bytes were sent. The bytes
        themselves are known by the checksum the store verified when they arrived: for a single upload the
        SHA-256 of the whole object, for a multipart one the SHA-256 of its parts' SHA-256, recomputed here from
        the file in our part size. An object sent without a checksum (by an earlier imgsync, or to a store that
        refuses them) is not known, whatever its labels say.
        """
        if not found.same_bytes(sha256, size) or not found.checksum_sha256:
            return False
        value = found.checksum_sha256.split("-", 1)[0]
        if value == _b64(bytes.fromhex(sha256)):
            return True
        chunk = self.transfer_config.multipart_chunksize
        if path is None or size <= chunk:
            return False
        try:
            return value == composite_sha256(path, chunk)
        except OSError:
            return False

    def list_pages(self, page_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """The objects under the prefix, a page (``ListObjectsV2``, through boto3's paginator) at a time:
        ``{"key", "size", "etag", "last_modified"}`` each. Pages are fetched as they are consumed, so a
        caller that drops each page before the next holds one page in memory, whatever the bucket's size.

        Raises :class:`S3SetupError` when the listing fails (exit 3 when refused).
        """
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": page_size}
        )
        where = f"s3://{self.bucket}/{self.prefix}"
        try:
            for page in pages:
                yield [
                    {
                        "key": str(item["Key"]),
                        "size": item.get("Size"),
                        "etag": _etag(item.get("ETag")),
                        "last_modified": item.get("LastModified"),
                    }
                    for item in page.get("Contents") or ()
                ]
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, doing=f"cannot list {where}") from None

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object (for ``imgsync restore``).

        Raises :class:`UploadError` when S3 refuses or fails; the caller checks the bytes' sha256."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
            return bytes(answer["Body"].read())
        except _BOTO_ERRORS as exc:
            err = self._translate(exc, key=key, doing="cannot read")
            if _why(exc) == _Why.NOT_FOUND:
                return None
            raise err from None

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
        """Upload ``path`` to ``key`` if it holds ``size`` bytes with ``sha256``; verify the object (size and
        sha256 metadata); return its ETag.

        The file is hashed as it is read for the upload, and each request carries the SHA-256 checksum of its
        body for the store to verify (Content-MD5 where the store refuses checksums). Files above the multipart
        threshold go up in parts, at most ``max_concurrency`` in flight; the upload is completed only once the
        whole file's hash is known to be ``sha256``, else aborted. With ``image``, the metadata also holds the
        skip rule's fields (see :func:`object_metadata`).

        Raises :class:`LocalFileChanged` when the file is not those bytes (nothing is then written to ``key``),
        :class:`UploadError` otherwise; the object may then be absent, or present from an earlier upload.
        """
        extra = {
            "Metadata": object_metadata(sha256, ref, image),
            "ContentType": content_type or "application/octet-stream",
        }
        url = self._url(key)
        try:
            with open(path, "rb") as f:
                actual = os.fstat(f.fileno()).st_size
                if actual != size:
                    raise LocalFileChanged(
                        f"{url}: not uploaded, {path} has {actual} bytes, the database says {size}"
                    )
                if size <= self.transfer_config.multipart_threshold:
                    etag = self._put_single(f, path, key, sha256, size, extra)
                else:
                    etag = self._put_multipart(f, path, key, sha256, size, extra)
        except OSError as exc:
            raise UploadError(f"{url}: cannot read {path}: {exc.strerror or exc}") from None
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, key=key) from None
        found = self.head(key)
        if found is None:
            raise UploadError(f"{url}: not verified, the object is not there right after the upload")
        if not found.same_bytes(sha256, size):
            raise UploadError(
                f"{url}: not verified, the object holds {found.size} bytes with sha256 "
                f"{found.sha256 or 'unset'}, expected {size} bytes with sha256 {sha256}"
            )
        log.debug("uploaded %s (%d bytes, etag %s)", url, size, found.etag)
        return _etag(etag) or str(found.etag)

    def _changed(
        self, path: Path, key: str, read: int, digest: str, sha256: str, size: int
    ) -> LocalFileChanged:
        return LocalFileChanged(
            f"{self._url(key)}: not uploaded, {path} holds {read} bytes with sha256 {digest}, not the recorded "
            f"{size} bytes with sha256 {sha256}"
        )

    def _refused_checksums(self, url: str, exc: BaseException) -> None:
        if not self._checksums_refused:
            self._checksums_refused = True
            log.warning(
                "%s: S3 at %s refused the SHA-256 checksum header (%s); uploads to it carry Content-MD5 from now "
                "on, and what it holds is checked by its size and sha256 metadata only",
                url,
                self.where,
                _boto_text(exc),
            )

    def _with_checksum(self, url: str, send: Callable[[bool], Any]) -> Any:
        """``send(True)`` (with the SHA-256 checksum header); once without it when the store refuses it."""
        if self._checksums_refused:
            return send(False)
        try:
            return send(True)
        except ClientError as exc:
            if not _checksum_refused(exc):
                raise
            reply = send(False)  # a refusal for another reason fails again, and that is the error shown
            self._refused_checksums(url, exc)
            return reply

    def _put_single(self, f: Any, path: Path, key: str, sha256: str, size: int, extra: dict[str, Any]) -> str:
        # At most multipart_threshold bytes: read once, hashed, and these very bytes are sent.
        data = f.read(size + 1)
        digest = hashlib.sha256(data)
        if len(data) != size or digest.hexdigest() != sha256:
            raise self._changed(path, key, len(data), digest.hexdigest(), sha256, size)

        def send(checksum: bool) -> Any:
            if checksum:
                integrity = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _b64(digest.digest())}
            else:
                integrity = {"ContentMD5": _b64(hashlib.md5(data).digest())}
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra, **integrity)

        return str(self._with_checksum(self._url(key), send).get("ETag") or "")

    def _put_multipart(
        self, f: Any, path: Path, key: str, sha256: str, size: int, extra: dict[str, Any]
    ) -> str:
        def send(checksum: bool) -> Any:
            f.seek(0)
            return self._multipart(f, path, key, sha256, size, extra, checksum)

        return str(self._with_checksum(self._url(key), send).get("ETag") or "")

    def _multipart(
        self, f: Any, path: Path, key: str, sha256: str, size: int, extra: dict[str, Any], checksum: bool
    ) -> Any:
        """One multipart upload, read in order and hashed as read; completed only if the hash is ``sha256``."""
        chunk_size = self.transfer_config.multipart_chunksize
        in_flight = max(1, self.transfer_config.max_concurrency)
        algorithm = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra, **algorithm)[
            "UploadId"
        ]
        try:
            whole, read, parts = hashlib.sha256(), 0, []
            with ThreadPoolExecutor(in_flight, thread_name_prefix="s3-part") as pool:
                pending: deque[Future[dict[str, Any]]] = deque()
                number = 0
                while chunk := f.read(chunk_size):
                    whole.update(chunk)
                    read += len(chunk)
                    number += 1
                    pending.append(pool.submit(self._part, key, upload_id, number, chunk, checksum))
                    if len(pending) >= in_flight:  # memory: in_flight parts, whatever the file's size
                        parts.append(pending.popleft().result())
                parts.extend(part.result() for part in pending)
            if read != size or whole.hexdigest() != sha256:
                raise self._changed(path, key, read, whole.hexdigest(), sha256, size)
            return self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except _BOTO_ERRORS as exc:  # a lifecycle rule cleans up what this leaves (docs/s3.md)
                log.warning("%s: could not abort the multipart upload: %s", self._url(key), _boto_text(exc))
            raise

    def _part(self, key: str, upload_id: str, number: int, chunk: bytes, checksum: bool) -> dict[str, Any]:
        part: dict[str, Any] = {"PartNumber": number}
        if checksum:
            part["ChecksumSHA256"] = _b64(hashlib.sha256(chunk).digest())
            integrity = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": part["ChecksumSHA256"]}
        else:
            integrity = {"ContentMD5": _b64(hashlib.md5(chunk).digest())}
        reply = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, **integrity
        )
        part["ETag"] = reply["ETag"]
        return part

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
        """Bring the metadata of the object ``found`` at ``key`` (which :meth:`holds` these bytes) up to date
        with ``image``'s skip-rule fields: a server-side copy onto itself, no bytes sent. Its content type and
        ``sha256`` stay; the copy is made only if the object is still the one found (its ETag). Verified with a
        HEAD; returns the new ETag. Raises :class:`UploadError`.
        """
        url = self._url(key)
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "CopySource": {"Bucket": self.bucket, "Key": key},
            "MetadataDirective": "REPLACE",
            "Metadata": object_metadata(sha256, ref, image),
            "ContentType": found.content_type or content_type or "application/octet-stream",
        }
        if found.etag:
            args["CopySourceIfMatch"] = f'"{found.etag}"'
        try:
            reply = self.client.copy_object(**args)
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, key=key) from None
        after = self.head(key)
        if (
            after is None
            or not self.holds(after, path, sha256, size)
            or after.fingerprint != image.fingerprint()
        ):
            raise UploadError(f"{url}: not verified, the object's metadata is not what was copied onto it")
        log.debug("refreshed the metadata of %s", url)
        return _etag((reply.get("CopyObjectResult") or {}).get("ETag")) or str(after.etag)
