#!/usr/bin/env bash
# The Node lane: install the npm dev dependencies (npm registry only), build the addon with
# `napi build --platform` in the shared cargo target dir, check that the committed index.js and
# index.d.ts are what the build generates, run the node:test suites and type-check the typed
# usage file. Called by scripts/test.sh; runs on its own too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
start=$SECONDS

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing: nodejs npm"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "node $(node --version) is too old: libconnect's Node binding needs Node 20 or later" >&2
  exit 1
fi

cd bindings/node
echo "== npm ci (bindings/node)"
npm ci --no-audit --no-fund --loglevel=error

echo "== napi build --platform (debug)"
# napi passes `--target <host>`, which would rebuild every dependency under target/<triple>/;
# the wrapper builds in the tree `cargo test` and `cargo clippy` already filled.
CARGO=$PWD/scripts/cargo-host.sh npx napi build --platform

echo "== generated index.js / index.d.ts match the committed ones"
git diff --exit-code -- index.js index.d.ts
if [ -n "$(git ls-files --others --exclude-standard -- index.js index.d.ts)" ]; then
  echo "index.js / index.d.ts are generated but not committed" >&2
  exit 1
fi

# The cross-language tests (__test__/cross_language.test.mjs) run a `connect agent -dev`, the C
# examples the C lane built and a Python peer in the Python lane's venv (scripts/test.sh runs
# the C and Python lanes first; without them those tests are skipped).
echo "== cargo build --features cli --bin connect"
(cd "$root" && cargo build -p connect-core --features cli --bin connect --locked --quiet)
export LIBCONNECT_CONNECT_BIN="$CARGO_TARGET_DIR/debug/connect"
export LIBCONNECT_C_EXAMPLES="${LIBCONNECT_C_EXAMPLES:-$CARGO_TARGET_DIR/c-test}"

echo "== node --test"
node --test --test-timeout=20000 __test__/

echo "== tsc --noEmit (types.test-d.ts)"
npx tsc --noEmit -p tsconfig.json

echo "== node lane done in $((SECONDS - start)) s"
