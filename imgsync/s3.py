"""S3 and S3-compatible storage: upload only what changed, with the content's sha256 in the object's metadata.

:class:`S3Uploader` is what :class:`imgsync.sync.Syncer` calls (the ``Uploader`` protocol): ``check()`` once
before anything is downloaded, ``head()`` to learn what an object holds, ``put()`` to upload a file through
boto3's transfer manager (multipart above a threshold, memory bounded by part size x concurrency) and verify
it with a HEAD before the ETag is returned. One boto3 client serves every worker thread (clients are
thread-safe; sessions are not, so the session is private to the uploader).

Credentials, region and profile come from boto3's standard chain only (environment, ``AWS_PROFILE`` and the
shared files, container or instance roles); imgsync's own configuration never holds them.

No ``botocore``/``boto3`` exception leaves this module. A failure of the whole setup (missing bucket, refused
or missing credentials, unreachable endpoint) is an :class:`~imgsync.errors.S3SetupError`; a failure of one
object is an :class:`~imgsync.errors.UploadError` and fails that image alone. Every message names the bucket
and endpoint, never a secret: the secret key and session token are registered with
:func:`imgsync.redact.register_secret` as soon as they are resolved.

:class:`LocalS3Server` runs moto's S3 emulation on 127.0.0.1 for ``imgsync demo --s3`` and the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

from .errors import S3SetupError, UploadError
from .models import ImageRef
from .redact import redact, redact_url, register_secret

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["LocalS3Server", "S3Uploader"]

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


def _error_code(exc: ClientError) -> tuple[str, str, int]:
    """``(code, message, http status)`` of a ClientError."""
    error = exc.response.get("Error") or {}
    status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return str(error.get("Code") or status or ""), str(error.get("Message") or ""), status


def _is_denied(exc: ClientError) -> bool:
    code, _, status = _error_code(exc)
    return status == 403 or code in _DENIED_CODES


def _is_not_found(exc: ClientError) -> bool:
    code, _, status = _error_code(exc)
    return status == 404 or code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


def _etag(value: object) -> str:
    return str(value or "").strip('"')


def _client_error_text(exc: ClientError) -> str:
    code, message, status = _error_code(exc)
    if code in _DENIED_CODES:
        return _DENIED_CODES[code]
    if code == "NoSuchBucket":
        return "the bucket does not exist"
    text = f"{code}: {message}" if message and message != code else code or f"HTTP {status}"
    return text


def _boto_text(exc: BaseException) -> str:
    """A short, redacted description of a botocore/boto3 failure."""
    if isinstance(exc, ClientError):
        text = _client_error_text(exc)
    elif isinstance(exc, _CONNECTION_ERRORS):
        text = f"connection failed ({type(exc).__name__}: {exc})"
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
        except ProfileNotFound as exc:
            raise S3SetupError(
                redact(f"{exc}: fix AWS_PROFILE or add the profile to ~/.aws/config"), exit_code=3
            ) from None
        except ValueError as exc:  # an endpoint botocore cannot use
            raise S3SetupError(redact(f"S3 endpoint {self.where}: {exc}"), exit_code=2) from None
        except BotoCoreError as exc:
            raise S3SetupError(
                redact(f"cannot set up the S3 client: {_boto_text(exc)}"), exit_code=2
            ) from None

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
        except ProfileNotFound as exc:
            raise S3SetupError(
                redact(f"{exc}: fix AWS_PROFILE or add the profile to ~/.aws/config"), exit_code=3
            ) from None
        except (*_CREDENTIAL_ERRORS, BotoCoreError) as exc:  # also an expired SSO login, a failing role
            raise S3SetupError(
                redact(f"cannot load AWS credentials for S3 bucket '{self.bucket}': {_boto_text(exc)}"),
                exit_code=3,
            ) from None
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
        bucket, where = self.bucket, self.where
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code, _, status = _error_code(exc)
            if _is_not_found(exc):
                raise S3SetupError(
                    f"S3 bucket '{bucket}' does not exist at {where}: create it, or fix s3.bucket "
                    "(--s3-bucket, IMGSYNC_S3_BUCKET)",
                    exit_code=2,
                ) from None
            if _is_denied(exc):
                reason = self._denied_reason() or _DENIED_CODES.get(code, f"access denied (HTTP {status})")
                raise S3SetupError(
                    redact(
                        f"S3 refused access to bucket '{bucket}' at {where}: {reason}. Check the AWS credentials "
                        f"({self._credential_source()}) and that they allow s3:ListBucket on the bucket"
                    ),
                    exit_code=3,
                ) from None
            if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                raise S3SetupError(
                    f"S3 bucket '{bucket}' is in another region than {where}: set AWS_DEFAULT_REGION (or the "
                    "profile's region) to the bucket's region",
                    exit_code=2,
                ) from None
            raise S3SetupError(
                redact(f"S3 bucket '{bucket}' at {where} cannot be used: {_client_error_text(exc)}"),
                exit_code=2,
            ) from None
        except _CREDENTIAL_ERRORS as exc:
            raise S3SetupError(
                redact(f"cannot load AWS credentials for S3 bucket '{bucket}': {_boto_text(exc)}"),
                exit_code=3,
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise S3SetupError(
                redact(
                    f"cannot reach S3 at {where} (bucket '{bucket}'): {_boto_text(exc)}; check s3.endpoint_url "
                    "and that the server is running"
                ),
                exit_code=2,
            ) from None
        except BotoCoreError as exc:
            raise S3SetupError(
                redact(f"S3 bucket '{bucket}' at {where} cannot be used: {_boto_text(exc)}"), exit_code=2
            ) from None

    def _denied_reason(self) -> str | None:
        """HEAD answers have no body; a GET on the bucket tells *why* access was refused."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError as exc:
            code = _error_code(exc)[0]
            return _DENIED_CODES.get(code)
        except BotoCoreError:
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
        except ClientError as exc:
            raise S3SetupError(
                redact(f"cannot write {self._url(key)} at {self.where}: {_client_error_text(exc)}"),
                exit_code=3 if _is_denied(exc) else 2,
            ) from None
        except BotoCoreError as exc:
            raise S3SetupError(
                redact(f"cannot write {self._url(key)} at {self.where}: {_boto_text(exc)}"), exit_code=2
            ) from None
        return key

    # -- per object ---------------------------------------------------------------------------------
    def key_for(self, relative: str) -> str:
        """The object key of a file at ``relative`` (``<product_id>/<image_id>-<safe name>``) under dest."""
        return self.prefix + relative

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _upload_error(self, key: str, exc: BaseException) -> UploadError:
        """One object failed: say which, where and why (the caller adds "upload failed")."""
        url = self._url(key)
        if isinstance(exc, ClientError):
            if _error_code(exc)[0] == "NoSuchBucket":
                return UploadError(f"{url}: bucket '{self.bucket}' does not exist at {self.where}")
            if _is_denied(exc):
                return UploadError(
                    redact(f"{url}: S3 at {self.where} refused access ({_client_error_text(exc)})")
                )
        if isinstance(exc, _CONNECTION_ERRORS):
            return UploadError(redact(f"{url}: cannot reach S3 at {self.where} ({type(exc).__name__})"))
        return UploadError(redact(f"{url}: {_boto_text(exc)}"))

    def head(self, key: str) -> dict[str, Any] | None:
        """``{"sha256", "size", "etag", "content_type", "metadata"}`` of the object, or None when it does not
        exist. ``sha256`` is None for an object not written by imgsync. Raises :class:`UploadError`."""
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise self._upload_error(key, exc) from None
        except BotoCoreError as exc:
            raise self._upload_error(key, exc) from None
        metadata = {str(k).lower(): str(v) for k, v in (reply.get("Metadata") or {}).items()}
        return {
            "sha256": metadata.get("sha256"),
            "size": reply.get("ContentLength"),
            "etag": _etag(reply.get("ETag")),
            "content_type": reply.get("ContentType"),
            "metadata": metadata,
        }

    def put(self, path: Path, key: str, *, sha256: str, size: int, content_type: str, ref: ImageRef) -> str:
        """Upload ``path`` to ``key``, verify the object (size and sha256 metadata), return its ETag.

        Raises :class:`UploadError`; the object may then be absent, or present from an earlier upload.
        """
        try:
            actual = os.stat(path).st_size
        except OSError as exc:
            raise UploadError(f"{self._url(key)}: cannot read {path}: {exc.strerror}") from None
        if actual != size:
            raise UploadError(f"{self._url(key)}: {path} has {actual} bytes, the database says {size}")
        extra = {
            "Metadata": {"sha256": sha256, "product-id": str(ref.product_id), "image-id": str(ref.image_id)},
            "ContentType": content_type or "application/octet-stream",
        }
        try:
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra, Config=self.transfer_config)
        except S3UploadFailedError as exc:
            # boto3 wraps the ClientError in a message that repeats the path; the cause says more.
            cause = exc.__cause__ or exc.__context__
            raise self._upload_error(key, cause if cause is not None else exc) from None
        except (BotoCoreError, ClientError) as exc:
            raise self._upload_error(key, exc) from None
        except OSError as exc:
            raise UploadError(f"{self._url(key)}: cannot read {path}: {exc.strerror or exc}") from None
        except _TRANSFER_ERRORS as exc:  # the transfer manager's own failures (a part that never completed)
            raise UploadError(redact(f"{self._url(key)}: {type(exc).__name__}: {exc}")) from None
        found = self.head(key)
        if found is None:
            raise UploadError(
                f"{self._url(key)}: not verified, the object is not there right after the upload"
            )
        if found["size"] != size or found["sha256"] != sha256:
            raise UploadError(
                f"{self._url(key)}: not verified, the object holds {found['size']} bytes with sha256 "
                f"{found['sha256'] or 'unset'}, expected {size} bytes with sha256 {sha256}"
            )
        log.debug("uploaded %s (%d bytes, etag %s)", self._url(key), size, found["etag"])
        return str(found["etag"])


