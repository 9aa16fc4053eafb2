"""A ``connect agent -dev`` process for the tests that talk to it over HTTP, and what finding
and stopping it needs; imports nothing of libconnect, so that tests of independent Consul
clients run without the binding."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest

# Every wait in these tests is bounded by this (seconds); pytest-timeout bounds each test.
T = 10.0


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


def dev_agent_process(*extra_args: str) -> Iterator[str]:
    """Runs ``connect agent -dev`` (with ``extra_args``) on a free port and yields its HTTP
    address once it answers; for module-scoped ``http_addr`` fixtures. Skips without the
    binary."""
    binary = connect_binary()
    if binary is None:
        pytest.skip("the connect binary is not built (scripts/test-python.sh builds it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "agent", "-dev", "-http-port", str(port), "-log-level", "warn", *extra_args],
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
                with urllib.request.urlopen(f"http://{addr}/v1/status/leader", timeout=1) as r:
                    r.read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("connect agent -dev did not start")
                time.sleep(0.05)
        yield addr
    finally:
        stop(proc)
