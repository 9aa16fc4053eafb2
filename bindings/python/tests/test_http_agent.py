"""An Agent over HTTP: a ``connect agent -dev`` process (the Consul HTTP API) as the backend,
configured by arguments or by Consul's environment variables; dialing by service name through
the catalog."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import pytest

import libconnect

from .support import T, EchoServer, dev_agent_process, round_trip


@pytest.fixture(scope="module")
def http_addr() -> Iterator[str]:
    yield from dev_agent_process()


def test_http_agent_dials_by_name(http_addr: str) -> None:
    with libconnect.Agent(address=http_addr, root_change_jitter=0) as agent:
        assert agent.datacenter == "dc1"
        assert agent.ca.roots_pem().startswith(b"-----BEGIN CERTIFICATE-----")
        with agent.service("db") as db, agent.service("web") as web, EchoServer(db) as server:
            # listen() registered the instance in the catalog.
            assert web.resolve("db") == [("127.0.0.1", server.address[1])]
            with web.dial("db", timeout=T) as conn:
                assert conn.peer_id == db.spiffe_id
                assert round_trip(conn, b"by name") == b"by name"

            async def streams() -> bytes:
                reader, writer = await web.open_connection("db", timeout=T)
                try:
                    writer.write(b"asyncio by name")
                    await writer.drain()
                    return await reader.readexactly(15)
                finally:
                    writer.close()
                    await writer.wait_closed()

            assert asyncio.run(streams()) == b"asyncio by name"


def test_http_agent_from_the_environment_and_its_intentions(
    http_addr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://{http_addr}")
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    with libconnect.Agent() as agent:
        agent.intentions.upsert("intruder", "vault", "deny")
        assert not agent.intentions.check("intruder", "vault")
        assert agent.intentions.check("web", "vault")
        with agent.service("vault") as vault, agent.service("intruder") as intruder:
            # Over HTTP the service's intentions come from a blocking query; wait for it.
            deadline = time.monotonic() + T
            while vault.authorize(intruder.spiffe_id).allowed:
                assert time.monotonic() < deadline, "the deny intention never arrived"
                time.sleep(0.05)
            with EchoServer(vault) as server:
                with pytest.raises((libconnect.TlsError, libconnect.ConnectIoError)):
                    with intruder.dial_addr(server.address, "vault", timeout=T) as conn:
                        round_trip(conn, b"x")
                assert server.peers == []
        agent.intentions.delete("intruder", "vault")
        assert agent.intentions.check("intruder", "vault")
