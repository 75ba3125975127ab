"""Fetching one row's image bytes: HTTP(S) with retries, redirects and limits, local files, or a member of a tar
shard.

Every failure becomes a short reason string (`http_404`, `timeout`, `connection_refused`, `too_many_redirects`,
`redirect_scheme_not_allowed`, `too_large`, `scheme_not_allowed`, `malformed_url`, ...), never an exception.

HTTP goes through aiohttp on the worker's event loop: one thread keeps `ingest.threads` downloads in flight, where
a thread per download spent more CPU handing the GIL around than fetching (16 urllib3 threads: ~0.41 ms of CPU per
7 kB loopback image; aiohttp: ~0.09 ms). Redirects and retries are followed here rather than by aiohttp, so that
every redirect target passes the same scheme allow-list as the input URL (a `Location: file:///etc/passwd` is a
reason, not an exception), and one deadline covers the whole fetch: connecting, every retry and redirect, and
reading the body (a server that drips a byte a second cannot hold a download past it).
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import tarfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from clipcore.config import IngestConfig

ALLOWED_SCHEMES = ("http", "https")
RETRY_STATUSES = (500, 502, 503, 504)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
RETRY_REASONS = ("timeout", "connection_reset", "connection_refused", "connection_failed")
BACKOFF = 0.2  # seconds before the first retry, doubled for each further one


class FetchError(Exception):
    """A fetch that failed for a recorded reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def classify_url(url: str | None, local_root: Path | None) -> str:
    """`http`, `local` or `tar`, or raise FetchError(`malformed_url` / `scheme_not_allowed`)."""
    if not url or len(url.split(maxsplit=1)) != 1:  # empty, blank, or whitespace inside
        raise FetchError("malformed_url")
    if "#" in url and url.split("#", 1)[0].endswith(".tar") and local_root is not None:
        return "tar"
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise FetchError("malformed_url") from err
    if parts.scheme in ALLOWED_SCHEMES:
        if not parts.hostname:
            raise FetchError("malformed_url")
        return "http"
    if parts.scheme and len(parts.scheme) > 1:  # one letter: a Windows drive, not a scheme
        raise FetchError("scheme_not_allowed")
    if local_root is None:
        raise FetchError("malformed_url")  # a bare path in a URL list
    return "local"


