"""Fetching one row's image bytes: HTTP(S) with retries, redirects and limits, local files, or a member of a tar
shard.

Every failure becomes a short reason string (`http_404`, `timeout`, `connection_refused`, `too_many_redirects`,
`redirect_scheme_not_allowed`, `too_large`, `scheme_not_allowed`, `malformed_url`, ...), never an exception.

Redirects and retries are followed here rather than by urllib3, so that every redirect target passes the same
scheme allow-list as the input URL (a `Location: file:///etc/passwd` is a reason, not an urllib3 exception) and
one deadline covers the whole fetch: connecting, every retry and redirect, and reading the body (a server that
drips a byte a second cannot hold a download thread past it).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import stat
import tarfile
import threading
import time
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    URLSchemeUnknown,
)

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
    if not url or not url.strip() or any(c.isspace() for c in url.strip()):
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
    """Thread-safe fetcher shared by a worker's download threads."""

    def __init__(self, config: IngestConfig, local_root: Path | None = None):
        self.config = config
        self.local_root = str(local_root.resolve()) if local_root is not None else None
        self._root_prefix = os.path.join(self.local_root, "") if self.local_root else ""  # "<root>/"
        # the retries' own budget unless a tighter total is set: `timeout` per attempt
        self.deadline_s = (config.total_timeout if config.total_timeout is not None
                           else config.timeout * (config.retries + 1))
        # retries=False: urllib3 raises the first error and never follows a redirect; both happen in `_http`
        self.http = urllib3.PoolManager(num_pools=64, maxsize=32, retries=False,
                                        headers={"User-Agent": config.user_agent})
        self._tars: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}
        self._tar_lock = threading.Lock()

    def fetch(self, url: str) -> bytes:
        """The bytes behind `url`, or raise FetchError with the reason."""
        kind = classify_url(url, self.local_root)
        if kind == "http":
            return self._http(url)
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

    def _http(self, url: str) -> bytes:
        """GET `url`, following at most `max_redirects` redirects, each target checked like an input URL."""
        deadline = time.monotonic() + self.deadline_s
        for _ in range(self.config.max_redirects + 1):
            response = self._request(url, deadline)
            if response.status not in REDIRECT_STATUSES:
                return self._read_body(response, deadline)
            location = response.headers.get("Location")
            _discard(response)
            url = redirect_target(url, location)
        raise FetchError("too_many_redirects")

    def _request(self, url: str, deadline: float) -> urllib3.BaseHTTPResponse:
        """One response (headers read, body not), after up to `retries` retries of 5xx and network errors."""
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            per_read = min(cfg.timeout, deadline - time.monotonic())
            if per_read <= 0:
                raise FetchError("timeout")
            try:
                response = self.http.request("GET", url, preload_content=False, redirect=False,
                                             timeout=urllib3.Timeout(connect=per_read, read=per_read))
            except (HTTPError, OSError) as err:
                reason = _reason(err)
                if reason not in RETRY_REASONS or attempt == cfg.retries:
                    raise FetchError(reason) from err
            else:
                if response.status not in RETRY_STATUSES or attempt == cfg.retries:
                    return response
                _discard(response)
            pause = min(BACKOFF * 2**attempt, deadline - time.monotonic())
            if pause <= 0:
                raise FetchError("timeout")
            time.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        """The body of a final (non-redirect) response, within `max_bytes` and before `deadline`.

        The process's watchdog shuts the socket at the deadline: a blocked read returns at once, however slowly the
        bytes come.
        """
        watch = _WATCHDOG.watch(response, deadline)
        complete = False
        try:
            body = self._stream(response)
            if watch.expired:
                raise FetchError("timeout")  # the shut socket looked like the end of a short body
            complete = True
            return body
        except (ReadTimeoutError, TimeoutError) as err:
            raise FetchError("timeout") from err
        except DecodeError as err:
            raise FetchError("bad_content_encoding") from err
        except (HTTPError, HTTPException, OSError) as err:  # a reset, or a body cut short
            raise FetchError("timeout" if watch.expired else "connection_reset") from err
        finally:
            _WATCHDOG.release(watch)  # before the connection goes back to the pool: never shut once reused
            if complete:
                response.release_conn()
            else:
                _discard(response)

    def _stream(self, response: urllib3.BaseHTTPResponse) -> bytes:
        max_bytes = self.config.max_bytes
        if response.status >= 400:
            raise FetchError(f"http_{response.status}")
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise FetchError("too_large")
        # one read of at most a byte past the limit: a body of known length arrives in one piece (reading it in 64 KiB
        # chunks cost 0.06 ms more a 140 kB image), one of unknown length is cut off past the limit
        body = response.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise FetchError("too_large")
        return body

    def _tar_member(self, url: str) -> bytes:
        """A member of a local tar by name; a name repeated in the tar reads its first occurrence (see sources)."""
        shard, member = url.split("#", 1)
        shard = self._confined(shard)
        with self._tar_lock:  # tarfile objects are not thread-safe
            if shard not in self._tars:
                tar = tarfile.open(shard)  # noqa: SIM115 (kept open for the shard's rows)
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


