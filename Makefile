# libconnect — the two set-up commands of the README live here.
.PHONY: test bench build header install c-test

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
