#!/usr/bin/env bash
# Three etcd members and three `connect agent -server`s on one machine (README.md here).
# Ctrl-C stops them all. Needs etcd (Debian: etcd-server) and a built `connect`
# (cargo build -p connect-core --features cli --bin connect).
set -euo pipefail
cd "$(dirname "$0")"
CONNECT=${CONNECT:-../../target/debug/connect}
ETCD=${ETCD:-etcd}
mkdir -p data
# The key-encryption key: CA private keys and token secrets are sealed with it in etcd.
[ -f kek.b64 ] || { umask 077; openssl rand -base64 32 > kek.b64; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
  "$ETCD" --config-file "etcd-$i.yml" >"data/etcd-$i.log" 2>&1 & pids+=($!)
done
for i in 1 2 3; do
  "$CONNECT" agent -config-file "connect-$i.hcl" 2>"data/connect-$i.log" & pids+=($!)
done
sleep 3
grep -l "libconnect agent running" data/connect-*.log | sed 's/^/leader: /' || true
echo "servers: http://127.0.0.1:8501 http://127.0.0.1:8502 http://127.0.0.1:8503 (any of them)"
wait
