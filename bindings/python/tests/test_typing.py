"""A typed usage file: ``mypy --strict`` checks it against the stubs (scripts/test-python.sh),
and pytest runs it."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Dict, List, Optional, Tuple

import libconnect


def serve_once(db: libconnect.Service, timeout: float) -> Tuple[libconnect.Listener, Tuple[str, int]]:
    listener: libconnect.Listener = db.listen(("127.0.0.1", 0))
    address: Tuple[str, int] = listener.address
    return listener, address


def exchange(web: libconnect.Service, address: Tuple[str, int], listener: libconnect.Listener) -> bytes:
    conn: libconnect.Connection = web.dial_addr(address, "db", timeout=10.0)
    with conn, listener.accept(timeout=10.0) as peer:
        conn.settimeout(10.0)
        timeout: Optional[float] = conn.gettimeout()
        assert timeout == 10.0
        sent: int = conn.send(b"typed")
        assert sent == 5
        data: bytes = peer.recv(5)
        peer_id: str = peer.peer_id
        der: bytes = conn.peer_certificate
        assert peer_id and der
        return data


def test_typed_usage() -> None:
    changes: List[int] = []
    with libconnect.Agent.dev(root_change_jitter=0.0) as agent:
        dc: str = agent.datacenter
        assert dc == "dc1"
        agent.intentions.upsert("web", "db", "allow")
        allowed: bool = agent.intentions.check("web", "db")
        assert allowed
        roots: bytes = agent.ca.roots_pem()
        assert roots
        with agent.service("db") as db, agent.service("web", ready_timeout=10.0) as web:
            sub: libconnect.Subscription = db.on_change(lambda: changes.append(1))
            with sub:
                listener, address = serve_once(db, 10.0)
                with listener:
                    assert exchange(web, address, listener) == b"typed"
            verdict: libconnect.Authorization = db.authorize(web.spiffe_id)
            reason: str = verdict.reason
            assert verdict.allowed and reason
            ctx: ssl.SSLContext = db.ssl_context(True)
            assert isinstance(ctx, libconnect.ConnectSSLContext)
            pems: List[bytes] = [db.leaf_pem(), db.key_pem(), db.roots_pem()]
            assert all(pems)
            jwt: str = web.jwt_svid(["db"])
            claims: Dict[str, Any] = agent.validate_jwt_svid(jwt, "db")
            assert claims["sub"] == web.spiffe_id

            async def main() -> None:
                async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                    w.close()

                server: asyncio.Server = await db.start_server(handler, "127.0.0.1", 0)
                server.close()
                await server.wait_closed()

            asyncio.run(main())
    try:
        agent.service("late")
    except libconnect.ConnectError as e:
        code: str = e.code
        assert code == "CLOSED"
