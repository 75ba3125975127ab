"""A real HTTP server on 127.0.0.1, started by the tests, serving good images and every bad case."""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def jpeg(width: int = 300, height: int = 200, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bomb_png(side: int = 3000) -> bytes:
    """A few-kB PNG that decodes to side x side pixels."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


# path -> Location header (None: a redirect without one)
REDIRECTS = {
    "/redirect-file": "file:///etc/passwd",
    "/redirect-ftp": "ftp://example.com/a.jpg",
    "/redirect-no-host": "http://",
    "/redirect-garbage": "http://[not-an-ip",
    "/redirect-spaces": "not a url at all",
    "/redirect-none": None,
}


class Handler(BaseHTTPRequestHandler):
    flaky_hits: dict[str, int] = {}
    user_agents: list[str] = []
    lock = threading.Lock()
    in_flight = 0  # requests to /held/ being answered now, and the most there ever were at once
    most_in_flight = 0

    def log_message(self, *args):  # keep test output quiet
        pass

    def send(self, status: int, body: bytes = b"", content_type: str = "image/jpeg", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def drip(self, body: bytes, every: float) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(min(len(body), 40)):  # at most a minute, so a test's server thread always ends
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            time.sleep(every)

    def do_GET(self):  # noqa: N802 (http.server's name)
        Handler.user_agents.append(self.headers.get("User-Agent", ""))
        path = self.path
        if path.startswith("/good/"):
            seed = int(path.split("/")[-1].split(".")[0])
            return self.send(200, jpeg(seed=seed), "application/octet-stream")  # the type must not matter
        if path == "/404":
            return self.send(404, b"not found", "text/html")
        if path == "/500":
            return self.send(500, b"oops", "text/html")
        if path.startswith("/flaky"):  # fails once, then serves
            hits = Handler.flaky_hits[path] = Handler.flaky_hits.get(path, 0) + 1
            return self.send(503 if hits == 1 else 200, b"busy" if hits == 1 else jpeg(seed=7))
        if path.startswith("/held/"):  # answered after 0.3 s, counting how many are held at once
            with Handler.lock:
                Handler.in_flight += 1
                Handler.most_in_flight = max(Handler.most_in_flight, Handler.in_flight)
            time.sleep(0.3)
            with Handler.lock:
                Handler.in_flight -= 1
            return self.send(200, jpeg(seed=int(path.split("/")[-1].split(".")[0])))
        if path == "/slow":
            time.sleep(3)
            return self.send(200, jpeg())
        if path == "/loop":
            return self.send(302, headers={"Location": "/loop"})
        if path == "/redirect":
            return self.send(302, headers={"Location": "/good/3.jpg"})
        if path in REDIRECTS:  # hostile redirect targets
            return self.send(302, headers={"Location": REDIRECTS[path]} if REDIRECTS[path] is not None else {})
        if path == "/drip":  # a valid header, then one byte of body every 1.5 s
            return self.drip(jpeg(), 1.5)
        if path == "/bad-gzip":
            return self.send(200, b"not gzip at all", headers={"Content-Encoding": "gzip"})
        if path == "/empty":
            return self.send(200, b"")
        if path == "/html":
            return self.send(200, b"<html><body>Error 404</body></html>", "image/jpeg")
        if path == "/truncated":
            return self.send(200, jpeg()[:1500])
        if path == "/bomb":
            return self.send(200, bomb_png(), "image/png")
        if path == "/big":
            return self.send(200, b"\xff" * 3_000_000)
        if path == "/big-chunked":  # no Content-Length to refuse it by: the body itself must be cut off
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"%x\r\n%s\r\n" % (100_000, b"\xff" * 100_000))
            self.wfile.write(b"0\r\n\r\n")
            return None
        if path == "/not-http":  # bytes that are no HTTP response at all
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            self.close_connection = True
            return None
        if path == "/reset":
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.request.close()
            return None
        return self.send(404, b"", "text/plain")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients that time out break the pipe: expected here
        pass


class ImageServer:
    """Context manager: `with ImageServer() as base:` gives `http://127.0.0.1:<port>`."""

    def __enter__(self) -> str:
        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
