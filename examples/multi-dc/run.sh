#!/bin/sh
# Two datacenters on loopback: dc1 (primary) and dc2 (secondary). dc2 makes its own CA key,
# has dc1 sign its intermediate over server-to-server HTTPS, then signs a leaf locally; the
# leaf verifies with OpenSSL against dc1's root through dc2's intermediate.
#
#   cargo build -p connect-core --features cli --bin connect
#   examples/multi-dc/run.sh            # CONNECT=path/to/connect to use another binary
set -eu

here=$(cd "$(dirname "$0")" && pwd)
CONNECT=${CONNECT:-$here/../../target/debug/connect}
DC1_HTTP=${DC1_HTTP:-127.0.0.1:18500}
DC1_HTTPS_PORT=${DC1_HTTPS_PORT:-18501}
DC2_HTTP_PORT=${DC2_HTTP_PORT:-28500}
DC1_TOKEN=dc1-management-token   # also dc2's replication token: operator:write in dc1
DC2_TOKEN=dc2-management-token

[ -x "$CONNECT" ] || { echo "build first: cargo build -p connect-core --features cli --bin connect" >&2; exit 1; }
work=$(mktemp -d)
pids=
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Waits until the agent logging to $1 says it runs (or gives up after $2 seconds).
wait_running() {
    i=0
    until grep -q 'libconnect agent running!' "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt $(($2 * 10)) ]; then cat "$1" >&2; echo "agent did not start" >&2; exit 1; fi
        sleep 0.1
    done
}

sed "s/@TOKEN@/$DC1_TOKEN/" "$here/dc1.hcl" > "$work/dc1.hcl"
sed -e "s/@TOKEN@/$DC2_TOKEN/" -e "s/@REPLICATION@/$DC1_TOKEN/" "$here/dc2.hcl" > "$work/dc2.hcl"

echo "==> starting dc1 (primary): HTTP $DC1_HTTP, HTTPS 127.0.0.1:$DC1_HTTPS_PORT"
"$CONNECT" agent -server -data-dir "$work/data1" -config-file "$work/dc1.hcl" -node server-1 \
    -http-port "${DC1_HTTP##*:}" -https-port "$DC1_HTTPS_PORT" 2> "$work/dc1.log" &
pids="$pids $!"
wait_running "$work/dc1.log" 20

CONSUL_HTTP_ADDR=$DC1_HTTP "$CONNECT" ca roots -pem > "$work/dc1-root.pem"
echo "==> dc1's root:"
openssl x509 -in "$work/dc1-root.pem" -noout -subject -ext subjectAltName | sed 's/^/    /'

echo "==> starting dc2 (secondary): it joins dc1 at 127.0.0.1:$DC1_HTTPS_PORT"
"$CONNECT" agent -server -data-dir "$work/data2" -config-file "$work/dc2.hcl" -node server-2 \
    -http-port "$DC2_HTTP_PORT" -https-port 0 \
    -retry-join-wan "127.0.0.1:$DC1_HTTPS_PORT" -primary-ca-file "$work/dc1-root.pem" \
    2> "$work/dc2.log" &
pids="$pids $!"
wait_running "$work/dc2.log" 60
grep 'intermediate' "$work/dc2.log" | sed 's/^/    dc2: /'

echo "==> /v1/catalog/datacenters in dc2 (its own first):"
python3 -c 'import json,sys,urllib.request; print("    " + json.dumps(json.load(urllib.request.urlopen(sys.argv[1]))))' \
    "http://127.0.0.1:$DC2_HTTP_PORT/v1/catalog/datacenters"

echo "==> dc2's replication from dc1 (/v1/agent/self, field Replication):"
python3 -c 'import json,sys,urllib.request
r = urllib.request.Request(sys.argv[1], headers={"X-Consul-Token": sys.argv[2]})
print(json.dumps(json.load(urllib.request.urlopen(r))["Replication"], indent=2))' \
    "http://127.0.0.1:$DC2_HTTP_PORT/v1/agent/self" "$DC2_TOKEN" | sed 's/^/    /'

CONSUL_HTTP_ADDR=127.0.0.1:$DC2_HTTP_PORT CONSUL_HTTP_TOKEN=$DC2_TOKEN \
    "$CONNECT" leaf web > "$work/web.pem"
# The answer is the leaf, the intermediates it chains through, then its key.
awk -v dir="$work" '/BEGIN CERTIFICATE/ { n++; f = dir "/cert" n ".pem" }
    f { print > f } /END CERTIFICATE/ { f = "" }' "$work/web.pem"
mv "$work/cert1.pem" "$work/leaf.pem"
cat "$work"/cert*.pem > "$work/intermediate.pem"

echo "==> dc2's leaf for web, issued in dc2:"
openssl x509 -in "$work/leaf.pem" -noout -subject -issuer -ext subjectAltName | sed 's/^/    /'
echo "==> openssl verify -CAfile dc1-root.pem -untrusted dc2-intermediate.pem leaf.pem"
openssl verify -CAfile "$work/dc1-root.pem" -untrusted "$work/intermediate.pem" "$work/leaf.pem"
