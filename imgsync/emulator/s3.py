"""moto's S3 server on 127.0.0.1, for the demo and the tests: a test server lives with the emulator, not in
the product's S3 module."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from ..errors import S3SetupError
from .server import ConnectionTracker

__all__ = ["LocalS3Server"]


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

        class Server(ConnectionTracker, ThreadedWSGIServer):
            """Keeps its open connections, to close them on stop (keep-alive would outlive the listener)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                ConnectionTracker.__init__(self)
                ThreadedWSGIServer.__init__(self, *args, **kwargs)

            def process_request(self, request: Any, client_address: Any) -> None:
                self.track(request, True)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                self.track(request, False)
                super().shutdown_request(request)

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
            code = str((exc.response.get("Error") or {}).get("Code") or "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise S3SetupError(
                    f"cannot create bucket '{bucket}' on the local S3 server: {code}"
                ) from None

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
