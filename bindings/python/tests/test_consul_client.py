"""An independent Consul client (PyPI ``py-consul``, not written here) against a real
``connect agent -dev``: catalog and health with tag and passing filters, a TTL check turned
passing through the client, ACL filtering answering empty lists, a blocking query returning on
change, and the agent, node and status endpoints it calls in ordinary use.

Imports nothing of libconnect: it tests the agent's HTTP API as any Consul user meets it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

consul = pytest.importorskip("consul")

from .agent_process import T, dev_agent_process  # noqa: E402

ROOT = "root-secret-for-py-consul"


def client(addr: str, token: str | None = None) -> Any:
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), token=token)


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    yield from dev_agent_process()


@pytest.fixture(scope="module")
def acl_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg: Path = tmp_path_factory.mktemp("acl") / "acl.hcl"
    cfg.write_text(
        'acl {\n  enabled = true\n  default_policy = "deny"\n'
        f'  tokens {{\n    initial_management = "{ROOT}"\n  }}\n}}\n'
    )
    yield from dev_agent_process("-config-file", str(cfg))


def ids(entries: List[Any]) -> List[str]:
    return sorted(e["Service"]["ID"] for e in entries)


def test_catalog_and_health_with_tags_and_a_ttl_check_turned_passing(addr: str) -> None:
    c = client(addr)
    assert c.agent.service.register(
        "web", service_id="web-1", port=8080, tags=["v1", "primary"],
        check=consul.Check.ttl("30s"),
    )
    assert c.agent.service.register(
        "web", service_id="web-2", port=8081, tags=["v2"], check=consul.Check.ttl("30s"),
    )
    _, rows = c.catalog.service("web", tag="v1")
    assert [r["ServiceID"] for r in rows] == ["web-1"]
    _, entries = c.health.service("web", tag=["v1", "primary"])
    assert ids(entries) == ["web-1"]
    _, entries = c.health.service("web", tag=["v1", "v2"])
    assert entries == []
    _, entries = c.health.service("web")
    assert ids(entries) == ["web-1", "web-2"]
    # The node's serfHealth check and UUID are there, as in Consul.
    entry = entries[0]
    assert entry["Node"]["ID"]
    assert {ch["CheckID"] for ch in entry["Checks"]} == {"serfHealth", "service:web-1"}

    # New TTL checks start critical: nothing passes until the client says so.
    _, entries = c.health.service("web", passing=True)
    assert entries == []
    assert c.agent.check.ttl_pass("service:web-1", notes="ready")
    _, entries = c.health.service("web", passing=True)
    assert ids(entries) == ["web-1"]
    _, checks = c.health.checks("web")
    by_id = {ch["CheckID"]: ch for ch in checks}
    assert by_id["service:web-1"]["Status"] == "passing"
    assert by_id["service:web-1"]["Output"] == "ready"
    assert by_id["service:web-2"]["Status"] == "critical"
    assert c.agent.check.ttl_warn("service:web-1", notes="slow")
    _, entries = c.health.service("web", passing=True)
    assert entries == []
    assert c.agent.check.ttl_pass("service:web-1")
    _, passing = c.health.state("passing")
    assert {ch["CheckID"] for ch in passing} == {"serfHealth", "service:web-1"}
    assert set(c.agent.checks()) == {"serfHealth", "service:web-1", "service:web-2"}

    # Checks registered on their own, and maintenance mode.
    assert c.agent.check.register(
        "disk", check=consul.Check.ttl("1m"), check_id="disk", notes="root fs"
    )
    assert c.agent.checks()["disk"]["Notes"] == "root fs"
    assert c.agent.check.deregister("disk")
    assert "disk" not in c.agent.checks()
    assert c.agent.service.maintenance("web-1", True, reason="upgrade")
    _, entries = c.health.service("web", passing=True)
    assert entries == []
    assert c.agent.checks()["_service_maintenance:web-1"]["Notes"] == "upgrade"
    assert c.agent.service.maintenance("web-1", False)
    _, entries = c.health.service("web", passing=True)
    assert ids(entries) == ["web-1"]
    assert c.agent.check.ttl_fail("service:web-1", notes="down")
    _, entries = c.health.service("web", passing=True)
    assert entries == []


def test_node_agent_and_status_endpoints(addr: str) -> None:
    c = client(addr)
    _, nodes = c.catalog.nodes()
    assert len(nodes) == 1
    name = nodes[0]["Node"]
    _, node = c.catalog.node(name)
    assert node["Node"]["Node"] == name
    _, checks = c.health.node(name)
    assert "serfHealth" in {ch["CheckID"] for ch in checks}
    members = c.agent.members()
    assert [m["Name"] for m in members] == [name]
    assert c.status.peers() == ["127.0.0.1:8300"]
    assert c.catalog.datacenters() == ["dc1"]
    _, coordinates = c.coordinate.nodes()
    assert coordinates == []
    assert c.agent.service.register("solo", service_id="solo-1", port=1)
    assert c.agent.services()["solo-1"]["Service"] == "solo"
    with pytest.raises(consul.ConsulException, match="Selector"):
        c.health.service("solo", filter_expr="Bogus == 1")
    assert c.agent.service.deregister("solo-1")


def test_a_blocking_query_returns_on_change(addr: str) -> None:
    c = client(addr)
    assert c.agent.service.register("cache", service_id="cache-1", port=1,
                                    check=consul.Check.ttl("30s"))
    index, entries = c.health.service("cache", passing=True)
    assert entries == []
    result: List[Tuple[str, List[Any], float]] = []

    def watch() -> None:
        start = time.monotonic()
        new_index, new = c.health.service("cache", passing=True, index=index, wait="20s")
        result.append((new_index, new, time.monotonic() - start))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    time.sleep(0.3)
    assert not result, "the query returned before any change"
    assert c.agent.check.ttl_pass("service:cache-1")
    t.join(T)
    assert result, "the blocking query did not return on the change"
    new_index, new, took = result[0]
    assert int(new_index) > int(index)
    assert ids(new) == ["cache-1"]
    assert took < 10


def test_acl_filtering_answers_empty_lists(acl_addr: str) -> None:
    root = client(acl_addr, token=ROOT)
    assert root.agent.service.register("db", service_id="db-1", port=5432,
                                       check=consul.Check.ttl("30s"))
    assert root.agent.service.register("web", service_id="web-1", port=8080)
    anonymous = client(acl_addr)
    # Consul answers a token that may not read db with an empty list, not an error.
    _, entries = anonymous.health.service("db")
    assert entries == []
    _, entries = anonymous.health.connect("db")
    assert entries == []
    _, rows = anonymous.catalog.service("db")
    assert rows == []
    _, services = anonymous.catalog.services()
    assert services == {}
    # Consul shows an instance to a token that may read its service and its node.
    policy = root.acl.policy.create(
        "web-read",
        rules={"service": {"web": {"policy": "read"}},
               "node_prefix": {"": {"policy": "read"}}},
    )
    token = root.acl.token.create(policies_id=[policy["ID"]])["SecretID"]
    web_reader = client(acl_addr, token=token)
    _, entries = web_reader.health.service("db")
    assert entries == []
    _, entries = web_reader.health.service("web")
    assert ids(entries) == ["web-1"]
    _, services = web_reader.catalog.services()
    assert list(services) == ["web"]
    # TTL updates need service:write on the check's service.
    with pytest.raises(consul.ACLPermissionDenied):
        web_reader.agent.check.ttl_pass("service:db-1")
    assert root.agent.check.ttl_pass("service:db-1")
    _, entries = root.health.service("db", passing=True)
    assert ids(entries) == ["db-1"]
