"""HTTP plumbing for the emulator: a threaded HTTP/1.1 server that hands each request to an app.

The app is a callable ``Request -> Reply``; everything Bitrix24-specific lives in :mod:`.portal`. This
module only reads requests, writes replies (in one ``send`` for small ones, in 64 KiB slices for big
bodies), and carries out the wire-level faults a reply asks for: a delay, a dropped connection, a body cut
short, a slow trickle, a stall half-way, chunked transfer encoding.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["CHUNK", "JSON_TYPE", "PortalServer", "Reply", "Request", "json_reply", "php_parse"]

CHUNK = 64 * 1024
JSON_TYPE = "application/json; charset=utf-8"
_PHRASES = {s.value: s.phrase for s in HTTPStatus}
_MAX_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class Request:
    """What the app needs of one HTTP request."""

    verb: str
    path: str
    query: str
    headers: Message
    body: bytes


@dataclass(slots=True)
class Reply:
    """One answer, or (``drop``) the instruction to close the connection without one.

    ``delay`` is slept before anything is sent; ``truncate`` sends the full Content-Length but only half the
    body, then closes; ``slow`` spreads that many seconds over the body; ``stall`` sends the headers and
    half the body, waits that many seconds (cut short, and the connection dropped, when the server
    stops), then sends the rest; ``chunked`` sends no Content-Length but ``Transfer-Encoding: chunked``.
    ``on_sent(bytes, complete)`` is called once the body has been written (or the write failed).
    """

    status: int = 200
    body: bytes | memoryview = b""
    content_type: str = JSON_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    drop: bool = False
    truncate: bool = False
    slow: float = 0.0
    stall: float = 0.0
    chunked: bool = False
    on_sent: Callable[[int, bool], None] | None = None


def json_reply(status: int, data: Any, delay: float = 0.0) -> Reply:
    """A JSON reply, serialized compactly."""
    body = json.dumps(data, separators=(",", ":")).encode("ascii")
    return Reply(status=status, body=body, delay=delay)


def php_parse(qs: str) -> dict[str, Any]:
    """Parse a query string the way PHP does: ``a[]=1&a[]=2`` is a list, ``f[x]=1`` a dict.

    A container whose keys are exactly ``0..n-1`` becomes a list, as PHP's ``json_encode`` would show it.
    """
    out: dict[str, Any] = {}
    for key, value in parse_qsl(qs, keep_blank_values=True):
        base, bracket, rest = key.partition("[")
        if not bracket or not rest.endswith("]") or not base:
            out[key] = value
            continue
        parts = [base, *rest[:-1].split("][")]
        node = out
        for i, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if i == len(parts) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
    return _listify(out)


def _listify(node: dict[str, Any]) -> Any:
    for key, value in node.items():
        if isinstance(value, dict):
            node[key] = _listify(value)
            if isinstance(node[key], dict) and list(node[key]) == [str(i) for i in range(len(node[key]))]:
                node[key] = list(node[key].values())
    return node


class ConnectionTracker:
    """The open connections of a server, so that stopping it cuts them too: a kept-alive client would
    otherwise keep talking to a server that has stopped listening. Shared by the portal and the S3 server."""

    def __init__(self) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        #: Set by :meth:`close_connections`: stalled replies stop waiting and drop their connection.
        self.stopping = threading.Event()

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            if alive:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        """Shut every open connection, so kept-alive clients see the server go away."""
        self.stopping.set()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class PortalServer(ConnectionTracker, ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that tracks its open connections so ``stop`` can cut them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, port: int, app: Callable[[Request], Reply]) -> None:
        self.app = app
        ConnectionTracker.__init__(self)
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanish mid-request all the time in tests; app errors are caught and recorded by the app.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    server: PortalServer

    def setup(self) -> None:
        super().setup()
        # Headers and body of streamed replies go in separate sends; Nagle would hold the second one back.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, verb: str) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            reply = json_reply(400, {"error": "INVALID_REQUEST", "error_description": "Bad request body"})
        else:
            path, _, query = self.path.partition("?")
            reply = self.server.app(Request(verb, path, query, self.headers, body))
        try:
            self._send(reply)
        except OSError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= _MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, reply: Reply) -> None:
        if reply.delay > 0:
            time.sleep(reply.delay)
        if reply.drop:
            self._drop()
            return
        body = reply.body
        size = len(body)
        lines = [
            f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, '')}",
            "Server: nginx",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {reply.content_type}",
            "Transfer-Encoding: chunked" if reply.chunked else f"Content-Length: {size}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not (reply.truncate or reply.slow > 0 or reply.on_sent or reply.stall > 0 or reply.chunked) and (
            size <= CHUNK
        ):
            self.wfile.write(head + body)
            return
        self._stream(head, reply)

    def _stream(self, head: bytes, reply: Reply) -> None:
        view = memoryview(reply.body)
        limit = len(view) // 2 if reply.truncate else len(view)
        pieces = max(1, -(-limit // CHUNK))
        if reply.slow > 0:
            pieces = max(pieces, min(limit, 10))  # even a small file trickles in a few pieces
        step = max(1, -(-limit // pieces))
        pause = reply.slow / pieces if reply.slow > 0 else 0.0
        stall_at = len(view) // 2 if reply.stall > 0 else -1
        sent = 0
        cut = reply.truncate
        write = self._write_chunk if reply.chunked else self.wfile.write
        try:
            self.wfile.write(head)
            while True:
                if sent == stall_at:
                    stall_at = -1
                    if self.server.stopping.wait(reply.stall):
                        cut = True
                        break
                if sent >= limit:
                    break
                if pause:
                    time.sleep(pause)
                end = min(sent + step, limit)
                if sent < stall_at < end:
                    end = stall_at
                write(view[sent:end])
                sent = end
            if reply.chunked and not cut:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            complete = sent == len(view) and not cut
            if reply.on_sent is not None:
                reply.on_sent(sent, complete)
        if cut:
            self._drop()

    def _write_chunk(self, data: bytes | memoryview) -> None:
        if data:
            self.wfile.write(b"%x\r\n" % len(data) + bytes(data) + b"\r\n")
