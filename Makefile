# libconnect — the two set-up commands of the README live here.
.PHONY: test bench build

## Run every check and test (what CI runs).
test:
	./scripts/test.sh

## Run the benchmarks (criterion) and print where the reports are.
bench:
	cargo bench -p connect-core --bench ca_sign

build:
	cargo build --workspace --release
