"""Helpers shared by the tests: an echo server over a libconnect listener, exact reads,
PEM to DER, polling with a deadline, and a ``connect agent -dev`` process."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Callable, List

import libconnect

from .agent_process import T, connect_binary, dev_agent_process, free_port, stop, target_dir

__all__ = ["T", "connect_binary", "dev_agent_process", "free_port", "stop", "target_dir"]


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
