"""The official SPIFFE Python library (PyPI ``spiffe``, and ``spiffe-tls`` for its TLS helpers;
not written here) against the SPIFFE Workload API of a real ``connect agent -dev``: it fetches
``web``'s X.509-SVID and bundle from the agent's socket, opens mTLS to libconnect listeners (one
allowed by intention, one denied in the handshake), receives a new SVID on its stream after a
CA rotation, fetches and validates a JWT-SVID, and a caller no registration matches (another
uid) is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

spiffe = pytest.importorskip("spiffe")
spiffetls = pytest.importorskip("spiffetls")

import libconnect  # noqa: E402

from .agent_process import T, dev_agent_process  # noqa: E402
from .support import EchoServer  # noqa: E402

# Another user than this test's: no registration matches it.
STRANGER = 4242


@pytest.fixture(scope="module")
def workload_agent() -> Iterator[Tuple[str, str]]:
    """A dev agent serving the Workload API (``web`` for this uid; leaves re-issued at once
    after a rotation); yields its HTTP address and the socket's ``unix://`` address."""
    # Outside pytest's 0700 temporary directories, so that the stranger reaches the socket.
    d = Path(tempfile.mkdtemp(prefix="spiffe-"))
    d.chmod(0o755)
    sock = d / "workload.sock"
    cfg = d / "agent.hcl"
    cfg.write_text(
        "workload_api {\n"
        f'  socket = "{sock}"\n'
        '  socket_mode = "0777"\n'
        '  root_change_jitter = "0s"\n'
        f'  workload {{\n    service = "web"\n    uid = {os.getuid()}\n  }}\n'
        "}\n"
    )
    try:
        for addr in dev_agent_process("-config-file", str(cfg)):
            deadline = time.monotonic() + T
            while not sock.exists():
                assert time.monotonic() < deadline, "the Workload API socket never appeared"
                time.sleep(0.05)
            yield addr, f"unix://{sock}"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def listeners(workload_agent: Tuple[str, str]) -> Iterator[Tuple[EchoServer, EchoServer]]:
    """libconnect services ``db`` (allowed: the dev default) and ``vault`` (web → vault
    denied) on an agent over HTTP, each behind an echo listener."""
    addr, _ = workload_agent
    with libconnect.Agent(address=addr, root_change_jitter=0) as agent:
        agent.intentions.upsert("web", "vault", "deny")
        with agent.service("db", ready_timeout=T) as db, agent.service(
            "vault", ready_timeout=T
        ) as vault, agent.service("web", ready_timeout=T) as web_probe:
            # Over HTTP the intentions arrive by a blocking query: wait for the deny.
            deadline = time.monotonic() + T
            while vault.authorize(web_probe.spiffe_id).allowed:
                assert time.monotonic() < deadline, "the deny intention never arrived"
                time.sleep(0.05)
            with EchoServer(db) as db_server, EchoServer(vault) as vault_server:
                yield db_server, vault_server


def client(socket: str) -> Any:
    return spiffe.WorkloadApiClient(socket_path=socket, default_timeout=T)


def test_fetches_webs_svid_and_bundle(workload_agent: Tuple[str, str]) -> None:
    _, socket = workload_agent
    with client(socket) as c:
        ctx = c.fetch_x509_context()
        svid = ctx.default_svid
        assert str(svid.spiffe_id).endswith("/ns/default/dc/dc1/svc/web")
        td = svid.spiffe_id.trust_domain
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
        assert bundle is not None and len(bundle.x509_authorities) == 1
        assert svid.private_key is not None
        bundles = c.fetch_x509_bundles()
        assert bundles.get_bundle_for_trust_domain(td) is not None


def _echo_over_spiffe_tls(source: Any, address: Tuple[str, int], payload: bytes) -> bytes:
    conn = spiffetls.dial(f"{address[0]}:{address[1]}", source)
    try:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(len(payload) - len(got))
            if not chunk:
                break
            got += chunk
        return got
    finally:
        conn.close()


# spiffe-tls 0.4.0 still reads X509Source.svid (deprecated by spiffe 0.3.2) and passes
# pyOpenSSL X509 objects (deprecated by pyOpenSSL): its warnings, not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_mtls_to_libconnect_is_ruled_by_intentions(
    workload_agent: Tuple[str, str], listeners: Tuple[EchoServer, EchoServer]
) -> None:
    _, socket = workload_agent
    db, vault = listeners
    source = spiffe.X509Source(socket_path=socket, timeout_in_seconds=T)
    try:
        assert _echo_over_spiffe_tls(source, db.address, b"hello db") == b"hello db"
        web_id = str(source.get_x509_context().default_svid.spiffe_id)
        assert web_id in db.peers
        # Denied inside the handshake: the server's access_denied alert ends the connection,
        # and the listener never hands it out.
        with pytest.raises(Exception, match="access denied"):
            _echo_over_spiffe_tls(source, vault.address, b"hello vault")
        assert web_id not in vault.peers
    finally:
        source.close()


