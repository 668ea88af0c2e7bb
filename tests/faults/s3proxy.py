"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of the moto S3 server.

Every request is parsed (request line, headers, a Content-Length or chunked body) and handed to ``policy``,
which returns what to do with it:

* ``PASS``: forward it and relay the response;
* ``REFUSE``: close the client connection without an answer (a server that died before answering);
* ``CUT_REQUEST``: forward the head and half of the body upstream, then drop both connections (a server that
  died mid-upload);
* ``CUT_RESPONSE``: forward the request, relay only half of the response body, then drop (died mid-read);
* ``SLOW_DOWN``: answer ``503 SlowDown`` without forwarding (throttling);
* a float: sleep that many seconds, then ``PASS`` (a slow server).

``down()`` closes the listening socket and every open connection (clients see "connection refused"), ``up()``
listens again on the same port. ``requests`` records ``(method, path)`` of every request seen. Used only by
the
fault tests; the Storage under test is pointed at ``proxy.url`` through ``StorageConfig.endpoint_url``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

PASS, REFUSE, CUT_REQUEST, CUT_RESPONSE, SLOW_DOWN = (
    "pass",
    "refuse",
    "cut_request",
    "cut_response",
    "slow_down",
)
_SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # "/bucket/key?query" as sent
    body_bytes: int

    @property
    def key(self) -> str:
        """The object path without the query string: ``bucket/key``."""
        return self.path.split("?", 1)[0].lstrip("/")


Policy = Callable[[Request], "str | float"]


class _Closed(Exception):
    """The peer closed the connection."""


def _read_until(sock: socket.socket, buf: bytes, marker: bytes) -> tuple[bytes, bytes]:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed
        buf += chunk
    head, _, rest = buf.partition(marker)
    return head + marker, rest


def _read_exact(sock: socket.socket, buf: bytes, n: int) -> tuple[bytes, bytes]:
    while len(buf) < n:
        chunk = sock.recv(max(65536, n - len(buf)))
        if not chunk:
            raise _Closed
        buf += chunk
    return buf[:n], buf[n:]


def _read_chunked(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """The raw bytes of a chunked body (sizes, data, trailers), as they are to be forwarded."""
    out = b""
    while True:
        line, buf = _read_until(sock, buf, b"\r\n")
        out += line
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer, buf = _read_until(sock, buf, b"\r\n")
                out += trailer
                if trailer == b"\r\n":
                    return out, buf
        data, buf = _read_exact(sock, buf, size + 2)
        out += data


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
    return lines[0], fields


def _body(sock: socket.socket, buf: bytes, fields: dict[str, str]) -> tuple[bytes, bytes]:
    if fields.get("transfer-encoding", "").lower() == "chunked":
        return _read_chunked(sock, buf)
    return _read_exact(sock, buf, int(fields.get("content-length", "0")))


class FaultProxy:
    """See the module docstring. ``policy`` may be replaced at any time (it is read per request)."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", int(parts.port or 80))
        self.policy: Policy = lambda req: PASS
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, contains: str = "") -> int:
        """How many requests with ``method`` whose path contains ``contains`` were seen."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and contains in p)

    # -- listening ---------------------------------------------------------------------------------------
    def up(self) -> None:
        """Listen (again) on 127.0.0.1, on the same port as before when there was one."""
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and drop every open connection: new connections are refused."""
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            _close(c)

    def close(self) -> None:
        self.down()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return  # the listener was closed
            if self._listener is not sock:
                _close(client)
                return
            with self._lock:
                self._conns.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    # -- one client connection ---------------------------------------------------------------------------
    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        cbuf = ubuf = b""
        try:
            while True:
                head, cbuf = _read_until(client, cbuf, b"\r\n\r\n")
                request_line, fields = _headers(head)
                if fields.get("expect", "").lower() == "100-continue":  # answer it here, forward without it
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = b"\r\n".join(
                        ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"expect:")
                    )
                body, cbuf = _body(client, cbuf, fields)
                method, path = request_line.split(" ")[:2]
                req = Request(method, path, len(body))
                with self._lock:
                    self.requests.append((method, path))
                action = self.policy(req)
                if action == REFUSE:
                    return
                if action == SLOW_DOWN:
                    client.sendall(
                        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: "
                        + str(len(_SLOW_DOWN_BODY)).encode()
                        + b"\r\n\r\n"
                        + (b"" if method == "HEAD" else _SLOW_DOWN_BODY)  # HEAD answers carry no body
                    )
                    continue
                if isinstance(action, (int, float)) and not isinstance(action, bool):
                    time.sleep(float(action))
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    with self._lock:
                        self._conns.add(upstream)
                if action == CUT_REQUEST:
                    upstream.sendall(head + body[: len(body) // 2])
                    return
                upstream.sendall(head + body)
                rhead, ubuf = _read_until(upstream, ubuf, b"\r\n\r\n")
                status_line, rfields = _headers(rhead)
                status = int(status_line.split(" ")[1])
                if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    rbody = b""
                else:
                    rbody, ubuf = _body(upstream, ubuf, rfields)
                if action == CUT_RESPONSE:
                    client.sendall(rhead + rbody[: len(rbody) // 2])
                    return
                client.sendall(rhead + rbody)
        except (_Closed, OSError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    with self._lock:
                        self._conns.discard(s)
                    _close(s)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
