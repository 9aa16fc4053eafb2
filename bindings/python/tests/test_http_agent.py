"""An Agent over HTTP: a ``connect agent -dev`` process (the Consul HTTP API) as the backend,
configured by arguments or by Consul's environment variables; dialing by service name through
the catalog."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest

import libconnect

from .support import T, EchoServer, round_trip


def _connect_binary() -> Optional[str]:
    explicit = os.environ.get("LIBCONNECT_CONNECT_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path(__file__).resolve().parents[3] / "target")
    built = Path(target) / "debug" / "connect"
    return str(built) if built.exists() else shutil.which("connect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def http_addr() -> Iterator[str]:
    binary = _connect_binary()
    if binary is None:
        pytest.skip("the connect binary is not built (scripts/test-python.sh builds it)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "agent", "-dev", "-http-port", str(port), "-log-level", "warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + T
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/v1/agent/self", timeout=1) as r:
                    r.read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("connect agent -dev did not start")
                time.sleep(0.05)
        yield addr
    finally:
        proc.terminate()
        proc.wait(T)


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