# --- a local S3 server for the demo and the tests ----------------------------------------------------------------

_MOTO_MISSING = "imgsync demo --s3 needs moto[server]: pip install 'moto[server]'"
_DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class LocalS3Server:
    """moto's S3 on 127.0.0.1, in a thread of this process.

    ``start()`` picks a free port (or ``port``), and sets dummy credentials (``testing``) in this process's
    environment when it has none, so the default credential chain finds them; ``stop()`` closes every
    connection (a stopped server really is gone) and takes those variables back out. Every request is
    recorded as ``(method, path, query)`` in :attr:`requests`, so a caller can count the PUTs that reached it.

    moto keeps its buckets in process-wide memory: two servers in one process, or a server restarted on the
    same port, see the same buckets and objects.
    """

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", region: str = "us-east-1") -> None:
        self.host = host
        self.port = port
        self.region = region
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._env_set: list[str] = []

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalS3Server:
        """Start serving; return ``self``. Raises :class:`S3SetupError` when moto is missing or the port is taken."""
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import ThreadedWSGIServer
        except ImportError:
            raise S3SetupError(_MOTO_MISSING, exit_code=2) from None

        class QuietHandler(MotoRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass

        class Server(ThreadedWSGIServer):
            """Keeps its open connections, to close them on stop (keep-alive would outlive the listener)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.open_connections: set[socket.socket] = set()
                self.connections_lock = threading.Lock()
                super().__init__(*args, **kwargs)

            def process_request(self, request: Any, client_address: Any) -> None:
                with self.connections_lock:
                    self.open_connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with self.connections_lock:
                    self.open_connections.discard(request)
                super().shutdown_request(request)

            def close_connections(self) -> None:
                with self.connections_lock:
                    conns = list(self.open_connections)
                for conn in conns:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)

        # Bind here, in the caller's thread, so a taken port is an error now (werkzeug would exit the thread).
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise S3SetupError(
                f"cannot start the local S3 server on {self.host}:{self.port}: {exc.strerror or exc}",
                exit_code=2,
            ) from None
        try:
            app = self._recording(DomainDispatcherApplication(create_backend_app))
            server = Server(
                self.host, listener.getsockname()[1], app, handler=QuietHandler, fd=listener.fileno()
            )
        finally:
            listener.close()  # the server holds its own duplicate of the socket
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"local-s3-{self.port}",
            daemon=True,
        )
        self._thread.start()
        # The emulation runs in our process: its debug lines (every request, headers and all) are not ours.
        for name in ("moto", "werkzeug"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self._set_dummy_credentials()
        return self

    def _recording(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def recorded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            with self._lock:
                self.requests.append(
                    (
                        environ.get("REQUEST_METHOD", ""),
                        environ.get("PATH_INFO", ""),
                        environ.get("QUERY_STRING", ""),
                    )
                )
            return app(environ, start_response)

        return recorded

    def _set_dummy_credentials(self) -> None:
        if not os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_SECRET_ACCESS_KEY"):
            for name, value in _DUMMY_CREDENTIALS.items():
                os.environ[name] = value
                self._env_set.append(name)
        if not os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
            os.environ["AWS_DEFAULT_REGION"] = self.region
            self._env_set.append("AWS_DEFAULT_REGION")

    def count(self, method: str, bucket: str | None = None) -> int:
        """How many ``method`` requests reached the server (on objects of ``bucket`` only, when given)."""
        with self._lock:
            return sum(
                1
                for m, path, _ in self.requests
                if m == method and (bucket is None or path.startswith(f"/{bucket}/"))
            )

    def client(self) -> Any:
        """A boto3 client for this server, with the dummy credentials whatever the environment holds."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}),
        )

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists."""
        try:
            self.client().create_bucket(Bucket=bucket)
        except ClientError as exc:
            if _error_code(exc)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise S3SetupError(
                    f"cannot create bucket '{bucket}' on the local S3 server: {_client_error_text(exc)}"
                ) from None

    def settings_for(self, settings: Settings, bucket: str = "imgsync-demo") -> Settings:
        """``settings`` with S3 on, pointed at ``bucket`` (created here) on this server."""
        self.create_bucket(bucket)
        return dataclasses.replace(
            settings, s3_enabled=True, s3_bucket=bucket, s3_endpoint_url=self.endpoint_url
        )

    def stop(self) -> None:
        """Stop serving, close every open connection, and take back the variables ``start()`` set."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for name in self._env_set:
            os.environ.pop(name, None)
        self._env_set.clear()

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
