#!/usr/bin/env bash
# The Python lane: builds the binding (maturin develop, debug) into bindings/python/.venv and
# runs its pytest suite, mypy.stubtest over the hand-written stubs and mypy --strict over the
# package and the typed usage file. Installs what a fresh machine lacks first (a venv with
# maturin, pytest, pytest-timeout, mypy and py-consul — an independent Consul client the tests
# run against the agent — and spiffe + spiffe-tls, the SPIFFE project's Python library that
# tests the agent's Workload API, from PyPI). Called by scripts/test.sh; runs alone.
#
# Environment: PYTHON (default python3) makes the venv; CARGO_TARGET_DIR is honoured by cargo
# and maturin alike.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=bindings/python
venv=$py/.venv
start=$SECONDS

python=${PYTHON:-python3}
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "== installing: python3-venv"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  "$python" -m venv "$venv"
fi
echo "== pip install maturin pytest pytest-timeout mypy py-consul spiffe spiffe-tls"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  'maturin>=1.9,<2' 'pytest>=8' 'pytest-timeout>=2.3' 'mypy>=1.10' 'py-consul==1.8.0' \
  'spiffe==0.3.2' 'spiffe-tls==0.4.0'

export PATH="$root/$venv/bin:$PATH"
export VIRTUAL_ENV="$root/$venv"
target=${CARGO_TARGET_DIR:-$root/target}

echo "== maturin develop (debug)"
(cd "$py" && maturin develop --locked --quiet)

# The HTTP-backend tests run against a `connect agent -dev` process.
echo "== cargo build --features cli --bin connect --example echo_client"
cargo build -p connect-core --features cli --bin connect --example echo_client --locked --quiet
export LIBCONNECT_CONNECT_BIN="$target/debug/connect"
# The cross-language tests: the Rust example client, and the C examples the C lane built
# (scripts/test-c.sh runs first in scripts/test.sh; without them those tests are skipped).
export LIBCONNECT_RUST_ECHO_CLIENT="$target/debug/examples/echo_client"
export LIBCONNECT_C_EXAMPLES="${LIBCONNECT_C_EXAMPLES:-$target/c-test}"

cd "$py"
echo "== pytest"
python -m pytest -p no:cacheprovider -q

echo "== mypy.stubtest libconnect._native"
python -m mypy.stubtest libconnect._native

echo "== mypy --strict python/libconnect tests/test_typing.py"
python -m mypy --strict --no-incremental python/libconnect tests/test_typing.py

echo "== python lane done in $((SECONDS - start))s"
