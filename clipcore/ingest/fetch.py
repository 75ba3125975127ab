"""Fetching one row's image bytes: HTTP(S) with retries and limits, local files, or a member of a tar shard.

Every failure becomes a short reason string (`http_404`, `timeout`, `connection_refused`,
`too_many_redirects`, `too_large`, `scheme_not_allowed`, `malformed_url`, ...), never an exception.
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)

from clipcore.config import IngestConfig

ALLOWED_SCHEMES = ("http", "https")
RETRY_STATUSES = (500, 502, 503, 504)
BACKOFF = 0.2  # seconds; urllib3 doubles it per retry


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
        retry = urllib3.Retry(
            total=config.retries + config.max_redirects, connect=config.retries, read=config.retries,
            status=config.retries, other=0, redirect=config.max_redirects, status_forcelist=RETRY_STATUSES,
            backoff_factor=BACKOFF, raise_on_redirect=True, raise_on_status=False,
            respect_retry_after_header=False, allowed_methods=frozenset({"GET"}),
        )
        self.http = urllib3.PoolManager(num_pools=64, maxsize=32, retries=retry,
                                        headers={"User-Agent": config.user_agent})
        self._tars: dict[str, tarfile.TarFile] = {}
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
        cfg = self.config
        try:
            response = self.http.request("GET", url, preload_content=False, timeout=urllib3.Timeout(
                connect=cfg.timeout, read=cfg.timeout))
        except MaxRetryError as err:
            raise FetchError(_reason(err.reason)) from err
        except (ReadTimeoutError, ConnectTimeoutError) as err:
            raise FetchError("timeout") from err
        except (ProtocolError, OSError) as err:
            raise FetchError("connection_reset") from err
        try:
            if response.status >= 400:
                raise FetchError(f"http_{response.status}")
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise FetchError("too_large")
            chunks, size = [], 0
            for chunk in response.stream(65536):
                size += len(chunk)
                if size > cfg.max_bytes:
                    raise FetchError("too_large")
                chunks.append(chunk)
            return b"".join(chunks)
        except (ReadTimeoutError, TimeoutError) as err:
            raise FetchError("timeout") from err
        except (ProtocolError, OSError) as err:
            raise FetchError("connection_reset") from err
        finally:
            response.release_conn()

    def _tar_member(self, url: str) -> bytes:
        shard, member = url.split("#", 1)
        shard = self._confined(shard)
        with self._tar_lock:  # tarfile objects are not thread-safe
            tar = self._tars.get(shard)
            if tar is None:
                tar = self._tars[shard] = tarfile.open(shard)  # noqa: SIM115 (kept open for the shard's rows)
            handle = tar.extractfile(member)
            if handle is None:
                raise FetchError("no_image")
            return handle.read()


def _reason(cause: BaseException | None) -> str:
    if isinstance(cause, ResponseError):
        return "too_many_redirects" if "redirect" in str(cause).lower() else "http_5xx"
    if isinstance(cause, NewConnectionError):  # checked first: urllib3 makes it a ConnectTimeoutError subclass
        return "connection_refused" if "refused" in str(cause).lower() else "connection_failed"
    if isinstance(cause, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(cause, ProtocolError):
        return "connection_reset"
    return "connection_failed"