class _Watch:
    """One body being read: its deadline and whether the watchdog shut it."""

    __slots__ = ("deadline", "response", "expired")

    def __init__(self, deadline: float, response: urllib3.BaseHTTPResponse):
        self.deadline, self.response, self.expired = deadline, response, False

    def __lt__(self, other: _Watch) -> bool:  # heap order
        return self.deadline < other.deadline


class _Watchdog:
    """One thread per process that shuts the socket of every body still being read at its fetch's deadline.

    A thread per fetch (a `threading.Timer`) cost more CPU than the rest of a loopback fetch: starting a thread
    hands the GIL back and forth with the new thread. Here a fetch only pushes its deadline on a heap, and the
    thread sleeps until the earliest deadline of a body still being read.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[_Watch] = []
        self._pid = 0  # the thread belongs to the process that started it: a forked child starts its own

    def watch(self, response: urllib3.BaseHTTPResponse, deadline: float) -> _Watch:
        watch = _Watch(deadline, response)
        with self._cond:
            if self._pid != os.getpid():
                self._pid, self._heap = os.getpid(), []
                threading.Thread(target=self._run, name="clipcore-fetch-watchdog", daemon=True).start()
            heapq.heappush(self._heap, watch)
            if self._heap[0] is watch:  # earlier than what the thread sleeps for (rare: deadlines only grow)
                self._cond.notify()
        return watch

    def release(self, watch: _Watch) -> None:
        """The body is read (or failed): the socket is never shut after this returns."""
        with self._cond:
            watch.response = None  # finished entries stay on the heap until the thread's next wake; hold nothing

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0].response is None or self._heap[0].deadline <= now):
                    watch = heapq.heappop(self._heap)
                    if watch.response is not None:
                        watch.expired = True
                        with contextlib.suppress(OSError, RuntimeError, ValueError):  # it may just have finished
                            watch.response.shutdown()
                        watch.response = None
                self._cond.wait(self._heap[0].deadline - now if self._heap else None)


_WATCHDOG = _Watchdog()


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


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Close a response whose body is not read (a redirect, an error status, a failed read) and free its pool slot.

    Closing, not draining: the unread body may be huge or slow, and a connection left mid-body must not be reused.
    """
    response.close()
    response.release_conn()


def _reason(err: BaseException) -> str:
    if isinstance(err, NewConnectionError):  # checked first: urllib3 makes it a ConnectTimeoutError subclass
        return "connection_refused" if "refused" in str(err).lower() else "connection_failed"
    if isinstance(err, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(err, ProtocolError | ConnectionResetError):
        return "connection_reset"
    if isinstance(err, LocationValueError | URLSchemeUnknown):
        return "malformed_url"
    return "connection_failed"