class Fetcher:
    """A worker's fetcher, used on one event loop: `async with Fetcher(config) as fetcher: await fetcher.fetch(url)`.

    Its HTTP session (a connection pool of `config.threads` connections, keep-alive, a DNS cache) lives as long as
    the `async with`.
    """

    def __init__(self, config: IngestConfig, local_root: Path | None = None):
        self.config = config
        self.local_root = str(local_root.resolve()) if local_root is not None else None
        self._root_prefix = os.path.join(self.local_root, "") if self.local_root else ""  # "<root>/"
        # the retries' own budget unless a tighter total is set: `timeout` per attempt
        self.deadline_s = (config.total_timeout if config.total_timeout is not None
                           else config.timeout * (config.retries + 1))
        self._session: aiohttp.ClientSession | None = None
        self._tars: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(limit=max(1, self.config.threads), ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": self.config.user_agent},
                                              timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()
        for tar, _ in self._tars.values():
            tar.close()

    async def fetch(self, url: str) -> bytes:
        """The bytes behind `url`, or raise FetchError with the reason."""
        kind = classify_url(url, self.local_root)
        if kind == "http":
            deadline = asyncio.get_running_loop().time() + self.deadline_s
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._http(url, deadline)
            except TimeoutError as err:  # the whole fetch's deadline (each attempt's own timeouts are reasons inside)
                raise FetchError("timeout") from err
        if kind == "tar":
            return self._tar_member(url)
        return self._local_file(url)

    def _confined(self, url: str) -> str:
        """`url` as a path inside the data root (symlinks resolved first), or FetchError(`outside_data_root`)."""
        path = os.path.realpath(url if os.path.isabs(url) else os.path.join(self.local_root, url))
        if not path.startswith(self._root_prefix):
            raise FetchError("outside_data_root")
        return path

    def _local_file(self, url: str) -> bytes:
        path = self._confined(url)
        try:  # non-blocking: opening a fifo must not hang; fstat on the open file, not a second lookup of the path
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError as err:
            raise FetchError("file_not_found") from err
        except OSError as err:
            raise FetchError("unreadable_file") from err
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > self.config.max_bytes:
            os.close(fd)  # a folder, a device, a fifo or an oversized file: never read
            raise FetchError("too_large" if stat.S_ISREG(info.st_mode) else "not_a_regular_file")
        with os.fdopen(fd, "rb") as file:
            try:
                return file.read()
            except OSError as err:
                raise FetchError("unreadable_file") from err

    async def _http(self, url: str, deadline: float) -> bytes:
        """GET `url`, following at most `max_redirects` redirects, each target checked like an input URL, all before
        `deadline` (the event loop's clock)."""
        for _ in range(self.config.max_redirects + 1):
            response = await self._request(url, deadline)
            if response.status not in REDIRECT_STATUSES:
                return await self._read_body(response)
            location = response.headers.get("Location")
            response.close()  # an unread body is never drained: its connection is closed, not reused
            url = redirect_target(url, location)
        raise FetchError("too_many_redirects")

    async def _request(self, url: str, deadline: float) -> aiohttp.ClientResponse:
        """One response (headers read, body not), after up to `retries` retries of 5xx and network errors."""
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            per_read = min(cfg.timeout, deadline - asyncio.get_running_loop().time())
            if per_read <= 0:
                raise FetchError("timeout")
            try:
                response = await self._session.get(
                    url, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=per_read, sock_read=per_read))
            except (aiohttp.ClientError, OSError, ValueError) as err:
                reason = _reason(err)
                if reason not in RETRY_REASONS or attempt == cfg.retries:
                    raise FetchError(reason) from err
            else:
                if response.status not in RETRY_STATUSES or attempt == cfg.retries:
                    return response
                response.close()
            pause = min(BACKOFF * 2**attempt, deadline - asyncio.get_running_loop().time())
            if pause <= 0:
                raise FetchError("timeout")
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        """The body of a final (non-redirect) response, within `max_bytes`; the connection goes back to the pool only
        when the body was read whole."""
        try:
            body = await self._stream(response)
        except (aiohttp.ClientError, OSError) as err:  # a reset, a body cut short, a body that does not decompress
            response.close()
            raise FetchError(_reason(err)) from err
        except BaseException:  # a reason, or the deadline's cancellation
            response.close()
            raise
        response.release()
        return body

    async def _stream(self, response: aiohttp.ClientResponse) -> bytes:
        max_bytes = self.config.max_bytes
        if response.status >= 400:
            raise FetchError(f"http_{response.status}")
        if response.content_length is not None and response.content_length > max_bytes:
            raise FetchError("too_large")
        # reads of at most a byte past the limit: a body of unknown length (or one that decompresses past its stated
        # length) is cut off there
        chunks, size = [], 0
        while chunk := await response.content.read(max_bytes + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise FetchError("too_large")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _tar_member(self, url: str) -> bytes:
        """A member of a local tar by name; a name repeated in the tar reads its first occurrence (see sources)."""
        shard, member = url.split("#", 1)
        shard = self._confined(shard)
        if shard not in self._tars:
            tar = tarfile.open(shard)  # noqa: SIM115 (kept open for the shard's rows, closed with the fetcher)
            first: dict[str, tarfile.TarInfo] = {}
            for info in tar.getmembers():
                first.setdefault(info.name, info)
            self._tars[shard] = tar, first
        tar, first = self._tars[shard]
        info = first.get(member)
        handle = tar.extractfile(info) if info is not None else None
        if handle is None:
            raise FetchError("no_image")
        return handle.read()


def redirect_target(url: str, location: str | None) -> str:
    """The absolute URL a redirect from `url` leads to, or FetchError(`redirect_<reason>`) when it may not be fetched.

    The target passes the same checks as an input URL, with no local root: only http(s) to a host.
    """
    if not location or not location.strip():
        raise FetchError("redirect_without_location")
    location = location.strip()
    try:
        # an absolute target is checked as written: urljoin would read `http://` (no host) as "this same URL"
        target = location if urlsplit(location).scheme else urljoin(url, location)
        classify_url(target, None)
    except FetchError as err:
        raise FetchError(f"redirect_{err.reason}") from err
    except ValueError as err:  # urlsplit: e.g. an unclosed IPv6 bracket
        raise FetchError("redirect_malformed_url") from err
    return target


def _reason(err: BaseException) -> str:
    """The reason for a network error of one attempt or one body."""
    if isinstance(err, aiohttp.ClientConnectorError):
        refused = isinstance(err.os_error, ConnectionRefusedError) or err.os_error.errno == errno.ECONNREFUSED
        return "connection_refused" if refused else "connection_failed"
    if isinstance(err, TimeoutError):  # aiohttp's per-read and per-connect timeouts
        return "timeout"
    if isinstance(err, aiohttp.ClientPayloadError):  # the body: cut short, or not in its Content-Encoding
        return "bad_content_encoding" if "content-encoding" in str(err).lower() else "connection_reset"
    if isinstance(err, aiohttp.ServerDisconnectedError | ConnectionResetError | aiohttp.ClientConnectionResetError):
        return "connection_reset"
    if isinstance(err, aiohttp.ClientOSError) and err.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection_reset"
    if isinstance(err, aiohttp.ClientResponseError):  # a status line or headers that are not HTTP
        return "bad_response"
    if isinstance(err, aiohttp.InvalidURL | ValueError):
        return "malformed_url"
    return "connection_failed"
