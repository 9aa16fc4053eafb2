"""Shared fixtures: a dev agent per test and services on it."""

from __future__ import annotations

from typing import Iterator

import pytest

import libconnect

from .support import T


@pytest.fixture
def agent() -> Iterator[libconnect.Agent]:
    # No jitter: leaves are re-issued right after a root rotation.
    with libconnect.Agent.dev(root_change_jitter=0) as a:
        yield a


def _service(agent: libconnect.Agent, name: str) -> Iterator[libconnect.Service]:
    with agent.service(name, ready_timeout=T) as s:
        yield s


@pytest.fixture
def db(agent: libconnect.Agent) -> Iterator[libconnect.Service]:
    yield from _service(agent, "db")


@pytest.fixture
def web(agent: libconnect.Agent) -> Iterator[libconnect.Service]:
    yield from _service(agent, "web")


@pytest.fixture
def api(agent: libconnect.Agent) -> Iterator[libconnect.Service]:
    """A service the intentions deny access to db."""
    agent.intentions.upsert("api", "db", "deny")
    yield from _service(agent, "api")
