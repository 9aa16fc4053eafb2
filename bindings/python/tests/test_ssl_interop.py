"""The standard library's ssl with libconnect's identity: a Python ssl server reached by a
libconnect client, a Python ssl client reaching a libconnect listener, http.server and urllib,
and asyncio streams."""

from __future__ import annotations

import asyncio
import http.server
import socket
import ssl
import threading
import urllib.request
from typing import List, Optional, Tuple

import pytest

import libconnect

from .support import T, EchoServer, recv_exact


class SslEchoServer:
    """A Python ``socket`` + ``ssl`` server with ``db.ssl_context(True)``: echoes upper-cased
    data; records the peers it served and the errors of refused handshakes."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)
        self.sock.settimeout(0.05)  # so that the loop sees close()
        self.stop = threading.Event()
        self.address: Tuple[str, int] = self.sock.getsockname()[:2]
        self.served: List[Optional[str]] = []
        self.refused: List[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()  # the handshake and the intention check run here
            except libconnect.AuthorizationDenied as e:
                self.refused.append(e)
                continue
            except socket.timeout:  # TimeoutError from 3.10 on
                continue
            except OSError:
                return  # closed
            with conn:
                cert = conn.getpeercert(binary_form=True)
                self.served.append(cert and conn.context.service.authorize(cert).peer)  # type: ignore[attr-defined]
                data = conn.recv(1024)
                conn.sendall(data.upper())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(T)
        self.sock.close()

    def __enter__(self) -> SslEchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_python_ssl_server_reached_by_a_libconnect_client(
    db: libconnect.Service, web: libconnect.Service, api: libconnect.Service
) -> None:
    ctx = db.ssl_context(True)
    assert isinstance(ctx, ssl.SSLContext) and isinstance(ctx, libconnect.ConnectSSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.service is db
    with SslEchoServer(ctx) as server:
        with web.dial_addr(server.address, "db", timeout=T) as conn:
            assert conn.peer_id == db.spiffe_id
            conn.sendall(b"hello")
            assert recv_exact(conn, 5) == b"HELLO"
        # Denied: the server refuses right after the handshake; the client sees the socket go.
        with pytest.raises((libconnect.TlsError, libconnect.ConnectIoError)):
            with api.dial_addr(server.address, "db", timeout=T) as conn:
                conn.sendall(b"hello")
                conn.recv(5)
        for _ in range(100):
            if server.refused:
                break
            threading.Event().wait(0.02)
    assert server.served == [web.spiffe_id]
    [refusal] = server.refused
    assert isinstance(refusal, libconnect.AuthorizationDenied) and isinstance(refusal, ssl.SSLError)
    assert refusal.code == "AUTHORIZATION_DENIED" and "DENY default/api => default/db" in refusal.detail


def test_python_ssl_client_reaches_a_libconnect_listener(db: libconnect.Service, web: libconnect.Service) -> None:
    ctx = web.ssl_context(False)
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with EchoServer(db) as server:
        with ctx.wrap_socket(socket.create_connection(server.address, timeout=T)) as sock:
            assert web.check_peer(sock, "db") == db.spiffe_id
            with pytest.raises(libconnect.TlsError) as info:
                web.check_peer(sock, "billing")
            assert info.value.code == "PEER_IDENTITY_MISMATCH"
            sock.sendall(b"from python ssl")
            assert sock.recv(100) == b"from python ssl"
        assert server.peers == [web.spiffe_id]


def test_python_ssl_client_of_another_ca_is_refused_in_the_handshake(db: libconnect.Service) -> None:
    with libconnect.Agent.dev() as other, other.service("web") as stranger, EchoServer(db) as server:
        ctx = stranger.ssl_context(False)
        with pytest.raises(ssl.SSLError):  # our root does not sign db's leaf either
            with ctx.wrap_socket(socket.create_connection(server.address, timeout=T)) as sock:
                sock.sendall(b"x")
                sock.recv(1)
        assert server.peers == []


def test_http_server_and_urllib(db: libconnect.Service, web: libconnect.Service, api: libconnect.Service) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            peer = db.check_peer(self.connection)  # type: ignore[arg-type]
            body = f"hello {peer.rsplit('/', 1)[-1]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    httpd.socket = db.wrap_server_socket(httpd.socket)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/"
        with urllib.request.urlopen(url, context=web.ssl_context(False), timeout=T) as resp:
            assert resp.read() == b"hello web"
        with pytest.raises(OSError):  # the denied client's connection is dropped
            urllib.request.urlopen(url, context=api.ssl_context(False), timeout=T).close()
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(T)


def test_asyncio_server_reached_by_a_libconnect_client(
    db: libconnect.Service, web: libconnect.Service, api: libconnect.Service
) -> None:
    handled: List[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handled.append(db.check_peer(writer.get_extra_info("ssl_object")))
        data = await reader.read(100)
        writer.write(data.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    def client(svc: libconnect.Service, port: int) -> bytes:
        with svc.dial_addr(("127.0.0.1", port), "db", timeout=T) as conn:
            conn.sendall(b"async")
            return recv_exact(conn, 5)

    async def main() -> None:
        server = await db.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, client, web, port) == b"ASYNC"
        try:
            got = await loop.run_in_executor(None, client, api, port)
            assert got == b""
        except (libconnect.TlsError, libconnect.ConnectIoError):
            pass
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert handled == [web.spiffe_id]  # the denied client never reached the handler


def test_asyncio_open_connection_to_a_libconnect_listener(
    agent: libconnect.Agent, db: libconnect.Service, web: libconnect.Service
) -> None:
    async def main(address: Tuple[str, int]) -> None:
        reader, writer = await web.open_connection("db", addr=address, timeout=T)
        try:
            writer.write(b"streams")
            await writer.drain()
            assert await reader.readexactly(7) == b"streams"
        finally:
            writer.close()
            await writer.wait_closed()
        with pytest.raises(libconnect.TlsError) as info:
            await web.open_connection("billing", addr=f"{address[0]}:{address[1]}", timeout=T)
        assert info.value.code == "PEER_IDENTITY_MISMATCH"
        with pytest.raises(libconnect.ConnectIoError) as refused:
            await web.open_connection("nothing-registered", timeout=T)
        assert refused.value.code == "CONNECTION_REFUSED"

    with EchoServer(db) as server:
        asyncio.run(main(server.address))
        assert server.peers[0] == web.spiffe_id
