"""Python against the other languages, over one ``connect agent -dev`` process (one CA, one set
of intentions): a Python client and the C example ``echo_server``, a Python server and the Rust
example ``echo_client`` (``core/examples/echo_client.rs``); intentions allow and deny.

The C example comes from the C lane (``scripts/test-c.sh`` builds it into
``$CARGO_TARGET_DIR/c-test``; ``LIBCONNECT_C_EXAMPLES`` names another directory); the Rust
example from ``cargo build -p connect-core --example echo_client`` (``scripts/test-python.sh``
builds it; ``LIBCONNECT_RUST_ECHO_CLIENT`` names another binary)."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Iterator, List, Optional

import pytest

import libconnect

from .support import T, EchoServer, dev_agent_process, round_trip, stop, target_dir


def _c_example(name: str) -> Path:
    base = Path(os.environ.get("LIBCONNECT_C_EXAMPLES") or target_dir() / "c-test")
    path = base / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"the C example {path} is not built (scripts/test-c.sh builds it)")
    return path


def _rust_echo_client() -> Path:
    explicit = os.environ.get("LIBCONNECT_RUST_ECHO_CLIENT")
    path = Path(explicit) if explicit else target_dir() / "debug" / "examples" / "echo_client"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"the Rust example {path} is not built: "
            "cargo build -p connect-core --example echo_client"
        )
    return path


@pytest.fixture(scope="module")
def http_addr() -> Iterator[str]:
    yield from dev_agent_process()


def _env(http_addr: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env["CONSUL_HTTP_ADDR"] = f"http://{http_addr}"
    return env


class _Lines:
    """The lines a process writes to a pipe, read by a thread, waited for with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: List[str] = []
        self._q: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        try:
            for line in pipe:
                self._q.put(line)
        except (OSError, ValueError):
            pass  # closed by stop
        self._q.put(None)

    def wait_for(self, needle: str, timeout: float = T) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {needle!r} in time; saw {self.seen}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended before {needle!r}; saw {self.seen}")
            self.seen.append(line)
            if needle in line:
                return line


@pytest.fixture
def c_echo_server(http_addr: str) -> Iterator[tuple[str, int]]:
    """The C example ``echo_server`` as ``echo-c``, only ``py-client`` allowed."""
    binary = _c_example("echo_server")
    proc = subprocess.Popen(
        [str(binary), "-listen", "127.0.0.1:0", "-service", "echo-c", "-allow", "py-client"],
        env=_env(http_addr),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = _Lines(proc.stdout).wait_for(" listening on ")
        host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        yield host, int(port)
    finally:
        stop(proc)


def test_python_client_c_server_allowed(http_addr: str, c_echo_server: tuple[str, int]) -> None:
    with libconnect.Agent(address=http_addr, root_change_jitter=0) as agent:
        assert agent.intentions.check("py-client", "echo-c")
        with agent.service("py-client", ready_timeout=T) as client:
            for msg in (b"hello from python", b"x" * 100_000):
                with client.dial_addr(c_echo_server, "echo-c", timeout=T) as conn:
                    assert conn.peer_id.endswith("/svc/echo-c")
                    assert round_trip(conn, msg) == msg


def test_python_client_c_server_denied(http_addr: str, c_echo_server: tuple[str, int]) -> None:
    with libconnect.Agent(address=http_addr, root_change_jitter=0) as agent:
        assert not agent.intentions.check("py-intruder", "echo-c")
        with agent.service("py-intruder", ready_timeout=T) as intruder:
            with pytest.raises((libconnect.TlsError, libconnect.ConnectIoError)):
                with intruder.dial_addr(c_echo_server, "echo-c", timeout=T) as conn:
                    conn.settimeout(T)
                    round_trip(conn, b"secret")
        # The server is still serving allowed clients after refusing one.
        with agent.service("py-client", ready_timeout=T) as client:
            with client.dial_addr(c_echo_server, "echo-c", timeout=T) as conn:
                assert round_trip(conn, b"still here") == b"still here"


def _rust_client(http_addr: str, name: str, addr: str, msg: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [str(_rust_echo_client()), "-service", name, "-target", "echo-py", addr, msg],
        env=_env(http_addr),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=3 * T,
    )


def test_python_server_rust_client(http_addr: str) -> None:
    with libconnect.Agent(address=http_addr, root_change_jitter=0) as agent:
        agent.intentions.upsert("*", "echo-py", "deny")
        agent.intentions.upsert("rust-client", "echo-py", "allow")
        with agent.service("echo-py", ready_timeout=T) as svc:
            # Over HTTP the service's intentions come from a blocking query; wait for them.
            intruder_id = svc.spiffe_id.rsplit("/", 1)[0] + "/rust-intruder"
            deadline = time.monotonic() + T
            while svc.authorize(intruder_id).allowed:
                assert time.monotonic() < deadline, "the deny intention never arrived"
                time.sleep(0.05)
            with EchoServer(svc) as server:
                addr = f"127.0.0.1:{server.address[1]}"

                ok = _rust_client(http_addr, "rust-client", addr, "hello from rust")
                assert ok.returncode == 0, ok.stderr
                assert ok.stdout.splitlines()[0] == "hello from rust"
                assert "/svc/echo-py" in ok.stdout

                # By name: listen() registered the instance in the catalog.
                by_name = _rust_client(http_addr, "rust-client", "-", "by name")
                assert by_name.returncode == 0, by_name.stderr
                assert by_name.stdout.splitlines()[0] == "by name"

                denied = _rust_client(http_addr, "rust-intruder", addr, "secret")
                assert denied.returncode == 1, denied.stdout + denied.stderr
                assert "echo_client:" in denied.stderr

                assert len(server.peers) == 2
                assert all(p.endswith("/svc/rust-client") for p in server.peers)
