"""web: the demo's Python client of db, with native Connect mTLS from ``import libconnect``.

It keeps one long-lived connection to ``db`` and sends a request on it every second, printing
each answer, so a CA rotation that never drops a connection shows in the transcript. A line
``new`` on standard input makes it open a second, short connection (a fresh handshake with
the current certificates). When db closes the long-lived connection (libconnect does that when
an intention stops allowing web), it says so and tries once to connect again.

Run with ``CONSUL_HTTP_ADDR`` pointing at ``connect agent -dev`` (or a Consul agent).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time

import libconnect


def say(text: str) -> None:
    print(f"web: {text}", flush=True)


def fingerprint(der: bytes) -> str:
    """A short SHA-256 fingerprint, to tell certificates apart in the transcript."""
    return hashlib.sha256(der).hexdigest()[:16]


def ask(conn: libconnect.Connection, request: str) -> str:
    """Sends one line and reads one line back; ``""`` if db closed the connection."""
    conn.sendall(request.encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            return ""
        answer += chunk
    return answer.decode().rstrip("\n")


def describe(err: BaseException) -> str:
    code = getattr(err, "code", None)
    return f"{type(err).__name__} [{code}]: {err}" if code else f"{type(err).__name__}: {err}"


def long_lived(service: libconnect.Service, stop: threading.Event) -> None:
    conn = service.dial("db", timeout=10)
    say(
        f"connected to {conn.peer_id} (db's certificate {fingerprint(conn.peer_certificate)}); "
        "keeping this connection open"
    )
    n = 0
    with conn:
        while not stop.is_set():
            n += 1
            try:
                answer = ask(conn, f"request {n}")
            except libconnect.ConnectError as e:
                say(f"the long-lived connection was closed after {n - 1} answers: {describe(e)}")
                break
            if not answer:
                say(f"db closed the long-lived connection after {n - 1} answers")
                break
            say(f"request {n} on the long-lived connection answered: {answer!r}")
            stop.wait(1.0)
    if stop.is_set():
        return
    try:
        again = service.dial("db", timeout=10)
        answer = ask(again, "may I come back?")
        if answer:
            say(f"reconnected and was answered: {answer!r}")
        else:
            say("reconnect: db refused us (the connection closed before any answer)")
        again.close()
    except libconnect.ConnectError as e:
        say(f"reconnect refused: {describe(e)}")


def fresh(service: libconnect.Service) -> None:
    try:
        with service.dial("db", timeout=10) as conn:
            answer = ask(conn, "hello on a new connection")
            say(
                f"new connection (new handshake) answered: {answer!r}; db's certificate is now "
                f"{fingerprint(conn.peer_certificate)}"
            )
    except libconnect.ConnectError as e:
        say(f"new connection failed: {describe(e)}")


def main() -> int:
    # Leaves are re-issued within a second of a root rotation instead of Consul's 30 s spread.
    with libconnect.Agent(root_change_jitter=1.0) as agent:
        service = agent.service("web", ready_timeout=30)
        say(f"my identity is {service.spiffe_id}")
        stop = threading.Event()
        worker = threading.Thread(target=long_lived, args=(service, stop), daemon=True)
        worker.start()
        try:
            for line in sys.stdin:
                if line.strip() == "new":
                    fresh(service)
                elif line.strip() == "quit":
                    break
        except KeyboardInterrupt:
            pass
        stop.set()
        worker.join(timeout=5)
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
