"""Helpers shared by the tests: an echo server over a libconnect listener, exact reads,
PEM to DER, polling with a deadline, and a ``connect agent -dev`` process."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

import libconnect

# Every wait in these tests is bounded by this (seconds); pytest-timeout bounds each test.
T = 10.0


class EchoServer:
    """A libconnect listener whose accepted connections are echoed by threads; records the
    peers it was handed."""

    def __init__(self, service: libconnect.Service) -> None:
        self.listener = service.listen("127.0.0.1:0")
        self.address = self.listener.address
        self.peers: List[str] = []
        self._threads: List[threading.Thread] = []
        self._accepting = threading.Thread(target=self._run, daemon=True)
        self._accepting.start()

    def _run(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except libconnect.ConnectError:
                return  # closed
            self.peers.append(conn.peer_id)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            # Keep only live threads: from Python 3.13 on, a finished thread's stack is freed
            # once its Thread object goes (or is joined).
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(t)
            t.start()

    @staticmethod
    def _echo(conn: libconnect.Connection) -> None:
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except libconnect.ConnectError:
                return

    def close(self) -> None:
        self.listener.close()
        self._accepting.join(T)
        for t in self._threads:
            t.join(T)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recv_exact(conn: libconnect.Connection, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def round_trip(conn: libconnect.Connection, msg: bytes) -> bytes:
    conn.sendall(msg)
    return recv_exact(conn, len(msg))


def first_der(pem: bytes) -> bytes:
    """The DER of the first certificate in a PEM chain."""
    text = pem.decode("ascii")
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[: text.index(end) + len(end)] + "\n")


def eventually(cond: Callable[[], bool], timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def target_dir() -> Path:
    """Cargo's target directory: ``$CARGO_TARGET_DIR`` or the repository's ``target``."""
    root = Path(__file__).resolve().parents[3]
    return Path(os.environ.get("CARGO_TARGET_DIR") or root / "target")


def connect_binary() -> Optional[str]:
    """The ``connect`` binary: ``$LIBCONNECT_CONNECT_BIN``, the debug build, or ``$PATH``."""
    explicit = os.environ.get("LIBCONNECT_CONNECT_BIN")
    if explicit:
        return explicit
    built = target_dir() / "debug" / "connect"
    return str(built) if built.exists() else shutil.which("connect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: "subprocess.Popen[str]") -> None:
    """Terminates ``proc`` (killing it if it lingers) and closes its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(T)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(T)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def dev_agent_process() -> Iterator[str]:
    """Runs ``connect agent -dev`` on a free port and yields its HTTP address once it answers;
    for module-scoped ``http_addr`` fixtures. Skips without the binary."""
    binary = connect_binary()
    if binary is None:
        pytest.skip("the connect binary is not built (scripts/test-python.sh builds it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "agent", "-dev", "-http-port", str(port), "-log-level", "warn"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
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
        stop(proc)
