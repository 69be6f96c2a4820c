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

No ``botocore``/``boto3`` exception leaves this package. A failure of the whole setup (missing bucket, refused
or missing credentials, unreachable endpoint) is an :class:`~imgsync.errors.S3SetupError`; a failure of one
object is an :class:`~imgsync.errors.UploadError` and fails that image alone. Both come from one place,
:meth:`S3Uploader._translate`, which every ``except`` of the uploader ends in. Every message names the bucket
and endpoint, never a secret: the secret key and session token are registered with
:func:`imgsync.redact.register_secret` as soon as they are resolved.

The package, one concern a module: :mod:`.uploader` (:class:`S3Uploader`), :mod:`.errors` (the one translation
of botocore's and boto3's errors), :mod:`.metadata` (the skip rule's fields and the object's metadata),
:mod:`.checksums` (checksummed single and multipart uploads, verified against the file's SHA-256).

The test and demo server (moto's S3 on 127.0.0.1) lives with the portal emulator: :mod:`imgsync.emulator.s3`.
"""

from .checksums import composite_sha256
from .metadata import (
    METADATA_LIMIT,
    SKIP_METADATA_KEYS,
    decode_skip_fields,
    encode_skip_fields,
    fingerprint_of,
    object_metadata,
)
from .uploader import DEFAULT_CHUNKSIZE, DEFAULT_THRESHOLD, S3Uploader

__all__ = [
    "DEFAULT_CHUNKSIZE",
    "DEFAULT_THRESHOLD",
    "METADATA_LIMIT",
    "S3Uploader",
    "SKIP_METADATA_KEYS",
    "composite_sha256",
    "decode_skip_fields",
    "encode_skip_fields",
    "fingerprint_of",
    "object_metadata",
]
