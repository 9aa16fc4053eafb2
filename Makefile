# libconnect — the two set-up commands of the README live here.
.PHONY: demo test bench build header install c-test

## Run the demo: connect agent -dev, a C db, a Python web and a Node api (builds what it needs).
demo:
	./scripts/demo.sh

## Run every check and test (what CI runs).
test:
	./scripts/test.sh

# Where cargo builds (CARGO_TARGET_DIR when set) and where one benchmark run's results go.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
BENCH_OUT ?= $(TARGET_DIR)/bench
QUICK_OUT := $(TARGET_DIR)/bench-quick
# Every harness writes under BENCH_OUT, criterion included, so the report reads one run only.
BENCH_ENV = BENCH_OUT=$(BENCH_OUT) CRITERION_HOME=$(BENCH_OUT)/criterion \
	CONNECT_BIN=$(TARGET_DIR)/release/connect $(if $(BENCH_QUICK),BENCH_QUICK=1)
# Criterion's options: the full run's per benchmark, or one short setting for all in quick mode.
CRITERION_QUICK := $(if $(BENCH_QUICK),--warm-up-time 0.2 --measurement-time 0.5 --sample-size 10)

.PHONY: bench-quick bench-report bench-run

## Run every benchmark once, then rewrite the tables of BENCHMARKS.md and the README's
## performance table from that run (takes
## a while; results in <target>/bench).
bench:
	rm -rf $(BENCH_OUT)
	$(MAKE) bench-run
	python3 scripts/bench-report.py --out $(BENCH_OUT) --write BENCHMARKS.md --readme README.md

## The same with short measurement times, to check the harnesses work. Its report goes to
## <target>/bench-quick/BENCHMARKS.md, never to BENCHMARKS.md.
bench-quick:
	rm -rf $(QUICK_OUT)
	$(MAKE) bench-run BENCH_QUICK=1 BENCH_OUT=$(QUICK_OUT)
	python3 scripts/bench-report.py --out $(QUICK_OUT) --write $(QUICK_OUT)/BENCHMARKS.md

## Rewrite BENCHMARKS.md from the results make bench left in <target>/bench.
bench-report:
	python3 scripts/bench-report.py --out $(BENCH_OUT) --write BENCHMARKS.md --readme README.md

# agent_cache prints its figures rather than writing JSON; the report reads a copy of them.
bench-run:
	python3 scripts/bench-report.py --out $(BENCH_OUT) --start $(if $(BENCH_QUICK),--quick)
	cargo build --release -p connect-core --features cli --bin connect
	$(BENCH_ENV) cargo bench -p connect-core --bench ca_sign -- \
		$(or $(CRITERION_QUICK),--warm-up-time 2 --measurement-time 5)
# Through Vault beside the built-in CA; prints one SKIPPED line without OpenBao's bao.
	$(BENCH_ENV) cargo bench -p connect-core --bench ca_vault
	$(BENCH_ENV) cargo bench -p connect-core --bench authorize -- \
		$(or $(CRITERION_QUICK),--warm-up-time 1 --measurement-time 3)
	$(BENCH_ENV) cargo bench -p connect-core --bench tls_handshake -- $(CRITERION_QUICK)
	$(BENCH_ENV) $(if $(BENCH_QUICK),BENCH_SERVICES=1000) cargo bench -p connect-core \
		--bench agent_cache >$(BENCH_OUT)/agent_cache.txt; s=$$?; cat $(BENCH_OUT)/agent_cache.txt; exit $$s
	$(BENCH_ENV) cargo bench -p connect-core --bench http_load
# Holding 10,000 connections takes ~10,300 descriptors in each of its two processes.
	ulimit -n $$(ulimit -H -n) 2>/dev/null; $(BENCH_ENV) cargo bench -p connect-core --bench conn_memory
	$(MAKE) bench-proxy
	$(MAKE) bench-ffi
	$(MAKE) bench-python
	$(MAKE) bench-node

## `connect-proxy` (the sidecar build) and `connect proxy` against stunnel, HAProxy, libconnect
## in the application and plain TCP (core/benches/proxy_latency.rs).
.PHONY: bench-proxy
bench-proxy: bench-sidecars
	cargo build --release -p connect-core --features cli --bin connect
	cargo build --profile sidecar -p connect-core --features cli --bin connect-proxy
	$(BENCH_ENV) CONNECT_PROXY_BIN=$(TARGET_DIR)/sidecar/connect-proxy \
		cargo bench -p connect-core --bench proxy_latency

