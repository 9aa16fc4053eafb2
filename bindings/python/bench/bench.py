"""Handshakes per second and throughput: libconnect's Connection against Python's own ``ssl``
with the same certificates (the service's ``ssl_context``).

Build the binding optimised first, then run:

    cd bindings/python && maturin develop --release && python bench/bench.py [--quick]

Each row runs client and server in this process (two threads, loopback), so the numbers
include both ends of every handshake. libconnect clients resume TLS sessions (as Consul's Go
client does); the row says how many of its handshakes were resumed. Python's ``ssl`` client is
shown both without resumption (every handshake full) and with it (``session=`` reuse).
Prints a Markdown table; ``--json PATH`` also writes the figures for scripts/bench-report.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import ssl
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

import libconnect

CHUNK = 64 * 1024


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def _mib_s(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / (1 << 20):,.0f}"


def libconnect_handshakes(db: libconnect.Service, web: libconnect.Service, n: int) -> Tuple[float, int]:
    with db.listen() as listener:
        done = threading.Event()

        def serve() -> None:
            for _ in range(n):
                with listener.accept(timeout=30):
                    pass
            done.set()

        t = threading.Thread(target=serve)
        t.start()
        resumed = 0
        start = time.perf_counter()
        for _ in range(n):
            with web.dial_addr(listener.address, "db", timeout=30) as c:
                resumed += c.resumed
        done.wait(30)
        elapsed = time.perf_counter() - start
        t.join()
    return elapsed, resumed


def ssl_handshakes(db: libconnect.Service, web: libconnect.Service, n: int, resume: bool) -> float:
    sctx, cctx = db.ssl_context(True), web.ssl_context(False)
    srv = sctx.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)
    address = srv.getsockname()[:2]

    def serve() -> None:
        for _ in range(n):
            conn, _ = srv.accept()  # handshake + intention check
            conn.close()

    t = threading.Thread(target=serve)
    t.start()
    session: Optional[ssl.SSLSession] = None
    start = time.perf_counter()
    for _ in range(n):
        with cctx.wrap_socket(socket.create_connection(address), session=session) as s:
            web.check_peer(s, "db")
            if resume:
                s.recv(0)  # TLS 1.3 tickets arrive after the handshake
                session = s.session
    t.join()
    elapsed = time.perf_counter() - start
    srv.close()
    sctx.close()
    cctx.close()
    return elapsed


def _stream(send: Callable[[bytes], None], recv: Callable[[int], bytes], total: int) -> float:
    got = 0

    def drain() -> None:
        nonlocal got
        while got < total:
            data = recv(CHUNK)
            if not data:
                return
            got += len(data)

    t = threading.Thread(target=drain)
    payload = b"\x5a" * CHUNK
    start = time.perf_counter()
    t.start()
    sent = 0
    while sent < total:
        send(payload)
        sent += len(payload)
    t.join()
    elapsed = time.perf_counter() - start
    assert got == total, (got, total)
    return elapsed


def libconnect_throughput(db: libconnect.Service, web: libconnect.Service, total: int) -> float:
    with db.listen() as listener, web.dial_addr(listener.address, "db", timeout=30) as client:
        with listener.accept(timeout=30) as server:
            return _stream(client.sendall, server.recv, total)


def ssl_throughput(db: libconnect.Service, web: libconnect.Service, total: int) -> float:
    sctx, cctx = db.ssl_context(True), web.ssl_context(False)
    with socket.create_server(("127.0.0.1", 0)) as raw:
        address = raw.getsockname()[:2]
        accepted: List[ssl.SSLSocket] = []
        t = threading.Thread(target=lambda: accepted.append(db.wrap_server_socket(raw.accept()[0])))
        t.start()
        with cctx.wrap_socket(socket.create_connection(address)) as client:
            t.join()
            with accepted[0] as server:
                return _stream(client.sendall, server.recv, total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    n = 200 if args.quick else 2000
    total = (64 if args.quick else 1024) << 20

    with libconnect.Agent.dev() as agent, agent.service("db") as db, agent.service("web") as web:
        # Warm up: first handshakes, session caches, allocator.
        libconnect_handshakes(db, web, 20)
        ssl_handshakes(db, web, 20, resume=False)

        rows = []
        figures = {}
        t, resumed = libconnect_handshakes(db, web, n)
        rows.append(("handshakes/s", "libconnect", _rate(n, t), f"{resumed}/{n} resumed"))
        figures["libconnect_handshakes_per_s"] = n / t
        figures["libconnect_resumed"] = resumed
        t = ssl_handshakes(db, web, n, resume=False)
        rows.append(("handshakes/s", "Python ssl", _rate(n, t), "full handshakes"))
        figures["ssl_full_handshakes_per_s"] = n / t
        t = ssl_handshakes(db, web, n, resume=True)
        rows.append(("handshakes/s", "Python ssl", _rate(n, t), "client reuses its session"))
        figures["ssl_resumed_handshakes_per_s"] = n / t
        t = libconnect_throughput(db, web, total)
        rows.append(("MiB/s", "libconnect", _mib_s(total, t), f"{total >> 20} MiB, {CHUNK >> 10} KiB sends"))
        figures["libconnect_mib_per_s"] = total / t / (1 << 20)
        t = ssl_throughput(db, web, total)
        rows.append(("MiB/s", "Python ssl", _mib_s(total, t), f"{total >> 20} MiB, {CHUNK >> 10} KiB sends"))
        figures["ssl_mib_per_s"] = total / t / (1 << 20)

    print(f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}, libconnect {libconnect.__version__}")
    print()
    print("| metric | stack | value | notes |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()
    if args.json:
        doc = {
            "harness": "python",
            "quick": args.quick,
            "command": "make bench-python",
            "params": {"handshakes": n, "mib": total >> 20, "python": platform.python_version(),
                       "openssl": ssl.OPENSSL_VERSION, "libconnect": libconnect.__version__},
            "results": figures,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
