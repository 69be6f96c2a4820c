"""The uploader: :class:`S3Uploader`, what :class:`imgsync.sync.Syncer` calls (see the package docstring)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from ..errors import LocalFileChanged, S3SetupError, UploadError
from ..models import ImageRef, ObjectInfo, PortalImage
from ..redact import redact_url, register_secret
from .checksums import Checksums, b64, composite_sha256
from .errors import BOTO_ERRORS, ClientError, Translation, Why, _why, checksum_refused
from .metadata import fingerprint_of, object_metadata

__all__ = ["DEFAULT_CHUNKSIZE", "DEFAULT_THRESHOLD", "S3Uploader"]

log = logging.getLogger("imgsync.s3")

MiB = 1024 * 1024
#: Files above this size go up in parts of ``DEFAULT_CHUNKSIZE`` (S3's minimum part size is 5 MiB).
DEFAULT_THRESHOLD = 8 * MiB
DEFAULT_CHUNKSIZE = 8 * MiB


def _etag(value: object) -> str:
    return str(value or "").strip('"')


class S3Uploader(Translation, Checksums):
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
        except (*BOTO_ERRORS, ValueError) as exc:  # ValueError: an endpoint botocore cannot use
            raise self._translate(exc, doing="cannot set up the S3 client") from None

    @property
    def where(self) -> str:
        """The endpoint, for messages: the URL given, or AWS and the region."""
        if self.endpoint_url:
            return redact_url(self.endpoint_url)
        region = getattr(getattr(self, "client", None), "meta", None)
        name = getattr(region, "region_name", None) or "us-east-1"
        return f"AWS S3 ({name})"

    def _resolve_credentials(self) -> None:
        """Fail early, and clearly, when there are no usable credentials; register the secret parts."""
        if self._session is None:
            return
        try:
            creds = self._session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except BOTO_ERRORS as exc:  # also an expired SSO login, a failing role
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
        except BOTO_ERRORS as exc:
            raise self._translate(exc) from None

    def probe(self) -> str:
        """Write and delete a tiny object ``<prefix>.imgsync-check`` (``imgsync check``); return its key.

        Raises :class:`S3SetupError`: exit 3 when access is refused, else 2.
        """
        key = f"{self.prefix}.imgsync-check"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"imgsync check\n")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except BOTO_ERRORS as exc:
            raise self._translate(exc, doing=f"cannot write {self._url(key)}") from None
        return key

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
        except BOTO_ERRORS as exc:
            if _why(exc) is Why.NOT_FOUND:
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
            if not checksum_refused(exc):
                raise
            refusal = exc
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _why(exc) is Why.NOT_FOUND:  # an answer: it was the header that was refused
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
        if value == b64(bytes.fromhex(sha256)):
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
        except BOTO_ERRORS as exc:
            raise self._translate(exc, doing=f"cannot list {where}") from None

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object (for ``imgsync restore``).

        Raises :class:`UploadError` when S3 refuses or fails; the caller checks the bytes' sha256."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
            return bytes(answer["Body"].read())
        except BOTO_ERRORS as exc:
            err = self._translate(exc, key=key, doing="cannot read")
            if _why(exc) == Why.NOT_FOUND:
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
        except BOTO_ERRORS as exc:
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
        except BOTO_ERRORS as exc:
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
