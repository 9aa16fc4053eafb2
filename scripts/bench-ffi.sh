#!/usr/bin/env bash
# The C API against the Rust API, side by side (`make bench-ffi`): release builds of
# libconnect.so, `connect` and core/examples/bench_echo.rs; one `connect agent -dev` (one CA);
# a Rust echo server (bench_echo serve); then the same work from the Rust client (bench_echo
# client) and the C client (ffi/bench/bench_client.c): N dial + 1-byte echo handshakes, then
# MIB MiB echoed in 64 KiB lock-step. Then ffi/bench/bench_hold.c: HOLD mTLS connections held
# at once by one C-API listener (listener and dialing clients in two processes, 64 dials in
# flight): KiB of resident set per connection, both ends, and accepts/s; a HOLD beyond the
# open-file limit is measured at the most that fit ("SKIPPED: ..."). Environment: N (default
# 500), MIB (default 256), HOLD (default 10000; 500 with BENCH_QUICK), BENCH_OUT (where ffi.json
# goes; default <target>/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target/bench-ffi"
N=${N:-500}
MIB=${MIB:-256}
quick=$([ -n "${BENCH_QUICK:-}" ] && [ "${BENCH_QUICK}" != 0 ] && echo true || echo false)
HOLD=${HOLD:-$([ "$quick" = true ] && echo 500 || echo 10000)}
mkdir -p "$out"

cargo build --release --locked -p connect-core --features cli --bin connect --example bench_echo
make -s -C ffi install PROFILE=release PREFIX="$out/prefix"
cc -std=c11 -Wall -Wextra -Werror -O2 -I"$out/prefix/include" ffi/bench/bench_client.c \
  -o "$out/bench_client" -L"$out/prefix/lib" -lconnect -Wl,-rpath,"$out/prefix/lib"
cc -std=c11 -Wall -Wextra -Werror -O2 -pthread -I"$out/prefix/include" ffi/bench/bench_hold.c \
  -o "$out/bench_hold" -L"$out/prefix/lib" -lconnect -Wl,-rpath,"$out/prefix/lib"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Waits (at most 10 s) for a line matching $2 in file $1; prints its capture.
wait_line() {
  for _ in $(seq 100); do
    if m=$(sed -n "s|$2|\\1|p" "$1" | head -n 1) && [ -n "$m" ]; then echo "$m"; return; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

"$target/release/connect" agent -dev -http-port 0 -log-level warn 2>"$out/agent.log" >/dev/null &
pids+=($!)
http=$(wait_line "$out/agent.log" '.*==> HTTP API listening on http://\([^ ]*\).*')
export CONSUL_HTTP_ADDR="http://$http"
unset CONSUL_HTTP_TOKEN

"$target/release/examples/bench_echo" serve db >"$out/server.log" 2>&1 &
pids+=($!)
addr=$(wait_line "$out/server.log" '^listening on \(.*\)$')

echo "== $N handshakes (dial + 1-byte echo), then $MIB MiB echoed, against a Rust server"
rust=$(timeout 300 "$target/release/examples/bench_echo" client web db "$addr" "$N" "$MIB")
echo "$rust"
c=$(timeout 300 "$out/bench_client" web db "$addr" "$N" "$MIB")
echo "$c"

echo "== $HOLD mTLS connections held at once by one C-API listener"
rm -f "$out/c_hold.json"
HOLD=$HOLD BENCH_JSON_HOLD="$out/c_hold.json" timeout 600 "$out/bench_hold"
c_hold=$(cat "$out/c_hold.json")

# The same figures for scripts/bench-report.py: "<lang> handshakes/s H MiB/s M" lines.
json_dir="${BENCH_OUT:-$target/bench}"
mkdir -p "$json_dir"
read -r _ _ rust_hs _ rust_mib <<<"$rust"
read -r _ _ c_hs _ c_mib <<<"$c"
printf '{"harness": "ffi", "quick": %s, "command": "make bench-ffi", "params": {"handshakes": %s, "mib": %s, "hold": %s},\n "results": {"rust": {"handshakes_per_s": %s, "mib_per_s": %s}, "c": {"handshakes_per_s": %s, "mib_per_s": %s},\n  "c_hold": %s}}\n' \
  "$quick" "$N" "$MIB" "$HOLD" "$rust_hs" "$rust_mib" "$c_hs" "$c_mib" "$c_hold" >"$json_dir/ffi.json"
echo "wrote $json_dir/ffi.json"
