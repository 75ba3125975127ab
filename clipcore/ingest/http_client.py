"""A small HTTP/1.1 client for image downloads: GET only, keep-alive connections shared by a worker's threads, the
response head parsed by hand.

Why not urllib3: on loopback its request path (pool keys, header objects, http.client's email-parser headers, the
response wrapper) cost about 250 us of CPU per image, as much as decoding the image; this exchange costs about 40.
It covers what image URLs need: http and https (the system's CAs, SNI, hostname check), bodies framed by
Content-Length, chunked or the connection's close, gzip/deflate content-encoding (what urllib3 decodes without
optional packages), HTTP/1.0 and 1.1, interim 1xx responses. A kept-alive connection that the server closed meanwhile
is retried once on a fresh one, before any byte of the response came. Failures are `HttpError(reason)`, with the
reasons of `clipcore.ingest.fetch`.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import weakref
import zlib
from collections import OrderedDict
from urllib.parse import urlsplit

from urllib3.util import parse_url

MAX_LINE = 65536  # longest status or header line, as http.client
MAX_HEADERS = 100
SAFE_TARGET = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")
"""A request target sent as written: only characters a URL may hold unescaped and no `%` (urllib3 normalizes escapes
and dot segments, and so does `_target` for every other target)."""
DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpError(Exception):
    """A failed exchange; `reason` as in `clipcore.ingest.fetch` (timeout, connection_refused, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Stale(Exception):
    """A reused connection failed before any byte of a response came: the server had closed it."""


class Client:
    """GET over keep-alive connections, shared by threads (each connection serves one exchange at a time).

    Idle connections are kept for at most `max_origins` (scheme, host, port) origins, least recently used dropped,
    and `max_per_origin` per origin.
    """

    def __init__(self, user_agent: str, max_origins: int = 64, max_per_origin: int = 32):
        self._head_tail = f"\r\nAccept-Encoding: identity\r\nUser-Agent: {user_agent}\r\n\r\n".encode("latin-1")
        self.max_origins, self.max_per_origin = max_origins, max_per_origin
        self._idle: OrderedDict[tuple[str, str, int], list[_Connection]] = OrderedDict()
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        weakref.finalize(self, _close_all, self._idle)

    def get(self, url: str, timeout: float) -> Response:
        """Send GET `url` and read the response's head (the body stays on the connection: `Response.read`).

        `timeout` bounds connecting and each read. Raises HttpError.
        """
        scheme, host, port, host_header, target = _request_parts(url)
        request = b"GET " + target.encode("ascii") + b" HTTP/1.1\r\nHost: " + host_header.encode("ascii") \
            + self._head_tail
        origin = (scheme, host, port)
        conn = self._checkout(origin)
        if conn is not None:
            try:
                return conn.exchange(request, timeout, self)
            except _Stale:
                conn.close()
        conn = _Connection(origin, timeout, self._tls_context() if scheme == "https" else None)
        try:
            return conn.exchange(request, timeout, self)
        except _Stale as err:
            raise HttpError("connection_reset") from err

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            context = ssl.create_default_context()  # the system's CAs, hostname check
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls = context
        return self._tls

    def _checkout(self, origin: tuple[str, str, int]) -> _Connection | None:
        with self._lock:
            idle = self._idle.get(origin)
            return idle.pop() if idle else None

    def checkin(self, conn: _Connection) -> None:
        """Keep `conn` (its last response read whole) for the next request to its origin, or close it."""
        dropped: list[_Connection] = []
        with self._lock:
            idle = self._idle.get(conn.origin)
            if idle is None:
                idle = self._idle[conn.origin] = []
                if len(self._idle) > self.max_origins:
                    dropped = self._idle.popitem(last=False)[1]
            else:
                self._idle.move_to_end(conn.origin)
            if len(idle) < self.max_per_origin:
                idle.append(conn)
            else:
                dropped.append(conn)
        for old in dropped:
            old.close()


class _Connection:
    """One TCP (or TLS) connection to one origin."""

    def __init__(self, origin: tuple[str, str, int], timeout: float, tls: ssl.SSLContext | None):
        self.origin = origin
        self.used = False
        try:
            sock = socket.create_connection(origin[1:], timeout=timeout)
        except TimeoutError as err:
            raise HttpError("timeout") from err
        except ConnectionRefusedError as err:
            raise HttpError("connection_refused") from err
        except (OSError, UnicodeError) as err:  # no such host, unreachable network, ...
            raise HttpError("connection_failed") from err
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=origin[1])
        except TimeoutError as err:
            sock.close()
            raise HttpError("timeout") from err
        except OSError as err:  # ssl.SSLError too: a bad certificate, a failed handshake
            sock.close()
            raise HttpError("connection_failed") from err
        self.sock = sock
        self.file = sock.makefile("rb")

    def exchange(self, request: bytes, timeout: float, client: Client) -> Response:
        reused, self.used = self.used, True
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(request)
            status, version, headers = self._read_head(reused)
        except _Stale:
            raise
        except TimeoutError as err:
            self.close()
            raise HttpError("timeout") from err
        except (OSError, ValueError) as err:  # a reset, a malformed head
            self.close()
            raise HttpError("connection_reset") from err
        return Response(self, client, status, version, headers)

    def _read_head(self, reused: bool) -> tuple[int, str, dict[str, str]]:
        while True:
            try:
                line = self.file.readline(MAX_LINE + 1)
            except (ConnectionResetError, BrokenPipeError) as err:
                if reused:
                    raise _Stale from err
                raise
            if not line:
                if reused:
                    raise _Stale
                raise ValueError("the server closed the connection without a response")
            version, status, headers = _parse_head(line, self.file)
            if not 100 <= status < 200:  # 1xx: an interim response, the final one follows
                return status, version, headers
            reused = False

    def shutdown(self) -> None:
        """Make a read blocked in another thread return now (the socket's base shutdown: TLS state untouched)."""
        socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Response:
    """A response whose head is read; its body is read by `read` (then the connection is kept) or dropped by `close`."""

    def __init__(self, conn: _Connection, client: Client, status: int, version: str, headers: dict[str, str]):
        self.conn, self.client = conn, client
        self.status, self.headers = status, headers
        tokens = headers.get("connection", "").lower()
        self.keep_alive = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
        self._done = False

    def read(self, max_bytes: int) -> bytes:
        """The whole body, decoded (gzip/deflate); raises HttpError(`too_large`, `timeout`, `connection_reset`,
        `bad_content_encoding`). A failed read closes the connection; after a whole one, `release` keeps it."""
        try:
            raw = self._read_raw(max_bytes)
        except TimeoutError as err:
            self.close()
            raise HttpError("timeout") from err
        except HttpError:
            self.close()
            raise
        except (OSError, ValueError) as err:  # a reset, a body cut short, a bad chunk size
            self.close()
            raise HttpError("connection_reset") from err
        return _decode(raw, self.headers.get("content-encoding", ""), max_bytes)

    def _read_raw(self, max_bytes: int) -> bytes:
        file = self.conn.file
        if self.status in (204, 304):
            return b""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return _read_chunked(file, max_bytes)
        length = self.headers.get("content-length")
        if length is not None:
            size = int(length.split(",")[0])  # a repeated header joined: the first value (they must agree)
            if size > max_bytes:
                raise HttpError("too_large")
            body = file.read(size)
            if len(body) < size:
                raise ValueError(f"body cut short: {len(body)} of {size} bytes")
            return body
        self.keep_alive = False  # the body ends where the connection does
        chunks, size = [], 0
        while chunk := file.read1(65536):
            size += len(chunk)
            if size > max_bytes:
                raise HttpError("too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def shutdown(self) -> None:
        self.conn.shutdown()

    def release(self) -> None:
        """The body was read whole: keep the connection for the next request, if the server allows."""
        if not self._done:
            self._done = True
            if self.keep_alive:
                self.client.checkin(self.conn)
            else:
                self.conn.close()

    def close(self) -> None:
        """Drop the connection with the body unread (a redirect, an error status, a failed read)."""
        if not self._done:
            self._done = True
            self.conn.close()


def _request_parts(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, Host header, request target) of an http(s) URL; HttpError(`malformed_url`) if none."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError as err:  # a port out of range or not a number
        raise HttpError("malformed_url") from err
    if scheme not in DEFAULT_PORTS or not host:
        raise HttpError("malformed_url")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if not SAFE_TARGET.fullmatch(target) or "/." in target:
        target = _target(url)
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as err:
            raise HttpError("malformed_url") from err
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal
    header = name if port is None or port == DEFAULT_PORTS[scheme] else f"{name}:{port}"
    return scheme, host, port or DEFAULT_PORTS[scheme], header, target


def _target(url: str) -> str:
    """The request target as urllib3 sends it: invalid characters percent-encoded, escapes upper-cased, dot
    segments removed."""
    try:
        return parse_url(url).request_uri
    except ValueError as err:  # urllib3's LocationParseError is one
        raise HttpError("malformed_url") from err


def _parse_head(status_line: bytes, file) -> tuple[str, int, dict[str, str]]:
    """(version, status, headers with lower-case names) from a status line and the header lines after it."""
    if len(status_line) > MAX_LINE:
        raise ValueError("status line too long")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ValueError("header line too long")
        if line in (b"\r\n", b"\n", b""):
            return parts[0].decode("ascii"), int(parts[1]), headers
        name, sep, value = line.decode("latin-1").partition(":")
        if sep and name.strip():
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise ValueError(f"more than {MAX_HEADERS} headers")


def _read_chunked(file, max_bytes: int) -> bytes:
    chunks, size = [], 0
    while True:
        line = file.readline(MAX_LINE + 1)
        if not line.endswith(b"\n"):
            raise ValueError("chunk size line cut short")
        length = int(line.split(b";", 1)[0].strip(), 16)
        if length == 0:
            break
        size += length
        if size > max_bytes:
            raise HttpError("too_large")
        chunk = file.read(length)
        if len(chunk) < length or file.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
            raise ValueError("chunk cut short")
        chunks.append(chunk)
    while file.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):  # trailer fields: not needed
        pass
    return b"".join(chunks)


