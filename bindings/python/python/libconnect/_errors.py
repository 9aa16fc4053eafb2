"""The exceptions of libconnect.

Every error carries ``.code``, the stable kind string shared by every binding (for example
``"INVALID_SPIFFE_ID"``; the C API numbers the same kinds), and ``.detail``, the message for
people. The class is chosen from the core's table of kinds, and each class also derives from the
standard exception a Python programmer would catch: ``ValueError`` for bad input,
``PermissionError`` for refusals, ``TimeoutError`` for timeouts and ``OSError`` for I/O and TLS.
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "InvalidArgumentError",
    "NotFoundError",
    "InvalidSpiffeIdError",
    "CertificateError",
    "CaConfigError",
    "RateLimitedError",
    "IntentionError",
    "AuthorizationDenied",
    "PermissionDeniedError",
    "AclError",
    "TlsError",
    "CacheError",
    "ConnectIoError",
    "ConnectTimeout",
]


class ConnectError(Exception):
    """Base class of every libconnect error.

    ``code`` is the stable kind string (``"CLOSED"``, ``"TIMEOUT"``, ...) and ``detail`` the
    message. Objects used after ``close()`` raise ``ConnectError`` with ``code == "CLOSED"``.
    """

    default_code = "INTERNAL"
    code: str
    detail: str

    def __init__(self, detail: str = "", code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code if code is not None else self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, code={self.code!r})"


class InvalidArgumentError(ConnectError, ValueError):
    """An argument was malformed or out of range (``INVALID_PARAMETER``)."""

    default_code = "INVALID_PARAMETER"


class NotFoundError(ConnectError, LookupError):
    """The requested object does not exist (``NOT_FOUND``)."""

    default_code = "NOT_FOUND"


class InvalidSpiffeIdError(ConnectError, ValueError):
    """A SPIFFE ID, trust domain or SNI name is malformed (``INVALID_SPIFFE_ID``, ...)."""

    default_code = "INVALID_SPIFFE_ID"


class CertificateError(ConnectError, ValueError):
    """A certificate, key or CSR is invalid, or a chain does not verify (``INVALID_CERTIFICATE``,
    ``CERTIFICATE_VERIFICATION``, ...)."""

    default_code = "INVALID_CERTIFICATE"


class CaConfigError(ConnectError, ValueError):
    """A CA configuration is invalid or cannot be applied (``INVALID_CA_CONFIG``, ...)."""

    default_code = "INVALID_CA_CONFIG"


class RateLimitedError(ConnectError):
    """The CA refused to sign because of its rate limit (``RATE_LIMITED``); retry later."""

    default_code = "RATE_LIMITED"


class IntentionError(ConnectError, ValueError):
    """An intention is invalid (``INVALID_INTENTION``)."""

    default_code = "INVALID_INTENTION"


class AuthorizationDenied(ConnectError, PermissionError):
    """Intentions deny this connection (``AUTHORIZATION_DENIED``)."""

    default_code = "AUTHORIZATION_DENIED"


class PermissionDeniedError(ConnectError, PermissionError):
    """The ACL token lacks a permission (``PERMISSION_DENIED``)."""

    default_code = "PERMISSION_DENIED"


class AclError(ConnectError):
    """An ACL token is unknown or a policy is invalid (``ACL_NOT_FOUND``, ...)."""

    default_code = "ACL_NOT_FOUND"


class TlsError(ConnectError, OSError):
    """A TLS handshake or record failure, or a peer that is not the expected service (``TLS``,
    ``PEER_IDENTITY_MISMATCH``)."""

    default_code = "TLS"


class CacheError(ConnectError):
    """A cache fetch failed (``CACHE_FETCH``)."""

    default_code = "CACHE_FETCH"


class ConnectIoError(ConnectError, OSError):
    """An I/O or HTTP failure (``IO``, ``CONNECTION_REFUSED``, ``HTTP``, ...)."""

    default_code = "IO"


class ConnectTimeout(ConnectError, TimeoutError):
    """An operation timed out (``TIMEOUT``)."""

    default_code = "TIMEOUT"
