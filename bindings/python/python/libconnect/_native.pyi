"""Type stubs of ``libconnect._native``, the compiled half of libconnect (hand-written; checked
by ``mypy.stubtest``). Import from ``libconnect``, never from here."""

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, Literal, Optional, Union, final

from typing_extensions import Self

from ._ssl import ConnectSSLContext

__all__ = [
    "__version__",
    "core_version",
    "Agent",
    "Intentions",
    "CA",
    "Service",
    "Subscription",
    "Authorization",
    "Listener",
    "Connection",
    "_error_table",
    "_raise_error",
    "_exception_classes",
]

__version__: Final[str]
"""The version of the binding (PEP 440)."""
core_version: Final[str]
"""The version of the libconnect core it is built on."""

_Address = Union[str, tuple[str, int]]
"""``"host:port"`` or ``(host, port)``."""

_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Optional[Awaitable[None]]]

@final
class Agent:
    """The per-process agent: roots, leaves and intentions cached over a backend.

    ``Agent()`` talks to a Consul (or ``connect agent``) HTTP API; arguments left ``None`` come
    from ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``, ``CONSUL_CACERT`` and ``CONSUL_HTTP_SSL``
    (default address ``127.0.0.1:8500``). ``Agent.dev()`` runs a ``-dev`` server in this
    process. ``root_change_jitter`` bounds the random delay (seconds, default 30) before leaves
    are re-issued after a CA root rotation.
    """

    def __new__(
        cls,
        address: str | None = None,
        token: str | None = None,
        datacenter: str | None = None,
        ca_file: str | None = None,
        *,
        https: bool | None = None,
        root_change_jitter: float | None = None,
    ) -> Agent: ...
    @staticmethod
    def dev(*, root_change_jitter: float | None = None) -> Agent:
        """An agent with an in-process ``-dev`` server (built-in CA, allow-by-default
        intentions), like ``connect agent -dev``."""
    @property
    def datacenter(self) -> str:
        """The datacenter of the agent."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    @property
    def intentions(self) -> Intentions:
        """Who may connect to whom."""
    @property
    def ca(self) -> CA:
        """The certificate authority."""
    def service(self, name: str, *, ready_timeout: float | None = 10.0) -> Service:
        """A Connect service named ``name``; waits until it has a leaf certificate that
        verifies against the roots, at most ``ready_timeout`` seconds (``None``: no limit,
        ``0``: do not wait). Raises ``ConnectTimeout`` when it does not get one in time."""
    def validate_jwt_svid(self, token: str, audience: str) -> dict[str, Any]:
        """Checks a JWT-SVID (from ``Service.jwt_svid``, a SPIFFE Workload API, or any issuer of
        this trust domain's JWT keys) for ``audience``: signature, expiry and audience. Returns
        its claims (``sub`` is the SPIFFE ID); raises ``InvalidArgumentError`` naming the check
        that failed."""
    def close(self) -> None:
        """Stops the agent's background work. Idempotent; later calls raise
        ``ConnectError(code="CLOSED")``."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Intentions:
    """``agent.intentions``: the rules deciding which service may connect to which."""

    def upsert(self, source: str, destination: str, action: str) -> None:
        """Creates or replaces the intention ``source → destination``; ``action`` is
        ``"allow"`` or ``"deny"``. Names may be ``"*"``."""
    def delete(self, source: str, destination: str) -> None:
        """Deletes the intention ``source → destination`` (``NotFoundError`` if none)."""
    def check(self, source: str, destination: str) -> bool:
        """Whether ``source`` may connect to ``destination`` now."""

@final
class CA:
    """``agent.ca``: the certificate authority's roots and configuration."""

    def roots_pem(self) -> bytes:
        """Every trusted root certificate, PEM."""
    def set_config(
        self,
        provider: str,
        config: dict[str, Any] | None = None,
        *,
        force_without_cross_signing: bool = False,
    ) -> None:
        """Applies a CA configuration (``provider`` is ``"consul"`` for the built-in CA,
        ``config`` its options, e.g. ``{"PrivateKeyType": "ec", "PrivateKeyBits": 384}``). A
        new key rotates the root with cross-signing; services pick up the new leaf and roots
        while their open connections keep working."""

@final
class Service:
    """A Connect service: its identity (leaf and roots, kept current), a listener that
    authorizes peers by intentions during the handshake, and a dialer that checks it reached
    the service it meant to."""

    @property
    def name(self) -> str:
        """The service name."""
    @property
    def spiffe_id(self) -> str:
        """The SPIFFE ID of the current leaf."""
    @property
    def ready(self) -> bool:
        """Whether the service has a leaf that verifies against the current roots."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def ready_wait(self, timeout: float | None = 10.0) -> None:
        """Waits until ``ready``, at most ``timeout`` seconds (then ``ConnectTimeout``)."""
    def listen(self, addr: _Address = "127.0.0.1:0") -> Listener:
        """Listens for mutual-TLS connections; peers the intentions deny are refused inside
        the handshake and never returned by ``accept``."""
    def dial(
        self,
        target: str,
        timeout: float | None = None,
        datacenter: str | None = None,
        mesh_gateway: Literal["none", "local", "remote"] | None = None,
    ) -> Connection:
        """Connects to a healthy instance of the service ``target`` found in the catalog.

        With ``datacenter`` (Consul's upstream ``Datacenter``) the instance is looked up in
        that datacenter and must present ``target``'s SPIFFE ID *in that datacenter* of our
        trust domain (``TlsError`` with code ``PEER_IDENTITY_MISMATCH`` otherwise); the dial
        sends the SNI mesh gateways route by. ``mesh_gateway`` (Consul's ``MeshGateway.Mode``,
        default ``"none"``) dials directly, through a gateway of our datacenter (``"local"``) or
        of the target's (``"remote"``). A malformed datacenter name, an unknown mode, or a
        datacenter the agent cannot reach (``No path to datacenter: dc9``) raise
        ``InvalidArgumentError``; no healthy instance or gateway raises ``ConnectIoError``
        with code ``CONNECTION_REFUSED``."""
    def dial_addr(self, addr: _Address, target: str, timeout: float | None = None) -> Connection:
        """Connects to ``addr``, expecting the service ``target`` there (``TlsError`` with
        code ``PEER_IDENTITY_MISMATCH`` otherwise)."""
    def jwt_svid(self, audience: str | list[str]) -> str:
        """A JWT-SVID (ES256, valid 5 minutes) for this service with ``audience`` (one string or
        up to 32), signed by the datacenter's JWT key; the agent's token needs ``service:write``
        on the service."""
    def resolve(self, target: str) -> list[tuple[str, int]]:
        """The addresses of the healthy instances of ``target``."""
    def authorize(self, peer: str | bytes | bytearray) -> Authorization:
        """Whether ``peer`` may connect to this service, and why. ``peer`` is a SPIFFE URI, a
        certificate chain as PEM (leaf first), or a DER certificate; certificates are
        verified against the roots first."""
    def verify_server(self, cert: bytes, target: str) -> str:
        """Checks that a server's DER certificate verifies against the roots and names the
        service ``target``; returns its SPIFFE ID."""
    def leaf_pem(self) -> bytes:
        """The current certificate chain (leaf first), PEM."""
    def key_pem(self) -> bytes:
        """The current private key, PEM (PKCS#8)."""
    def roots_pem(self) -> bytes:
        """The current trusted roots, PEM."""
    def on_change(self, callback: Callable[[], object]) -> Subscription:
        """Calls ``callback()`` from a background thread after every change of the leaf or
        the roots. Exceptions it raises go to ``sys.unraisablehook``."""
    def ssl_context(self, server_side: bool) -> ConnectSSLContext:
        """A standard ``ssl.SSLContext`` with this service's identity, reloaded on every
        rotation. Server side: client certificates are required and the intentions are
        applied to each peer right after the handshake (Python's ``ssl`` cannot run them
        inside it), before the application gets the connection. Client side: the server's
        chain is verified; check its identity with ``check_peer(sock, target)``."""
    def check_peer(self, ssl_object: ssl.SSLSocket | ssl.SSLObject, target: str | None = None) -> str:
        """Checks the peer of a completed ``ssl`` handshake and returns its SPIFFE ID. Without
        ``target`` the peer is a client and the intentions must allow it
        (``AuthorizationDenied``); with ``target`` the peer is a server that must be that
        service (``TlsError``)."""
    def wrap_server_socket(self, sock: Any) -> ssl.SSLSocket:
        """``ssl_context(True).wrap_socket(sock, server_side=True)``: for an accepted socket
        the handshake and the intention check run now; for a listening socket, in
        ``accept()``."""
    def open_connection(
        self,
        target: str,
        *,
        addr: _Address | None = None,
        timeout: float | None = None,
        limit: int = 65536,
    ) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """``await service.open_connection(target)``: asyncio streams to a healthy instance
        of ``target`` (or to ``addr``), over ``ssl_context(False)``, with the server's
        identity checked before they are returned."""
    def start_server(
        self,
        handler: _Handler,
        host: Any = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> Awaitable[asyncio.Server]:
        """``await service.start_server(handler, host, port)``: ``asyncio.start_server`` with
        ``ssl_context(True)``; ``handler`` only ever sees peers the intentions allow."""
    def close(self) -> None:
        """Stops following the agent's leaf and roots and the ``on_change`` thread. Listeners
        and connections already made are unaffected. Idempotent."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Subscription:
    """A callback registered with ``Service.on_change``."""

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def close(self) -> None:
        """Unregisters the callback. Idempotent."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Authorization:
    """The answer of ``Service.authorize``: truthy when allowed."""

    def __new__(cls, peer: str, allowed: bool, reason: str) -> Authorization: ...
    @property
    def peer(self) -> str:
        """The peer's SPIFFE ID."""
    @property
    def allowed(self) -> bool:
        """Whether the peer may connect."""
    @property
    def reason(self) -> str:
        """Why (Consul's text, e.g. ``"Matched L4 intention: ..."``)."""
    def __bool__(self) -> bool: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(self) -> tuple[type[Authorization], tuple[str, bool, str]]: ...

@final
class Listener:
    """Hands out mutual-TLS connections that passed verification and the intention check."""

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def accept(self, timeout: float | None = None) -> Connection:
        """The next authorized connection, waiting at most ``timeout`` seconds (then
        ``ConnectTimeout``). Ctrl-C interrupts the wait."""
    def close(self) -> None:
        """Stops listening; a blocked ``accept`` raises ``ConnectError(code="CLOSED")``."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Connection:
    """An authenticated mutual-TLS connection, used like a blocking socket. One thread may
    ``recv`` while another sends; Ctrl-C interrupts a blocked call."""

    @property
    def peer_id(self) -> str:
        """The peer's SPIFFE ID."""
    @property
    def peer_certificate(self) -> bytes:
        """The peer's leaf certificate, DER."""
    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The peer's ``(host, port)``."""
    @property
    def local_address(self) -> tuple[str, int] | None:
        """Our ``(host, port)``."""
    @property
    def resumed(self) -> bool:
        """Whether the handshake resumed an earlier TLS session."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def settimeout(self, timeout: float | None) -> None:
        """Bounds every later ``recv``/``send`` (``ConnectTimeout``, a ``TimeoutError``);
        ``None`` waits forever."""
    def gettimeout(self) -> float | None:
        """The timeout set by ``settimeout``."""
    def recv(self, bufsize: int) -> bytes:
        """At most ``bufsize`` bytes; ``b""`` once the peer has closed."""
    def send(self, data: bytes | bytearray) -> int:
        """Sends some of ``data``; returns how many bytes."""
    def sendall(self, data: bytes | bytearray) -> None:
        """Sends all of ``data``."""
    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object over the connection, as ``socket.makefile``."""
    def close(self) -> None:
        """Sends close_notify and releases the socket; a blocked ``recv`` or ``send`` in
        another thread raises ``ConnectError(code="CLOSED")``. Idempotent."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

def _error_table() -> list[tuple[str, int, str]]:
    """``(code, number, Python class)`` of every error kind (for tests)."""

def _raise_error(code: str, detail: str) -> None:
    """Raises the exception for the kind ``code`` (for tests)."""

def _exception_classes() -> list[str]:
    """The exception classes the binding imports from ``libconnect._errors`` (for tests)."""
