"""Resources: no leak over 10,000 create/close cycles; objects closed by GC stop their work."""

from __future__ import annotations

import gc
import os
from typing import Callable

import libconnect

from .support import T, EchoServer, eventually, round_trip


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_growth_kib(cycle: Callable[[int], None], warm_up: int, measured: int) -> int:
    """How much the RSS grows over ``measured`` cycles, after ``warm_up`` cycles have warmed
    caches, allocator arenas and thread pools."""
    cycle(warm_up)
    gc.collect()
    before = _rss_kib()
    cycle(measured)
    gc.collect()
    return _rss_kib() - before


def test_rss_is_flat_over_10000_service_cycles(agent: libconnect.Agent) -> None:
    def cycle(n: int) -> None:
        for i in range(n):
            with agent.service("web") as svc:
                if i % 10 == 0:
                    svc.on_change(lambda: None).close()
                    svc.authorize(svc.spiffe_id)

    grown = _rss_growth_kib(cycle, 1_000, 10_000)
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 10,000 cycles"


def test_rss_is_flat_over_connection_cycles(db: libconnect.Service, web: libconnect.Service) -> None:
    with EchoServer(db) as server:

        def cycle(n: int) -> None:
            for _ in range(n):
                with web.dial_addr(server.address, "db", timeout=T) as conn:
                    assert round_trip(conn, b"x") == b"x"

        grown = _rss_growth_kib(cycle, 300, 1_500)
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 1,500 connections"


def test_dropped_objects_stop_their_threads(agent: libconnect.Agent) -> None:
    def on_change_threads() -> int:
        # Thread names are cut to 15 bytes: "libconnect-on-change-<service>".
        return sum(1 for t in os.listdir("/proc/self/task") if _thread_name(t) == "libconnect-on-c")

    base = on_change_threads()
    svc = agent.service("gc-me")
    svc.on_change(lambda: None)
    eventually(lambda: on_change_threads() == base + 1)
    del svc  # never closed: dropping it stops the thread too
    gc.collect()
    eventually(lambda: on_change_threads() == base)


def _thread_name(tid: str) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