def _decode(body: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """Undo gzip/deflate content-encodings (the last applied first); others are left as they are, as urllib3 does
    without its optional decoders. HttpError(`bad_content_encoding`), or (`too_large`) past `max_bytes` decoded."""
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",")]):
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, max_bytes)
        elif coding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send it
            try:
                body = _inflate(body, zlib.MAX_WBITS, max_bytes)
            except HttpError as err:
                if err.reason != "bad_content_encoding":
                    raise
                body = _inflate(body, -zlib.MAX_WBITS, max_bytes)
    return body


def _inflate(data: bytes, wbits: int, max_bytes: int) -> bytes:
    """Decompress every member (gzip allows several in a row), stopping past `max_bytes` of output."""
    out, size = [], 0
    try:
        while data:
            inflater = zlib.decompressobj(wbits)
            chunk = inflater.decompress(data, max_bytes + 1 - size)
            size += len(chunk)
            if size > max_bytes:
                raise HttpError("too_large")
            out.append(chunk)
            data = inflater.unused_data.lstrip(b"\0") if inflater.eof and wbits > zlib.MAX_WBITS else b""
    except zlib.error as err:
        raise HttpError("bad_content_encoding") from err
    return b"".join(out)


def _close_all(idle: OrderedDict) -> None:
    for conns in idle.values():
        for conn in conns:
            conn.close()
    idle.clear()
