"""The ingest HTTP client against a loopback server that writes raw responses: every body framing, content-encodings,
keep-alive reuse and stale connections, malformed heads, the request it sends, and the deadline watchdog."""

import gzip
import socket
import threading
import time
import zlib

import pytest

from clipcore.config import IngestConfig
from clipcore.ingest.fetch import Fetcher, FetchError
from clipcore.ingest.http_client import Client, HttpError, _request_parts

BODY = bytes(range(256)) * 40  # 10 kB


def head(status: str = "200 OK", version: str = "HTTP/1.1", **headers) -> bytes:
    lines = [f"{version} {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(body: bytes, size: int = 3000) -> bytes:
    parts = [f"{len(body[i:i + size]):x};ext=1\r\n".encode() + body[i:i + size] + b"\r\n"
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\nX-Trailer: yes\r\n\r\n"


RESPONSES = {  # path -> (raw response, close the connection after it)
    "/length": (head(Content_Length=len(BODY)) + BODY, False),
    "/chunked": (head(Transfer_Encoding="chunked") + chunked(BODY), False),
    "/close-delimited": (head(version="HTTP/1.0") + BODY, True),
    "/http10-keepalive": (head(version="HTTP/1.0", Connection="keep-alive", Content_Length=len(BODY)) + BODY, False),
    "/connection-close": (head(Connection="close", Content_Length=len(BODY)) + BODY, True),
    "/gzip": (head(Content_Encoding="gzip", Content_Length=len(gzip.compress(BODY))) + gzip.compress(BODY), False),
    "/gzip-members": (head(Content_Encoding="gzip", Transfer_Encoding="chunked")
                      + chunked(gzip.compress(BODY[:5000]) + gzip.compress(BODY[5000:])), False),
    "/deflate-raw": (head(Content_Encoding="deflate", Connection="close")
                     + zlib.compress(BODY)[2:-4], True),  # raw deflate, as some servers send it
    "/deflate": (head(Content_Encoding="deflate", Connection="close") + zlib.compress(BODY), True),
    "/unknown-encoding": (head(Content_Encoding="br", Content_Length=len(BODY)) + BODY, False),
    "/bomb": (head(Content_Encoding="gzip", Connection="close") + gzip.compress(b"\0" * 5_000_000), True),
    "/big-chunked": (head(Transfer_Encoding="chunked") + chunked(b"x" * 3_000_000, 65536), False),
    "/big-close": (head(version="HTTP/1.0") + b"x" * 3_000_000, True),
    "/interim": (head("100 Continue") + head("103 Early Hints", Link="</a.css>")
                 + head(Content_Length=len(BODY)) + BODY, False),
    "/cut-short": (head(Content_Length=len(BODY)) + BODY[:1000], True),
    "/bad-chunk": (head(Transfer_Encoding="chunked") + b"zz\r\nabc\r\n0\r\n\r\n", True),
    "/garbage": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", True),
    "/silent": (b"", True),  # closes without a response
    "/no-content": (head("204 No Content", Content_Encoding="gzip"), False),
    "/404": (head("404 Not Found", Content_Length=9) + b"not found", False),
}


class RawServer:
    """Loopback server answering each request with RESPONSES[path]; counts connections, keeps each request's head.

    `drop_idle`: close every kept-alive connection right after a response, without telling the client (as a server
    whose keep-alive timeout expired does), so the client's next request on it finds it closed.
    """

    def __init__(self, drop_idle: bool = False, tls=None):
        self.drop_idle, self.tls = drop_idle, tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:  # a client that refused the certificate
                conn.close()
                return
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:  # the client gave up on this connection
                        return
                    if not data:
                        return
                    buf += data
                request, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append(request)
                path = request.split(b" ")[1].decode()
                response, close = RESPONSES.get(path.split("?")[0], (head("404 Not Found", Content_Length=0), False))
                conn.sendall(response)
                if close or self.drop_idle:
                    return

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.sock.close()


@pytest.fixture
def server():
    srv = RawServer()
    yield srv
    srv.close()


def get(client: Client, url: str, max_bytes: int = 2_000_000) -> bytes:
    response = client.get(url, timeout=5)
    body = response.read(max_bytes)
    response.release()
    return body


@pytest.mark.parametrize("path", ["/length", "/chunked", "/close-delimited", "/http10-keepalive", "/connection-close",
                                  "/gzip", "/gzip-members", "/deflate", "/deflate-raw", "/interim"])
def test_every_framing_and_encoding_gives_the_body(server, path):
    assert get(Client("t/1"), server.url(path)) == BODY


def test_unknown_encodings_are_left_as_sent_and_empty_bodies_stay_empty(server):
    client = Client("t/1")
    assert get(client, server.url("/unknown-encoding")) == BODY  # as urllib3 without brotli
    response = client.get(server.url("/no-content"), timeout=5)
    assert response.status == 204 and response.read(100) == b""


def test_limits_and_broken_responses_have_their_reasons(server):
    client = Client("t/1")
    cases = {"/bomb": "too_large", "/big-chunked": "too_large", "/big-close": "too_large",
             "/cut-short": "connection_reset", "/bad-chunk": "connection_reset"}
    for path, reason in cases.items():
        with pytest.raises(HttpError) as err:
            get(client, server.url(path))
        assert err.value.reason == reason, path
    for path in ("/garbage", "/silent"):  # no valid head: fails at the request, as urllib3's ProtocolError did
        with pytest.raises(HttpError) as err:
            client.get(server.url(path), timeout=5)
        assert err.value.reason == "connection_reset", path


def test_keep_alive_reuses_one_connection_and_closes_when_told(server):
    client = Client("t/1")
    for _ in range(5):
        assert get(client, server.url("/length")) == BODY
        assert get(client, server.url("/chunked")) == BODY
    assert server.connections == 1
    for _ in range(3):
        get(client, server.url("/close-delimited"))
    assert server.connections == 3  # the first went on the kept connection; a body ended by the close ends it
    response = client.get(server.url("/404"), timeout=5)
    assert response.status == 404
    response.close()  # an unread body: the connection is dropped
    get(client, server.url("/length"))
    assert server.connections == 5


def test_a_connection_the_server_closed_meanwhile_is_retried_once_on_a_fresh_one():
    server = RawServer(drop_idle=True)
    try:
        client = Client("t/1")
        for _ in range(4):
            assert get(client, server.url("/length")) == BODY
        assert server.connections == 4
    finally:
        server.close()


def test_the_request_sent(server):
    get(Client("clip-pipeline/9"), server.url("/length?a=1&b=%2f#fragment"))
    request = server.requests[-1].decode()
    assert request.splitlines() == ["GET /length?a=1&b=%2F HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
                                    "Accept-Encoding: identity", "User-Agent: clip-pipeline/9"]


def test_request_parts_as_urllib3_sends_them():
    assert _request_parts("http://Example.COM/a b/é?q=ü#f") == (
        "http", "example.com", 80, "example.com", "/a%20b/%C3%A9?q=%C3%BC")
    assert _request_parts("https://h.example:443")[2:] == (443, "h.example", "/")
    assert _request_parts("http://h.example:8080/x/../y/./z")[2:] == (8080, "h.example:8080", "/y/z")
    assert _request_parts("http://[::1]:9000/a")[1:4] == ("::1", 9000, "[::1]:9000")
    assert _request_parts("http://bücher.example/")[1] == "xn--bcher-kva.example"
    for url in ("http://h.example:99999/", "http://h.example:port/", "ftp://h.example/"):
        with pytest.raises(HttpError) as err:
            _request_parts(url)
        assert err.value.reason == "malformed_url", url


def test_idle_connections_are_bounded_per_origin_and_in_origins():
    servers = [RawServer() for _ in range(3)]
    try:
        client = Client("t/1", max_origins=2, max_per_origin=1)
        for srv in servers:
            get(client, srv.url("/length"))
        assert len(client._idle) == 2  # the least recently used origin's connection was closed
        responses = [client.get(servers[2].url("/length"), timeout=5) for _ in range(2)]  # two at once
        for response in responses:
            response.read(100_000)
            response.release()
        assert len(client._idle[("http", "127.0.0.1", servers[2].port)]) == 1
    finally:
        for srv in servers:
            srv.close()


def test_connect_failures_have_their_reasons():
    client = Client("t/1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    with pytest.raises(HttpError) as err:
        client.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert err.value.reason == "connection_refused"
    with pytest.raises(HttpError) as err:
        client.get("http://no-such-host.invalid/", timeout=2)
    assert err.value.reason == "connection_failed"


def test_the_watchdog_cuts_a_body_at_the_deadline_and_a_fast_fetch_is_untouched(server):
    """A server that sends its head at once and then nothing: the per-read timeout (5 s) would wait; the fetch's
    total deadline (0.5 s) ends it, as `timeout`. Fetches before and after on the same Fetcher are not cut."""
    RESPONSES["/stall"] = (head(Content_Length=1000) + b"x" * 10, False)
    try:
        fetcher = Fetcher(IngestConfig(timeout=5.0, retries=0, total_timeout=0.5))
        assert fetcher.fetch(server.url("/length")) == BODY
        start = time.monotonic()
        with pytest.raises(FetchError) as err:
            fetcher.fetch(server.url("/stall"))
        assert err.value.reason == "timeout" and time.monotonic() - start < 1.5
        for _ in range(20):
            assert fetcher.fetch(server.url("/gzip")) == BODY
    finally:
        del RESPONSES["/stall"]


def self_signed(tmp_path):
    """(cert.pem, key.pem) for 127.0.0.1, made with `cryptography` (skipped without it)."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_https_verifies_the_certificate_keeps_alive_and_is_cut_at_the_deadline(tmp_path):
    import ssl

    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = RawServer(tls=tls)
    url = f"https://127.0.0.1:{server.port}"
    RESPONSES["/stall"] = (head(Content_Length=1000) + b"x" * 10, False)
    try:
        with pytest.raises(HttpError) as err:  # a certificate no system CA signed
            Client("t/1").get(url + "/length", timeout=5)
        assert err.value.reason == "connection_failed"
        fetcher = Fetcher(IngestConfig(timeout=5.0, retries=0, total_timeout=0.5))
        fetcher.http._tls = ssl.create_default_context(cafile=str(cert))
        before = server.connections
        for _ in range(3):
            assert fetcher.fetch(url + "/chunked") == BODY
        assert server.connections == before + 1
        start = time.monotonic()
        with pytest.raises(FetchError) as err:
            fetcher.fetch(url + "/stall")
        assert err.value.reason == "timeout" and time.monotonic() - start < 1.5
    finally:
        del RESPONSES["/stall"]
        server.close()
