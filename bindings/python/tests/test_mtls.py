"""libconnect on both ends: intentions decide in the handshake, connections behave like
sockets, blocking calls release the GIL and give way to Ctrl-C and close()."""

from __future__ import annotations

import _thread
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import libconnect

from .support import T, EchoServer, recv_exact, round_trip


def test_allowed_peer_gets_through_and_both_sides_know_who(db: libconnect.Service, web: libconnect.Service) -> None:
    with db.listen() as listener:
        host, port = listener.address
        assert host == "127.0.0.1" and port > 0
        with web.dial_addr(listener.address, "db", timeout=T) as client, listener.accept(timeout=T) as server:
            assert client.peer_id == db.spiffe_id
            assert server.peer_id == web.spiffe_id
            assert client.peer_id.endswith("/ns/default/dc/dc1/svc/db")
            assert client.peer_address == listener.address
            assert server.peer_address == client.local_address
            client.sendall(b"ping")
            assert recv_exact(server, 4) == b"ping"
            assert server.send(b"pong") == 4
            assert recv_exact(client, 4) == b"pong"
    auth = db.authorize(web.spiffe_id)
    assert auth and auth.allowed and auth.peer == web.spiffe_id
    assert auth == libconnect.Authorization(auth.peer, True, auth.reason)
    assert "allowed" in str(auth) and repr(auth).startswith("Authorization(")


def test_denied_peer_fails_at_the_handshake_and_is_never_accepted(
    agent: libconnect.Agent, db: libconnect.Service, api: libconnect.Service
) -> None:
    assert not agent.intentions.check("api", "db")
    verdict = db.authorize(api.leaf_pem())
    assert not verdict and "DENY default/api => default/db" in verdict.reason
    with EchoServer(db) as server:
        # TLS 1.3: the client finishes first, then reads the server's access_denied alert.
        with pytest.raises(libconnect.TlsError) as info:
            with api.dial_addr(server.address, "db", timeout=T) as conn:
                conn.sendall(b"let me in")
                conn.recv(100)
        assert "access denied" in info.value.detail
        assert info.value.code == "TLS"
        time.sleep(0.2)
        assert server.peers == []


def test_intention_changes_apply_to_new_connections(
    agent: libconnect.Agent, db: libconnect.Service, web: libconnect.Service
) -> None:
    with EchoServer(db) as server:
        with web.dial_addr(server.address, "db", timeout=T) as c:
            assert round_trip(c, b"1") == b"1"
        agent.intentions.upsert("web", "db", "deny")
        assert not agent.intentions.check("web", "db")
        # The change retired db's session tickets, so web's reconnect is a full handshake and
        # is refused with the access_denied alert (on the dial, or on the first read).
        with pytest.raises(libconnect.TlsError, match="access denied"):
            with web.dial_addr(server.address, "db", timeout=T) as c:
                round_trip(c, b"2")
        agent.intentions.delete("web", "db")
        with web.dial_addr(server.address, "db", timeout=T) as c:
            assert round_trip(c, b"3") == b"3"
        assert server.peers == [web.spiffe_id, web.spiffe_id]


def test_makefile_and_timeouts(db: libconnect.Service, web: libconnect.Service) -> None:
    with EchoServer(db) as server, web.dial_addr(server.address, "db", timeout=T) as conn:
        f = conn.makefile("rwb")
        try:
            f.write(b"line one\nline two\n")
            f.flush()
            assert f.readline() == b"line one\n"
            assert f.readline() == b"line two\n"
        finally:
            f.close()
        text = conn.makefile("rw", encoding="utf-8", newline="\n")
        try:
            text.write("héllo\n")
            text.flush()
            assert text.readline() == "héllo\n"
        finally:
            text.close()
        assert not conn.closed  # closing a file leaves the connection open
        assert conn.gettimeout() is None
        conn.settimeout(0.2)
        assert conn.gettimeout() == pytest.approx(0.2)
        start = time.monotonic()
        with pytest.raises(libconnect.ConnectTimeout) as info:
            conn.recv(10)
        assert isinstance(info.value, TimeoutError) and info.value.code == "TIMEOUT"
        assert 0.15 < time.monotonic() - start < 2
        conn.settimeout(None)
        assert round_trip(conn, b"still fine") == b"still fine"
        conn.sendall(bytearray(b"bytearray"))
        assert recv_exact(conn, 9) == b"bytearray"