def _put_json(url: str, body: object) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=T) as r:
        assert r.status == 200


@pytest.mark.timeout(60)
def test_a_ca_rotation_pushes_a_new_svid_on_the_stream(workload_agent: Tuple[str, str]) -> None:
    addr, socket = workload_agent
    updates: List[Any] = []
    errors: List[Exception] = []
    got = threading.Condition()

    def on_success(ctx: Any) -> None:
        with got:
            updates.append(ctx)
            got.notify_all()

    def on_error(e: Exception) -> None:
        errors.append(e)

    with client(socket) as c:
        handle = c.stream_x509_contexts(on_success=on_success, on_error=on_error)
        try:
            with got:
                assert got.wait_for(lambda: len(updates) >= 1, T), errors
            first = updates[0].default_svid
            # Alternate the key type, so each run rotates whatever the agent has now.
            with urllib.request.urlopen(f"http://{addr}/v1/connect/ca/configuration", timeout=T) as r:
                current = json.load(r)["Config"].get("PrivateKeyBits", 256)
            bits = 384 if int(current) == 256 else 256
            started = time.monotonic()
            _put_json(
                f"http://{addr}/v1/connect/ca/configuration",
                {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": bits}},
            )
            with urllib.request.urlopen(f"http://{addr}/v1/connect/ca/roots", timeout=T) as r:
                roots = json.load(r)
            active = next(x for x in roots["Roots"] if x["Active"])
            new_root_key_id = active["SigningKeyID"].replace(":", "").lower()

            def new_leaf() -> bool:
                for ctx in updates[1:]:
                    leaf = ctx.default_svid.leaf
                    if leaf.serial_number == first.leaf.serial_number:
                        continue
                    from cryptography import x509

                    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
                    if aki.value.key_identifier.hex() == new_root_key_id:
                        return True
                return False

            with got:
                assert got.wait_for(new_leaf, 30), (len(updates), errors)
            elapsed = time.monotonic() - started
            print(f"rotation to a new SVID on the stream: {elapsed * 1000:.0f} ms")
            assert str(updates[-1].default_svid.spiffe_id) == str(first.spiffe_id)
        finally:
            handle.cancel()


def test_jwt_svid_fetched_and_validated(workload_agent: Tuple[str, str]) -> None:
    _, socket = workload_agent
    with client(socket) as c:
        jwt = c.fetch_jwt_svid(audience={"db"})
        assert str(jwt.spiffe_id).endswith("/svc/web")
        validated = c.validate_jwt_svid(jwt.token, "db")
        assert str(validated.spiffe_id) == str(jwt.spiffe_id)
        # Verified locally too, with the JWKS bundle from the socket.
        bundles = c.fetch_jwt_bundles()
        bundle = bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain)
        assert bundle is not None
        local = spiffe.JwtSvid.parse_and_validate(jwt.token, bundle, {"db"})
        assert str(local.spiffe_id) == str(jwt.spiffe_id)
        with pytest.raises(Exception):
            c.validate_jwt_svid(jwt.token, "not-db")


STRANGER_SCRIPT = """
import sys
import spiffe
try:
    spiffe.WorkloadApiClient(socket_path=sys.argv[1], default_timeout=10).fetch_x509_svid()
except Exception as e:
    print("refused:", repr(e), repr(e.__cause__))
    sys.exit(3)
print("served")
"""


def test_an_unmatched_caller_is_refused(workload_agent: Tuple[str, str]) -> None:
    _, socket = workload_agent
    setpriv = shutil.which("setpriv")
    if os.getuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run a client as another uid")
    out = subprocess.run(
        [
            setpriv, f"--reuid={STRANGER}", f"--regid={STRANGER}", "--clear-groups",
            sys.executable, "-c", STRANGER_SCRIPT, socket,
        ],
        capture_output=True,
        text=True,
        timeout=T * 2,
    )
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "PERMISSION_DENIED" in out.stdout or "no identity issued" in out.stdout, out.stdout


def test_libconnect_jwt_svids_and_the_workload_apis_are_one_issuer(
    workload_agent: Tuple[str, str],
) -> None:
    """libconnect's own ``Service.jwt_svid`` / ``Agent.validate_jwt_svid`` (through the agent's
    HTTP API) and the Workload API sign with the same key: each validates the other's token."""
    addr, socket = workload_agent
    with libconnect.Agent(address=addr) as agent, client(socket) as c:
        with agent.service("web", ready_timeout=T) as web:
            token = web.jwt_svid(["db", "api"])
            assert str(c.validate_jwt_svid(token, "db").spiffe_id) == web.spiffe_id
            theirs = c.fetch_jwt_svid(audience={"api"})
            claims = agent.validate_jwt_svid(theirs.token, "api")
            assert claims["sub"] == str(theirs.spiffe_id)
            assert claims["aud"] == "api"
            with pytest.raises(libconnect.InvalidArgumentError, match="audience"):
                agent.validate_jwt_svid(theirs.token, "db")
