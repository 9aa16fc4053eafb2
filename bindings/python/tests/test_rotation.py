"""CA rotation while connected: open connections keep working, new ones get the new leaf, and
ssl contexts and on_change callbacks follow."""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any, List

import pytest

import libconnect

from .support import T, EchoServer, eventually, first_der, recv_exact, round_trip

NEW_CA = {"PrivateKeyType": "ec", "PrivateKeyBits": 384}


def test_rotation_while_connected(agent: libconnect.Agent, db: libconnect.Service, web: libconnect.Service) -> None:
    old_roots = agent.ca.roots_pem()
    old_db_leaf, old_web_leaf = db.leaf_pem(), web.leaf_pem()
    changes = threading.Event()
    with EchoServer(db) as server, web.dial_addr(server.address, "db", timeout=T) as open_conn:
        assert round_trip(open_conn, b"before") == b"before"
        assert open_conn.peer_certificate == first_der(old_db_leaf)
        with db.on_change(changes.set):
            agent.ca.set_config("consul", NEW_CA)
            # The agent's roots are a cache kept fresh by a blocking query: they follow shortly.
            eventually(lambda: agent.ca.roots_pem() != old_roots)
            # Both services get a leaf from the new root, without being restarted.
            eventually(lambda: db.leaf_pem() != old_db_leaf and web.leaf_pem() != old_web_leaf)
            assert changes.wait(T)
        assert db.roots_pem().count(b"BEGIN CERTIFICATE") >= 2  # old root kept while in use
        # The connection opened before the rotation still works.
        assert round_trip(open_conn, b"during") == b"during"
        # A new client (no session to resume) sees db's new leaf.
        with agent.service("fresh-client") as fresh, fresh.dial_addr(server.address, "db", timeout=T) as new_conn:
            assert not new_conn.resumed
            assert new_conn.peer_certificate == first_der(db.leaf_pem())
            assert round_trip(new_conn, b"after") == b"after"
        assert round_trip(open_conn, b"still") == b"still"


def test_ssl_context_follows_rotation(agent: libconnect.Agent, db: libconnect.Service, web: libconnect.Service) -> None:
    ctx = db.ssl_context(True)
    srv = ctx.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)
    srv.settimeout(T)
    address = srv.getsockname()[:2]
    served: List[bytes] = []

    def serve(n: int) -> None:
        for _ in range(n):
            conn, _ = srv.accept()
            with conn:
                served.append(conn.recv(100))
                conn.sendall(b"ok")

    def dial_once(client: libconnect.Service) -> bytes:
        t = threading.Thread(target=serve, args=(1,))
        t.start()
        try:
            with client.dial_addr(address, "db", timeout=T) as conn:
                conn.sendall(b"hi")
                assert recv_exact(conn, 2) == b"ok"
                return conn.peer_certificate
        finally:
            t.join(T)

    try:
        assert dial_once(web) == first_der(db.leaf_pem())
        old_leaf = db.leaf_pem()
        agent.ca.set_config("consul", NEW_CA)
        eventually(lambda: db.leaf_pem() != old_leaf)
        new_der = first_der(db.leaf_pem())
        # The context reloads from the on_change thread; a new client sees the new leaf.
        with agent.service("fresh-client") as fresh:
            for _ in range(int(T / 0.05)):
                if dial_once(fresh) == new_der:
                    break
                threading.Event().wait(0.05)
            else:
                pytest.fail("the ssl context never presented the new leaf")
    finally:
        srv.close()
        ctx.close()
    assert set(served) == {b"hi"}


def test_on_change_callback_errors_go_to_unraisablehook(
    agent: libconnect.Agent, db: libconnect.Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: List[Any] = []
    done = threading.Event()

    def hook(u: Any) -> None:
        seen.append(u.exc_value)
        done.set()

    def boom() -> None:
        raise RuntimeError("callback failed")

    monkeypatch.setattr(sys, "unraisablehook", hook)
    calls = threading.Event()
    with db.on_change(boom), db.on_change(calls.set):
        agent.ca.set_config("consul", NEW_CA)
        assert done.wait(T) and calls.wait(T)
    assert isinstance(seen[0], RuntimeError)
    # The thread survived the exception: the service still works.
    assert db.ready
