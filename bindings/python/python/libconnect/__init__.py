"""libconnect: Consul-Connect-style SPIFFE mutual TLS for Python services, without a sidecar.

>>> import libconnect
>>> with libconnect.Agent.dev() as agent, agent.service("db") as db, agent.service("web") as web:
...     agent.intentions.upsert("web", "db", "allow")
...     with db.listen("127.0.0.1:0") as listener:
...         with web.dial_addr(listener.address, "db") as conn, listener.accept(timeout=10) as peer:
...             conn.sendall(b"ping")
...             print(peer.peer_id, peer.recv(4))

Every object that owns threads or sockets (``Agent``, ``Service``, ``Listener``,
``Connection``, ``Subscription``) has an idempotent ``close()`` and is a context manager; using
it after ``close()`` raises ``ConnectError`` with ``code == "CLOSED"``. Blocking calls release
the GIL and can be interrupted with Ctrl-C. Errors are the classes of :mod:`libconnect._errors`,
each with ``.code`` and ``.detail``.
"""

from ._errors import (
    AclError,
    AuthorizationDenied,
    CacheError,
    CaConfigError,
    CertificateError,
    ConnectError,
    ConnectIoError,
    ConnectTimeout,
    IntentionError,
    InvalidArgumentError,
    InvalidSpiffeIdError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    TlsError,
)
from ._native import (
    CA,
    Agent,
    Authorization,
    Connection,
    Intentions,
    Listener,
    Service,
    Subscription,
    __version__,
    core_version,
)
from ._ssl import ConnectSSLContext

__all__ = [
    "CA",
    "AclError",
    "Agent",
    "Authorization",
    "AuthorizationDenied",
    "CaConfigError",
    "CacheError",
    "CertificateError",
    "ConnectError",
    "ConnectIoError",
    "ConnectSSLContext",
    "ConnectTimeout",
    "Connection",
    "IntentionError",
    "Intentions",
    "InvalidArgumentError",
    "InvalidSpiffeIdError",
    "Listener",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "Service",
    "Subscription",
    "TlsError",
    "__version__",
    "core_version",
]