## stunnel and HAProxy, which proxy_latency runs beside `connect proxy` (Debian packages):
## installed when missing if this is root with apt-get; otherwise the harness prints one
## SKIPPED line for each and measures the rest.
.PHONY: bench-sidecars
APT_INSTALL = DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends stunnel4 haproxy
bench-sidecars:
	@if command -v stunnel4 >/dev/null && { command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		$(APT_INSTALL) || { timeout 600 apt-get update && $(APT_INSTALL); } \
		|| echo "bench-sidecars: could not install stunnel4 and haproxy; proxy_latency will skip them"; \
	else echo "bench-sidecars: stunnel4 or haproxy is missing and this is not root with apt-get; proxy_latency will skip them"; fi

## The C API against the Rust API: handshakes/s and MiB/s against one Rust server (release).
.PHONY: bench-ffi bench-python bench-node
bench-ffi:
	$(BENCH_ENV) $(if $(BENCH_QUICK),N=100 MIB=32) bash scripts/bench-ffi.sh

## Python libconnect against Python ssl with the same certificates (a release build into the
## venv that scripts/test-python.sh makes; BENCH_ARGS=--quick for a few seconds).
bench-python:
	test -x bindings/python/.venv/bin/python || bash scripts/test-python.sh
	cd bindings/python && PATH=$(CURDIR)/bindings/python/.venv/bin:$$PATH VIRTUAL_ENV=$(CURDIR)/bindings/python/.venv maturin develop --release --locked --quiet
	mkdir -p $(BENCH_OUT)
	cd bindings/python && .venv/bin/python bench/bench.py $(BENCH_ARGS) \
		$(if $(BENCH_QUICK),--quick) --json $(BENCH_OUT)/python.json

## Node libconnect against Node tls with the same certificates (a release addon).
bench-node:
	cd bindings/node && npm ci --no-audit --no-fund --loglevel=error
	cd bindings/node && CARGO=$(CURDIR)/bindings/node/scripts/cargo-host.sh npx napi build --platform --release
	mkdir -p $(BENCH_OUT)
	cd bindings/node && $(BENCH_ENV) $(if $(BENCH_QUICK),HANDSHAKES=50 MIB=16) \
		BENCH_JSON=$(BENCH_OUT)/node.json npm run bench

build:
	cargo build --workspace --release --features connect-core/cli
	$(MAKE) -C ffi link

## Regenerate include/connect.h with the pinned cbindgen (installed on first use).
header:
	$(MAKE) -C ffi header

## Regenerate core/src/workload/proto.rs from core/proto/workload.proto (the SPIFFE Workload
## API) with the pinned generator in tools/workload-proto-gen (tonic-prost-build and a vendored
## protoc; its own Cargo.lock). The generated file is committed: builds need no protoc.
.PHONY: workload-proto
workload-proto:
	cd tools/workload-proto-gen && cargo run --locked --quiet
	cargo fmt --all

## Install libconnect (library, header, pkg-config file): make install PREFIX=/opt/libconnect
install:
	$(MAKE) -C ffi install

## The C test lane: C tests, examples, sanitizers, valgrind, interop with OpenSSL.
c-test:
	bash scripts/test-c.sh

## Robustness: the property suite of core/tests/robustness_prop.rs (filters, SPIFFE IDs,
## endpoint JSON, ACL rules, CSR/PEM, Go durations, the HTTP API) in rounds of FUZZ_CASES
## cases per property, fresh random seeds each round, until FUZZ_SECS have passed (default one
## hour; `make fuzz FUZZ_SECS=28800` for a night). Stops at the first failure, which proptest
## shrinks and saves in core/tests/robustness_prop.proptest-regressions. Debug build on
## purpose: integer overflow panics there instead of wrapping.
.PHONY: fuzz hostile
FUZZ_SECS ?= 3600
FUZZ_CASES ?= 20000
fuzz:
	cargo test -p connect-core --locked --features cli --test robustness_prop --no-run
	end=$$(( $$(date +%s) + $(FUZZ_SECS) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
		round=$$((round + 1)); echo "== fuzz round $$round ($(FUZZ_CASES) cases per property)"; \
		LIBCONNECT_FUZZ_CASES=$(FUZZ_CASES) cargo test -p connect-core --locked --features cli \
			--test robustness_prop -- --test-threads 2 || exit 1; \
	done

## The recorded hostile-input run: HOSTILE_SECS (default 60) of the attack mix of
## core/tests/hostile_support against a release `connect agent` (ACLs on, default deny);
## prints requests by kind, 5xx, crashes, unauthorized successes, lost writes and the probe's
## p50/p99/max, and fails when a target is missed. A copy goes to <target>/bench/hostile.txt.
HOSTILE_SECS ?= 60
hostile:
	HOSTILE_SECS=$(HOSTILE_SECS) BENCH_OUT=$(BENCH_OUT) cargo bench -p connect-core --locked --features cli --bench hostile
