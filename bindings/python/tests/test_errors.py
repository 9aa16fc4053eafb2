"""Every error kind of the core maps to its Python class, and each bad input raises the right
class with the right ``.code``."""

from __future__ import annotations

import pickle
import socket

import pytest

import libconnect
from libconnect import _errors, _native

from .support import EchoServer


def test_every_kind_maps_to_an_existing_class_with_its_code() -> None:
    table = _native._error_table()
    assert len(table) >= 36
    # The binding imports exactly the classes _errors.py defines.
    assert sorted(_native._exception_classes()) == sorted(_errors.__all__)
    for code, number, class_name in table:
        cls = getattr(libconnect, class_name)
        assert issubclass(cls, libconnect.ConnectError)
        with pytest.raises(cls) as info:
            _native._raise_error(code, f"detail of {code}")
        e = info.value
        assert type(e) is cls, (code, type(e))
        assert e.code == code
        assert e.detail == f"detail of {code}"
        assert str(e) == f"detail of {code}"
        assert number > 0


@pytest.mark.parametrize(
    ("cls", "std"),
    [
        (libconnect.InvalidArgumentError, ValueError),
        (libconnect.InvalidSpiffeIdError, ValueError),
        (libconnect.CertificateError, ValueError),
        (libconnect.CaConfigError, ValueError),
        (libconnect.IntentionError, ValueError),
        (libconnect.NotFoundError, LookupError),
        (libconnect.AuthorizationDenied, PermissionError),
        (libconnect.PermissionDeniedError, PermissionError),
        (libconnect.TlsError, OSError),
        (libconnect.ConnectIoError, OSError),
        (libconnect.ConnectTimeout, TimeoutError),
    ],
)
def test_classes_derive_from_the_standard_exception(cls: type, std: type) -> None:
    assert issubclass(cls, libconnect.ConnectError)
    assert issubclass(cls, std)
    e = cls("boom")
    assert e.code == cls.default_code
    assert str(e) == "boom"


def test_errors_pickle_with_their_code() -> None:
    for cls in (libconnect.ConnectError, libconnect.ConnectTimeout, libconnect.TlsError):
        e = cls("detail", "SOME_CODE")
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls
        assert (back.code, back.detail, str(back)) == ("SOME_CODE", "detail", "detail")


class _Expect:
    """``with expect(Class, "CODE"):`` — the block raises exactly that class and code."""

    def __init__(self, cls: type[libconnect.ConnectError], code: str) -> None:
        self.cls, self.code = cls, code

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type | None, e: BaseException | None, tb: object) -> bool:
        assert e is not None, f"expected {self.cls.__name__}({self.code})"
        assert type(e) is self.cls, repr(e)
        assert isinstance(e, libconnect.ConnectError) and e.code == self.code, repr(e)
        return True


expect = _Expect


def test_bad_intentions(agent: libconnect.Agent) -> None:
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        agent.intentions.upsert("web", "db", "ALLOW")  # Consul compares case-sensitively
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        agent.intentions.upsert("", "db", "allow")
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        agent.intentions.check("web", "")
    # Deleting a pair without an intention is NotFoundError, as the stub documents.
    with expect(libconnect.NotFoundError, "NOT_FOUND"):
        agent.intentions.delete("nobody", "nothing")