def test_sixteen_threads_share_one_agent(agent: libconnect.Agent, db: libconnect.Service) -> None:
    web = agent.service("web")
    payload = bytes(range(256)) * 64  # 16 KiB

    def worker(i: int) -> int:
        own = agent.service(f"worker-{i % 4}") if i % 2 else web
        with own.dial_addr(server.address, "db", timeout=T) as conn:
            for _ in range(10):
                assert round_trip(conn, payload) == payload
        assert agent.intentions.check(own.name, "db")
        return i

    with EchoServer(db) as server, ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(worker, range(16))) == list(range(16))
        assert len(server.peers) == 16
    web.close()


def test_gil_is_released_while_blocked(db: libconnect.Service) -> None:
    # A thread blocked in accept() must not stop this one from running Python code.
    with db.listen() as listener:
        t = threading.Thread(target=lambda: pytest.raises(libconnect.ConnectError, listener.accept), daemon=True)
        t.start()
        counted = 0
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            counted += 1
        assert counted > 10_000
    t.join(T)
    assert not t.is_alive()


def _interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    return timer


def test_ctrl_c_interrupts_a_blocked_accept(db: libconnect.Service) -> None:
    with db.listen() as listener:
        start = time.monotonic()
        _interrupt_after(0.2)
        with pytest.raises(KeyboardInterrupt):
            listener.accept()
        assert time.monotonic() - start < 2
        # The listener still works afterwards.
        with pytest.raises(libconnect.ConnectTimeout):
            listener.accept(timeout=0.05)


def test_ctrl_c_interrupts_a_blocked_recv(db: libconnect.Service, web: libconnect.Service) -> None:
    with EchoServer(db) as server, web.dial_addr(server.address, "db", timeout=T) as conn:
        start = time.monotonic()
        _interrupt_after(0.2)
        with pytest.raises(KeyboardInterrupt):
            conn.recv(10)
        assert time.monotonic() - start < 2
        assert round_trip(conn, b"after ^C") == b"after ^C"


def test_close_from_another_thread_unblocks_recv_and_accept(db: libconnect.Service, web: libconnect.Service) -> None:
    errors: list[BaseException] = []

    def blocked(call: object) -> None:
        try:
            call()  # type: ignore[operator]
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    with EchoServer(db) as server:
        conn = web.dial_addr(server.address, "db", timeout=T)
        listener = db.listen()
        threads = [
            threading.Thread(target=blocked, args=(lambda: conn.recv(10),)),
            threading.Thread(target=blocked, args=(listener.accept,)),
        ]
        for t in threads:
            t.start()
        time.sleep(0.2)
        conn.close()
        listener.close()
        for t in threads:
            t.join(T)
        assert [(type(e), getattr(e, "code", None)) for e in errors] == [(libconnect.ConnectError, "CLOSED")] * 2
        conn.close()  # idempotent
        listener.close()
        assert conn.closed and listener.closed


def test_context_managers_close_everything(agent: libconnect.Agent) -> None:
    with agent.service("db") as db, agent.service("web") as web:
        with db.listen() as listener:
            with web.dial_addr(listener.address, "db", timeout=T) as conn:
                pass
            assert conn.closed
            with pytest.raises(libconnect.ConnectError) as info:
                conn.sendall(b"x")
            assert info.value.code == "CLOSED"
        assert listener.closed
        with db.on_change(lambda: None) as sub:
            assert not sub.closed
        assert sub.closed
    assert db.closed and web.closed and not agent.closed
    assert "closed" in repr(db) and "closed" in repr(conn) and "closed" in repr(listener)
    with agent:
        pass
    assert agent.closed
    agent.close()  # idempotent


def test_a_dial_naming_a_datacenter_checks_it(db: libconnect.Service, web: libconnect.Service) -> None:
    # db listens in dc1 (registered in the catalog): a dial naming dc1 finds and accepts it.
    with db.listen() as listener:
        with web.dial("db", datacenter="dc1", timeout=T) as client, listener.accept(timeout=T) as server:
            assert client.peer_id.endswith("/ns/default/dc/dc1/svc/db")
            client.sendall(b"ping")
            assert recv_exact(server, 4) == b"ping"
