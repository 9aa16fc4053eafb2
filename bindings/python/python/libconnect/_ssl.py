"""Standard-library glue: ``ssl.SSLContext`` objects that carry a service's identity, the peer
checks that go with them, asyncio streams, and ``Connection.makefile``.

The native methods ``Service.ssl_context``, ``check_peer``, ``wrap_server_socket``,
``open_connection``, ``start_server`` and ``Connection.makefile`` call the functions here.

Python's ``ssl`` module cannot run code inside the handshake, so the intention check that
libconnect's own listener applies *during* the handshake happens here *immediately after* it:
the server-side contexts made by :func:`ssl_context` use SSL socket and object classes whose
``do_handshake`` authorizes the peer's certificate before returning. A refused peer is
disconnected before the application reads or writes a byte, and servers built on ``socket`` +
``ssl`` (``http.server``, ``socketserver``) or on asyncio (``asyncio.start_server``, aiohttp,
uvicorn) never see it. The client has already finished its side of the handshake by then (TLS
1.3), so it sees the refusal as the connection closing, not as a TLS alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import shutil
import ssl
import tempfile
import weakref
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Optional, Tuple, Union

from ._errors import AuthorizationDenied, CertificateError, ConnectError, ConnectIoError, ConnectTimeout

if TYPE_CHECKING:
    from ._native import Connection, Service, Subscription

__all__ = ["ConnectSSLContext"]

_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Optional[Awaitable[None]]]


class _HandshakeDenied(AuthorizationDenied, ssl.SSLError):
    """An intention refused the peer right after the handshake.

    Both an :class:`AuthorizationDenied` (for code using ``socket`` + ``ssl``) and an
    ``ssl.SSLError`` (so that asyncio treats it as a failed handshake and never hands the
    connection to the application).
    """


class ConnectSSLContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` presenting a libconnect service's current leaf and trusting its
    current roots; it reloads both whenever they change (``Service.on_change``).

    Server-side contexts (``server_side=True``) require a client certificate and apply the
    service's intentions to every peer right after the handshake. Client-side contexts verify
    the server's chain against the Connect roots but cannot know which service you meant to
    reach: call ``service.check_peer(sock, target)`` after connecting (the asyncio helper
    ``Service.open_connection`` does).

    The context refers to its service weakly: keep the service open while the context is in
    use (once it is closed, every handshake is refused).
    """

    _libconnect_service: weakref.ReferenceType[Service]
    _libconnect_subscription: Subscription | None

    @property
    def service(self) -> Service:
        """The service whose identity this context carries."""
        svc = self._libconnect_service()
        if svc is None:
            raise ConnectError("the service of this SSL context is gone", "CLOSED")
        return svc

    def close(self) -> None:
        """Stops following the service's rotations (the context stays usable)."""
        sub = self._libconnect_subscription
        if sub is not None:
            sub.close()

    def __enter__(self) -> ConnectSSLContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _after_handshake(obj: ssl.SSLSocket | ssl.SSLObject) -> None:
    ctx = obj.context
    if not obj.server_side or not isinstance(ctx, ConnectSSLContext):
        return
    try:
        ctx.service.check_peer(obj)
    except AuthorizationDenied as e:
        raise _HandshakeDenied(e.detail, e.code) from None
    except ConnectError as e:
        raise ssl.SSLCertVerificationError(f"libconnect: {e.detail} ({e.code})") from e


class _CheckedSSLSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        try:
            _after_handshake(self)
        except BaseException:
            self.close()
            raise


class _CheckedSSLObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _after_handshake(self)


def _secret_dir() -> str:
    # Prefer memory-backed storage for the private key; the files live only while loading.
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return tempfile.mkdtemp(prefix="libconnect-", dir=shm)
    return tempfile.mkdtemp(prefix="libconnect-")