def test_bad_peers(agent: libconnect.Agent, db: libconnect.Service) -> None:
    with expect(libconnect.InvalidSpiffeIdError, "INVALID_SPIFFE_ID"):
        db.authorize("spiffe://not-a-consul-id")
    with expect(libconnect.CertificateError, "INVALID_CERTIFICATE"):
        db.authorize(b"\x30\x03junk")
    with expect(libconnect.CertificateError, "INVALID_CERTIFICATE"):
        db.authorize("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        db.authorize(12)  # type: ignore[arg-type]
    # A leaf of another CA does not verify against ours.
    with libconnect.Agent.dev() as other, other.service("web") as stranger:
        with expect(libconnect.CertificateError, "CERTIFICATE_VERIFICATION"):
            db.authorize(stranger.leaf_pem())


def test_bad_ca_config(agent: libconnect.Agent) -> None:
    with expect(libconnect.CaConfigError, "INVALID_CA_CONFIG"):
        agent.ca.set_config("consul", {"PrivateKeyType": "rsa", "PrivateKeyBits": 7})
    with expect(libconnect.CaConfigError, "INVALID_CA_CONFIG"):
        agent.ca.set_config("no-such-provider", {})
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        agent.ca.set_config("consul", [1, 2])  # type: ignore[arg-type]


def test_bad_services_addresses_and_timeouts(agent: libconnect.Agent, db: libconnect.Service) -> None:
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        agent.service("")
    # One name rule in every language: the characters of a SPIFFE path segment, 256 at most.
    for bad in ["a/b", "..", "web\0", "web\n", "x" * 10_000]:
        with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
            agent.service(bad)
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        agent.service("web", ready_timeout=-1)
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        db.on_change(42)  # type: ignore[arg-type]
    with expect(libconnect.ConnectIoError, "IO"):
        db.listen("not an address")
    with pytest.raises(TypeError):
        db.listen(5)  # type: ignore[arg-type]
    with db.listen() as listener:
        with expect(libconnect.ConnectTimeout, "TIMEOUT"):
            listener.accept(timeout=0.1)
        with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
            listener.accept(timeout=float("nan"))


def test_bad_dials(db: libconnect.Service, web: libconnect.Service) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()
    s.close()
    with expect(libconnect.ConnectIoError, "CONNECTION_REFUSED"):
        web.dial_addr(free, "db", timeout=5)
    with expect(libconnect.ConnectIoError, "CONNECTION_REFUSED"):
        web.dial("nothing-registered", timeout=5)
    with EchoServer(db) as server:
        # db answers, but we meant to reach "billing".
        with expect(libconnect.TlsError, "PEER_IDENTITY_MISMATCH"):
            web.dial_addr(server.address, "billing", timeout=5)
        assert server.peers == []


def test_bad_http_agents() -> None:
    with expect(libconnect.InvalidArgumentError, "INVALID_PARAMETER"):
        libconnect.Agent(address="unix:///tmp/consul.sock")
    with expect(libconnect.ConnectIoError, "CONNECTION_REFUSED"):
        libconnect.Agent(address="127.0.0.1:1")


def test_use_after_close_is_closed(agent: libconnect.Agent, db: libconnect.Service) -> None:
    listener = db.listen()
    listener.close()
    with expect(libconnect.ConnectError, "CLOSED"):
        listener.accept(timeout=1)
    db.close()
    for call in (db.leaf_pem, db.key_pem, db.roots_pem, lambda: db.listen()):
        with expect(libconnect.ConnectError, "CLOSED"):
            call()
    agent.close()
    with expect(libconnect.ConnectError, "CLOSED"):
        agent.service("web")
    with expect(libconnect.ConnectError, "CLOSED"):
        agent.intentions.upsert("a", "b", "allow")
    with expect(libconnect.ConnectError, "CLOSED"):
        agent.ca.roots_pem()


@pytest.mark.parametrize("bad", ["", "DC2", "dc/2", "dc2.evil", "d" * 64])
def test_a_bad_datacenter_name_is_an_invalid_argument(web: libconnect.Service, bad: str) -> None:
    with pytest.raises(libconnect.InvalidArgumentError) as info:
        web.dial("db", datacenter=bad, timeout=10)
    assert info.value.code == "INVALID_PARAMETER"
    assert "datacenter name must be" in info.value.detail


def test_cross_datacenter_dials_fail_with_typed_errors(web: libconnect.Service) -> None:
    # The dev agent's server forwards to no other datacenter: Consul's answer, typed.
    with pytest.raises(libconnect.InvalidArgumentError) as info:
        web.dial("db", datacenter="dc2", timeout=10)
    assert info.value.detail == "No path to datacenter: dc2"
    # Through a gateway of our own datacenter, when none is registered.
    with pytest.raises(libconnect.ConnectIoError) as refused:
        web.dial("db", datacenter="dc2", mesh_gateway="local", timeout=10)
    assert refused.value.code == "CONNECTION_REFUSED"
    assert "mesh gateway in dc1" in refused.value.detail
    with pytest.raises(libconnect.InvalidArgumentError, match="invalid mesh gateway mode"):
        web.dial("db", datacenter="dc2", mesh_gateway="Local", timeout=10)  # type: ignore[arg-type]
    with pytest.raises(libconnect.InvalidArgumentError, match="give datacenter too"):
        web.dial("db", mesh_gateway="local", timeout=10)


def test_a_service_that_gets_no_leaf_in_time_is_a_connect_timeout() -> None:
    """``Agent.service(ready_timeout=…)`` and ``Service.ready_wait`` raise ``ConnectTimeout``
    as documented: here the HTTP agent's server is gone before any leaf was signed."""
    from .agent_process import dev_agent_process

    process = dev_agent_process()
    address = next(process)
    with libconnect.Agent(address=address) as agent:
        for _ in process:  # resumes the generator to its end, which stops connect agent
            pass
        with expect(libconnect.ConnectTimeout, "TIMEOUT"):
            agent.service("db", ready_timeout=0.3)
        with agent.service("web", ready_timeout=0) as web:
            assert not web.ready
            with expect(libconnect.ConnectTimeout, "TIMEOUT"):
                web.ready_wait(0.3)
