#!/usr/bin/env python3
"""Instructions per `POST /v1/agent/connect/authorize` in `connect agent -dev` (BENCHMARKS.md,
"Issue 18's clean-up, before and after").

callgrind counts instructions, not seconds, so the figure does not move with machine load.
The agent runs under callgrind twice, answering N = 0 and then N keep-alive authorize requests
from one client (one allowing and one denying intention for `db`); the difference of the two
totals divided by N is the cost of one request, start-up and shutdown cancelled out.

    python3 scripts/callgrind-authorize.py target/release/connect [N]

Build the binary with `cargo build --release -p connect-core --features cli --bin connect`.
Repeated runs agree within about 1,000 instructions (thread scheduling varies the number of
wake-ups); compare two builds by running both a few times.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile


def total_instructions(binary: str, requests: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        agent = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
             "agent", "-dev", "-http-port", "0", "-log-level", "warn"],
            stderr=subprocess.PIPE, text=True)
        addr = None
        for line in agent.stderr:
            m = re.search(r"HTTP API listening on http://(\S+)", line)
            if m:
                addr = m.group(1)
                break
        if addr is None:
            sys.exit("the agent never said where it listens")
        host, port = addr.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=120)
        c.request("GET", "/v1/connect/ca/roots")
        td = json.loads(c.getresponse().read())["TrustDomain"]
        for src, action in [("web", "allow"), ("api", "deny")]:
            c.request("PUT", f"/v1/connect/intentions/exact?source={src}&destination=db",
                      json.dumps({"Action": action}))
            c.getresponse().read()
        body = json.dumps({"Target": "db",
                           "ClientCertURI": f"spiffe://{td}/ns/default/dc/dc1/svc/web"})
        for _ in range(requests):
            c.request("POST", "/v1/agent/connect/authorize", body)
            r = c.getresponse()
            if r.status != 200 or not json.loads(r.read())["Authorized"]:
                sys.exit(f"authorize answered {r.status}, not an allow")
        agent.send_signal(signal.SIGINT)
        agent.wait(timeout=120)
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    sys.exit("callgrind wrote no totals")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    base = total_instructions(binary, 0)
    loaded = total_instructions(binary, n)
    print(f"{(loaded - base) / n:.0f} instructions per authorize request "
          f"({binary}, N = {n})")


if __name__ == "__main__":
    main()
