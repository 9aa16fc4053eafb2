#!/usr/bin/env bash
# The README's first command (`make demo`): builds what the demo needs on a fresh machine, then
# runs examples/demo/demo.py — `connect agent -dev`, a C `db`, a Python `web` and a Node `api`.
# Installs what the machine lacks first (Debian packages, PyPI and npm only).
#
#   scripts/demo.sh            build, then run the demo
#   scripts/demo.sh --no-build use the Rust, Python and Node builds `make test` made (the
#                              test command's last lane runs the demo this way)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
export CARGO_TARGET_DIR=$target
out=$target/demo
build=1
[ "${1:-}" = "--no-build" ] && build=0

if [ $build = 1 ]; then
  need_apt=()
  command -v cc >/dev/null || need_apt+=(gcc)
  command -v make >/dev/null || need_apt+=(make)
  command -v node >/dev/null || need_apt+=(nodejs)
  command -v npm >/dev/null || need_apt+=(npm)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
  # The CLI's etcd client compiles etcd's gRPC definitions: protoc and protobuf's .proto files.
  { command -v protoc >/dev/null && [ -f /usr/include/google/protobuf/descriptor.proto ]; } \
    || need_apt+=(protobuf-compiler libprotobuf-dev)
  if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi

  echo "== building the connect CLI and libconnect.so (cargo, a few minutes the first time)"
  cargo build --workspace --locked --features connect-core/cli --lib --bins --quiet

  echo "== building the Python module into bindings/python/.venv (maturin)"
  venv=bindings/python/.venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.9,<2'
  (cd bindings/python && PATH="$root/$venv/bin:$PATH" VIRTUAL_ENV="$root/$venv" \
    maturin develop --locked --quiet)

  echo "== building the Node module (napi-rs)"
  (cd bindings/node && npm ci --no-audit --no-fund --loglevel=error &&
    CARGO=$PWD/scripts/cargo-host.sh npx napi build --platform >/dev/null)
fi

rm -rf "$out" && mkdir -p "$out"
make -s -C ffi install PROFILE=debug PREFIX="$out/prefix" CARGO="cargo --quiet" >/dev/null
echo "== compiling db (C) against the installed libconnect.so"
cc -std=c11 -Wall -Wextra -Wpedantic -Werror -O2 -I"$out/prefix/include" \
  examples/demo/db.c -o "$out/db" -L"$out/prefix/lib" -lconnect -Wl,-rpath,"$out/prefix/lib" -pthread

# `require('libconnect')` resolves through NODE_PATH to the package in bindings/node.
mkdir -p "$out/node_modules"
ln -sfn "$root/bindings/node" "$out/node_modules/libconnect"

exec python3 examples/demo/demo.py \
  --connect "$target/debug/connect" \
  --db "$out/db" \
  --python "$root/bindings/python/.venv/bin/python" \
  --node-path "$out/node_modules"
