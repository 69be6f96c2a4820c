"""Checksummed uploads: each request carries the SHA-256 checksum of its body (per part for a multipart upload,
which is completed only once the whole file's hash is the recorded one), or ``Content-MD5`` from the moment the
store refuses the checksum header (:class:`Checksums`, which :class:`~.uploader.S3Uploader` inherits); and the
checksum S3 keeps for a multipart upload (:func:`composite_sha256`)."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig

from ..errors import LocalFileChanged
from .errors import BOTO_ERRORS, ClientError, boto_text, checksum_refused

__all__ = ["Checksums", "b64", "composite_sha256"]

log = logging.getLogger("imgsync.s3")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_sha256(path: Path, part_size: int) -> str:
    """The SHA-256 checksum S3 keeps for a multipart upload of ``path`` in parts of ``part_size``: base64 of the
    SHA-256 of the parts' SHA-256 digests (without the ``-<parts>`` suffix)."""
    parts = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            parts.update(hashlib.sha256(chunk).digest())
    return b64(parts.digest())


class Checksums:
    """Single and multipart uploads that send only the recorded bytes, with their checksums."""

    bucket: str
    client: Any
    transfer_config: TransferConfig
    _checksums_refused: bool

    if TYPE_CHECKING:

        @property
        def where(self) -> str: ...

        def _url(self, key: str) -> str: ...

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
                boto_text(exc),
            )

    def _with_checksum(self, url: str, send: Callable[[bool], Any]) -> Any:
        """``send(True)`` (with the SHA-256 checksum header); once without it when the store refuses it."""
        if self._checksums_refused:
            return send(False)
        try:
            return send(True)
        except ClientError as exc:
            if not checksum_refused(exc):
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
                integrity = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": b64(digest.digest())}
            else:
                integrity = {"ContentMD5": b64(hashlib.md5(data).digest())}
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
            except BOTO_ERRORS as exc:  # a lifecycle rule cleans up what this leaves (docs/s3.md)
                log.warning("%s: could not abort the multipart upload: %s", self._url(key), boto_text(exc))
            raise

    def _part(self, key: str, upload_id: str, number: int, chunk: bytes, checksum: bool) -> dict[str, Any]:
        part: dict[str, Any] = {"PartNumber": number}
        if checksum:
            part["ChecksumSHA256"] = b64(hashlib.sha256(chunk).digest())
            integrity = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": part["ChecksumSHA256"]}
        else:
            integrity = {"ContentMD5": b64(hashlib.md5(chunk).digest())}
        reply = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, **integrity
        )
        part["ETag"] = reply["ETag"]
        return part
