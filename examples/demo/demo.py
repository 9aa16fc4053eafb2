#!/usr/bin/env python3
"""The libconnect demo: three services in three languages on one `connect agent -dev`.

    db   C       examples/demo/db.c    a Connect-native echo service (libconnect.so)
    web  Python  examples/demo/web.py  allowed to talk to db (import libconnect)
    api  Node    examples/demo/api.js  denied (require('libconnect'))

The script starts the agent, writes the intentions with the `connect` CLI as an operator would,
then shows, step by step: web answered; api refused inside the TLS handshake, with db's reason;
a live CA rotation during which web's open connection keeps working; the intention web → db
flipped to deny, after which db closes web's open connection. Every step is checked; the demo
exits non-zero on the first one that does not happen. Every process it started is stopped on
exit, also after a failure or Ctrl-C.

`make demo` (scripts/demo.sh) builds what it needs and runs it; to run it by hand:

    python3 examples/demo/demo.py --connect BIN --db BIN --python PY --node-path DIR
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP_TIMEOUT = 30.0


class DemoFailed(Exception):
    pass


_out = threading.Lock()


def emit(text: str) -> None:
    """One whole line per call, also with the children's output pumped from other threads."""
    with _out:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def narrate(text: str) -> None:
    emit(f"\n==> {text}")


def show(text: str) -> None:
    emit(f"    {text}")


