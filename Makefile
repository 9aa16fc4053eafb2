# libconnect — the two set-up commands of the README live here.
.PHONY: demo test bench build header install c-test

## Run the demo: connect agent -dev, a C db, a Python web and a Node api (builds what it needs).
demo:
	./scripts/demo.sh

## Run every check and test (what CI runs).
test:
	./scripts/test.sh

## Run the benchmarks (criterion, then the HTTP load harness against a release `connect`).
bench:
	cargo build --release --bin connect
	cargo bench -p connect-core --bench ca_sign -- --warm-up-time 2 --measurement-time 5
	cargo bench -p connect-core --bench authorize -- --warm-up-time 1 --measurement-time 3
	cargo bench -p connect-core --bench tls_handshake
	cargo bench -p connect-core --bench agent_cache
	CONNECT_BIN=$(CURDIR)/target/release/connect cargo bench -p connect-core --bench http_load
	$(MAKE) bench-ffi
	$(MAKE) bench-python
	$(MAKE) bench-node

## The C API against the Rust API: handshakes/s and MiB/s against one Rust server (release).
.PHONY: bench-ffi bench-python bench-node
bench-ffi:
	bash scripts/bench-ffi.sh

## Python libconnect against Python ssl with the same certificates (a release build into the
## venv that scripts/test-python.sh makes; BENCH_ARGS=--quick for a few seconds).
bench-python:
	test -x bindings/python/.venv/bin/python || bash scripts/test-python.sh
	cd bindings/python && PATH=$(CURDIR)/bindings/python/.venv/bin:$$PATH VIRTUAL_ENV=$(CURDIR)/bindings/python/.venv maturin develop --release --locked --quiet
	cd bindings/python && .venv/bin/python bench/bench.py $(BENCH_ARGS)

## Node libconnect against Node tls with the same certificates (a release addon).
bench-node:
	cd bindings/node && npm ci --no-audit --no-fund --loglevel=error
	cd bindings/node && CARGO=$(CURDIR)/bindings/node/scripts/cargo-host.sh npx napi build --platform --release
	cd bindings/node && npm run bench

build:
	cargo build --workspace --release

## Regenerate include/connect.h with the pinned cbindgen (installed on first use).
header:
	$(MAKE) -C ffi header

## Install libconnect (library, header, pkg-config file): make install PREFIX=/opt/libconnect
install:
	$(MAKE) -C ffi install

## The C test lane: C tests, examples, sanitizers, valgrind, interop with OpenSSL.
c-test:
	bash scripts/test-c.sh
