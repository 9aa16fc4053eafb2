# libconnect — the two set-up commands of the README live here.
.PHONY: test bench build header install c-test

## Run every check and test (what CI runs).
test:
	./scripts/test.sh

## Run the benchmarks (criterion) and print where the reports are.
bench:
	cargo bench -p connect-core --bench ca_sign

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