class Child:
    """A process whose output lines are echoed into the transcript and kept for `expect`."""

    def __init__(self, registry: list[Child], name: str, argv: list[str], env: dict[str, str],
                 echo: bool = True, stdin: bool = False) -> None:
        self.name = name
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line arrived (time.monotonic())
        self.last_time = 0.0  # when the line the last `expect` matched arrived
        self.cond = threading.Condition()
        self.echo = echo
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            # Same process group as the demo: a Ctrl-C in the terminal, or a CI timeout that
            # kills the group, reaches the children too; cleanup() stops them otherwise.
        )
        # Registered at once, so that no interruption can leave it unknown to cleanup().
        registry.append(self)
        for stream, tag in ((self.proc.stdout, ""), (self.proc.stderr, " (log)")):
            threading.Thread(target=self._pump, args=(stream, tag), daemon=True).start()

    def _pump(self, stream, tag: str) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            with self.cond:
                self.lines.append(line)
                self.times.append(time.monotonic())
                self.cond.notify_all()
            if self.echo:
                prefix = f"[{self.name}{tag}]"
                emit(f"    {prefix:<12} {line}")

    def expect(self, pattern: str, after: int = 0, timeout: float = STEP_TIMEOUT) -> re.Match[str]:
        """The first line from index `after` on that matches `pattern`, waiting up to `timeout`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            i = after
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    i += 1
                    if m:
                        self.last_time = self.times[i - 1]
                        return m
                if self.proc.poll() is not None and i >= len(self.lines):
                    # Let the pump threads drain what is left before giving up.
                    self.cond.wait(0.2)
                    if i >= len(self.lines):
                        raise DemoFailed(
                            f"{self.name} exited ({self.proc.returncode}) before printing "
                            f"/{pattern}/"
                        )
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoFailed(f"{self.name} did not print /{pattern}/ within {timeout:.0f} s")
                self.cond.wait(left)

    def count(self, pattern: str, after: int = 0) -> int:
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for line in self.lines[after:] if rx.search(line))

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[Child] = []
        self.env = dict(os.environ)
        self.workdir = Path(tempfile.mkdtemp(prefix="libconnect-demo-"))

    def start(self, *a, **kw) -> Child:
        return Child(self.children, *a, **kw)

    def cli(self, *argv: str, check: bool = True) -> str:
        """Runs `connect <argv>` as an operator would, showing the command and its output."""
        show("$ connect " + " ".join(argv))
        r = subprocess.run([self.args.connect, *argv], env=self.env, text=True,
                           capture_output=True, timeout=STEP_TIMEOUT)
        out = (r.stdout + r.stderr).strip()
        for line in out.splitlines():
            show(f"  {line}")
        if check and r.returncode != 0:
            raise DemoFailed(f"`connect {' '.join(argv)}` exited {r.returncode}")
        return r.stdout

    def active_root(self) -> str:
        out = subprocess.run([self.args.connect, "ca", "roots"], env=self.env, text=True,
                             capture_output=True, timeout=STEP_TIMEOUT, check=True).stdout
        roots = json.loads(out)["Roots"]
        active = [r for r in roots if r.get("Active")]
        if len(active) != 1:
            raise DemoFailed(f"expected one active root, got {len(active)}")
        return f"{active[0]['ID'][:23]}… ({active[0]['Name']}, {len(roots)} root(s) trusted)"

    def cleanup(self) -> None:
        # A second Ctrl-C must not cut the cleanup short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for c in reversed(self.children):
            try:
                c.stop()
            except Exception as e:  # keep stopping the others
                print(f"could not stop {c.name}: {e}", file=sys.stderr)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self) -> None:
        a = self.args
        narrate("Starting the control plane: connect agent -dev (in-memory, like consul agent -dev)")
        agent = self.start("agent", [a.connect, "agent", "-dev", "-http-port", "0"], self.env,
                           echo=False)
        m = agent.expect(r"HTTP API listening on http://(\S+)")
        self.env["CONSUL_HTTP_ADDR"] = m.group(1)
        show(f"agent ready; every program below finds it through CONSUL_HTTP_ADDR={m.group(1)}")
        show(f"active CA root: {self.active_root()}")

        narrate("Intentions, written with the CLI: web → db allow, api → db deny")
        self.cli("intention", "create", "-allow", "web", "db")
        self.cli("intention", "create", "-deny", "api", "db")

        narrate("Starting db: a C echo service linked against libconnect.so")
        db_env = dict(self.env, LIBCONNECT_LOG="info")
        db = self.start("db", [a.db, "-service", "db", "-root-change-jitter-ms", "1000"], db_env)
        db.expect(r"^db: listening on ")

        narrate("Starting web: a Python client (import libconnect) that keeps one connection open")
        py_env = dict(self.env)
        web = self.start("web", [a.python, "-u", str(HERE / "web.py")], py_env, stdin=True)
        first_cert = web.expect(r"^web: connected to spiffe://\S+/svc/db.*certificate (\w+)\)").group(1)
        web.expect(r"^web: request 2 on the long-lived connection answered")
        show("✔ web's requests are answered by db over mutual TLS")

        narrate("Starting api: a Node client (require('libconnect')); api → db is denied")
        mark_db = db.mark()
        node_env = dict(self.env, NODE_PATH=a.node_path)
        api = self.start("api", [a.node, str(HERE / "api.js")], node_env)
        api.expect(r"^api: db refused us during the TLS handshake")
        api.proc.wait(timeout=STEP_TIMEOUT)
        if api.proc.returncode != 0:
            raise DemoFailed(f"api exited {api.proc.returncode}")
        refusal = db.expect(r"refused a client during the TLS handshake.*svc/api.*reason=(.*)",
                            after=mark_db)
        if db.count(r"^db: accepted .*svc/api", after=mark_db):
            raise DemoFailed("db's application saw api's connection")
        show(f"✔ api was refused inside the handshake; db's reason: {refusal.group(1)}")
        show("✔ db's application code never saw api's connection (no 'accepted' line for api)")

        narrate("Rotating the CA live: a new root key (EC P-384), cross-signed by the old root")
        before = self.active_root()
        config = self.workdir / "ca.json"
        config.write_text(
            '{"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}}'
        )
        mark_web, mark_db = web.mark(), db.mark()
        self.cli("ca", "set-config", "-config-file", str(config))
        after = self.active_root()
        show(f"active root before: {before}")
        show(f"active root after:  {after}")
        if before.split(" ")[0] == after.split(" ")[0]:
            raise DemoFailed("the active root did not change")
        db.expect(r"^db: identity changed .*2 trusted root", after=mark_db)
        m = web.mark()
        for _ in range(3):
            web.expect(r"^web: request \d+ on the long-lived connection answered", after=m)
            m = web.mark()
        if web.count(r"^web: .*closed", after=mark_web):
            raise DemoFailed("web's long-lived connection was interrupted by the rotation")
        show("✔ web's long-lived connection kept working through the rotation")
        # db's leaf is re-issued from the new root within the 1 s jitter db was given; new
        # handshakes then see its new certificate.
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            m = web.mark()
            web.send("new")
            got = web.expect(r"^web: new connection (failed|.*answered.*certificate is now (\w+))",
                             after=m)
            if got.group(1) == "failed":
                raise DemoFailed("web's new connection after the rotation failed")
            if got.group(2) != first_cert:
                break
            if time.monotonic() > deadline:
                raise DemoFailed("db never presented a certificate from the new root")
            time.sleep(0.5)
        show(f"✔ new handshakes work and see db's re-issued certificate ({first_cert} → "
             f"{got.group(2)})")

        narrate("Flipping the intention web → db to deny")
        mark_web, mark_db = web.mark(), db.mark()
        flipped = time.monotonic()
        self.cli("intention", "create", "-deny", "-replace", "web", "db")
        web.expect(r"^web: (db closed|the long-lived connection was closed)", after=mark_web)
        db.expect(r"^db: connection from \S+/svc/web ended \((?!the client closed)", after=mark_db)
        took = db.last_time - flipped
        db.expect(r"closing live connections.*svc/web", after=mark_db)
        web.expect(r"^web: reconnect", after=mark_web)
        if web.count(r"^web: reconnected and was answered", after=mark_web):
            raise DemoFailed("web was let back in after the deny")
        show(f"✔ db closed web's open connection {took * 1000:.0f} ms after `connect intention "
             "create` was started (web noticed at its next request)")
        show("✔ and refused web's attempt to reconnect")

        narrate("Done: every step happened as described. Stopping every process.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="the `connect` binary")
    p.add_argument("--db", required=True, help="the compiled examples/demo/db.c")
    p.add_argument("--python", default=sys.executable, help="a Python with libconnect installed")
    p.add_argument("--node", default="node")
    p.add_argument("--node-path", required=True,
                   help="a directory holding the `libconnect` Node package (for NODE_PATH)")
    args = p.parse_args()

    demo = Demo(args)
    # SIGTERM behaves like Ctrl-C: unwind through `finally`, which stops every child.
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    # Also when started from a script that ignores SIGINT for its background jobs.
    signal.signal(signal.SIGINT, interrupted)
    try:
        demo.run()
        return 0
    except Exception as e:  # DemoFailed, or a CLI call that failed or timed out
        print(f"\nDEMO FAILED: {e}", file=sys.stderr, flush=True)
        for c in demo.children:
            if not c.echo:
                print(f"--- last lines from {c.name} ---", file=sys.stderr)
                for line in c.lines[-20:]:
                    print(f"    {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process the demo started", file=sys.stderr)
        return 130
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
