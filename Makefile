# libconnect — the two set-up commands of the README live here.
.PHONY: test bench build

## Run every check and test (what CI runs).
test:
	./scripts/test.sh

## Run the benchmarks (criterion, then the HTTP load harness against a release `connect`).
bench:
	cargo build --release --bin connect
	cargo bench -p connect-core --bench ca_sign -- --warm-up-time 2 --measurement-time 5
	cargo bench -p connect-core --bench authorize -- --warm-up-time 1 --measurement-time 3
	CONNECT_BIN=$(CURDIR)/target/release/connect cargo bench -p connect-core --bench http_load

build:
	cargo build --workspace --release