@contextlib.contextmanager
def _pem_files(chain: bytes, key: bytes) -> Iterator[Tuple[str, str]]:
    d = _secret_dir()  # mode 0700
    try:
        paths = []
        for name, data in (("chain.pem", chain), ("key.pem", key)):
            path = os.path.join(d, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        yield paths[0], paths[1]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _load(ctx: ssl.SSLContext, service: Service) -> None:
    chain, key, roots = service.leaf_pem(), service.key_pem(), service.roots_pem()
    with _pem_files(chain, key) as (certfile, keyfile):
        ctx.load_cert_chain(certfile, keyfile)
    ctx.load_verify_locations(cadata=roots.decode("ascii"))


def _reload(ctx_ref: weakref.ReferenceType[ConnectSSLContext], svc_ref: weakref.ReferenceType[Service]) -> None:
    ctx, svc = ctx_ref(), svc_ref()
    if ctx is None or svc is None:
        return
    try:
        _load(ctx, svc)
    except ConnectError:
        # Not ready or closed mid-rotation: keep the last identity; the next change retries.
        pass


def ssl_context(service: Service, server_side: bool) -> ConnectSSLContext:
    proto = ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
    ctx = ConnectSSLContext(proto)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not server_side:
        # The identity is the SPIFFE URI, not a host name (as in Consul).
        ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.sslsocket_class = _CheckedSSLSocket
    ctx.sslobject_class = _CheckedSSLObject
    ctx._libconnect_service = weakref.ref(service)
    ctx._libconnect_subscription = None
    _load(ctx, service)
    ctx_ref = weakref.ref(ctx)
    svc_ref = weakref.ref(service)
    sub = service.on_change(lambda: _reload(ctx_ref, svc_ref))
    ctx._libconnect_subscription = sub
    weakref.finalize(ctx, sub.close)
    # A change between the first load and the subscription is not missed.
    _reload(ctx_ref, svc_ref)
    return ctx


_contexts: weakref.WeakKeyDictionary[Service, dict[bool, ConnectSSLContext]] = weakref.WeakKeyDictionary()


def _context(service: Service, server_side: bool) -> ConnectSSLContext:
    """One shared context per service and side, for the helpers."""
    per = _contexts.setdefault(service, {})
    ctx = per.get(server_side)
    if ctx is None:
        ctx = per[server_side] = ssl_context(service, server_side)
    return ctx


def check_peer(service: Service, ssl_object: ssl.SSLSocket | ssl.SSLObject, target: str | None) -> str:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise CertificateError("tls: no certificates from peer", "CERTIFICATE_VERIFICATION")
    if target is not None:
        return service.verify_server(der, target)
    auth = service.authorize(der)
    if not auth.allowed:
        raise AuthorizationDenied(f"connect: authz denied: {auth.reason}")
    return auth.peer


def wrap_server_socket(service: Service, sock: Any) -> ssl.SSLSocket:
    return _context(service, True).wrap_socket(sock, server_side=True)


_Address = Union[str, Tuple[str, int]]


def _split(addr: _Address) -> Tuple[str, int]:
    if isinstance(addr, tuple):
        return addr[0], int(addr[1])
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ConnectError(f"address must be 'host:port', got {addr!r}", "INVALID_PARAMETER")
    return host.strip("[]"), int(port)


async def open_connection(
    service: Service, target: str, addr: _Address | None, timeout: float | None, limit: int
) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    if addr is None:
        candidates = await loop.run_in_executor(None, service.resolve, target)
        if not candidates:
            raise ConnectIoError(f"no healthy instances found for {target!r}", "CONNECTION_REFUSED")
        random.shuffle(candidates)
    else:
        candidates = [_split(addr)]
    ctx = _context(service, False)
    last: BaseException | None = None
    for host, port in candidates:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, limit=limit), timeout
            )
        except asyncio.TimeoutError:
            raise ConnectTimeout(f"open_connection: timed out after {timeout}s") from None
        except ConnectionRefusedError as e:
            last = ConnectIoError(f"connection refused: {e}", "CONNECTION_REFUSED")
            continue
        except ssl.SSLError as e:
            last = e
            continue
        try:
            service.check_peer(writer.get_extra_info("ssl_object"), target)
        except BaseException:
            # Not the service we meant: no close_notify exchange with it, just drop it.
            writer.transport.abort()
            await asyncio.sleep(0)
            raise
        return reader, writer
    assert last is not None
    raise last


async def start_server(
    service: Service, handler: _Handler, host: Any, port: int | None, **kwargs: Any
) -> asyncio.Server:
    return await asyncio.start_server(handler, host, port, ssl=_context(service, True), **kwargs)


class _ConnectionIO(io.RawIOBase):
    """The raw stream under ``Connection.makefile``; closing it leaves the connection open."""

    def __init__(self, conn: Connection, mode: str) -> None:
        super().__init__()
        self._conn = conn
        self._reading = "r" in mode
        self._writing = "w" in mode

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def readinto(self, b: Any) -> int:
        data = self._conn.recv(len(b))
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        return n

    def write(self, b: Any) -> int:
        return self._conn.send(bytes(b))


def makefile(
    conn: Connection,
    mode: str = "r",
    buffering: int | None = None,
    *,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> Any:
    # As socket.makefile.
    if not set(mode) <= {"r", "w", "b"}:
        raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
    writing = "w" in mode
    reading = "r" in mode or not writing
    binary = "b" in mode
    raw = _ConnectionIO(conn, ("r" if reading else "") + ("w" if writing else ""))
    if buffering is None or buffering < 0:
        buffering = io.DEFAULT_BUFFER_SIZE
    if buffering == 0:
        if not binary:
            raise ValueError("unbuffered streams must be binary")
        return raw
    buffer: io.BufferedIOBase
    if reading and writing:
        buffer = io.BufferedRWPair(raw, raw, buffering)
    elif reading:
        buffer = io.BufferedReader(raw, buffering)
    else:
        buffer = io.BufferedWriter(raw, buffering)
    if binary:
        return buffer
    text = io.TextIOWrapper(buffer, encoding, errors, newline)  # type: ignore[type-var]
    text.mode = mode  # type: ignore[misc]
    return text
