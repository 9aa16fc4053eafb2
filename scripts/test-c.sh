#!/usr/bin/env bash
# The C test lane of libconnect: builds libconnect.so, installs it into a scratch prefix, builds
# the examples against that installation with pkg-config (and the C examples once as C++17),
# runs the C test suites under AddressSanitizer + UndefinedBehaviorSanitizer and under valgrind
# (no leaks, no errors), then `cargo test -p connect-ffi`: the header check, the C programs as
# processes, interop with OpenSSL's s_client/s_server, and the examples against `connect agent`.
#
# Called by scripts/test.sh; `make c-test` runs it alone. Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
steps=0
step() { steps=$((steps + 1)); echo "== $*"; }

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v c++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v nm >/dev/null || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_dir/c-test"
rm -rf "$out"
mkdir -p "$out"
prefix="$out/prefix"

step "build libconnect (debug) and the connect agent"
# Whole-workspace builds share one feature resolution with `cargo test --workspace`, so
# nothing is compiled twice with other features.
cargo build --workspace --locked --features connect-core/cli --lib --bins

step "install into $prefix; build the examples against it with pkg-config, and as C++"
make -s -C ffi install PROFILE=debug PREFIX="$prefix"
# A target directory shared with other checkouts may hold another build of libconnect.so:
# relink ours once if so.
if ! nm -D --defined-only "$prefix/lib/libconnect.so" | grep -q ' connect_version$'; then
  touch ffi/src/lib.rs
  make -s -C ffi install PROFILE=debug PREFIX="$prefix"
fi
export CONNECT_FFI_LIB="$prefix/lib/libconnect.so"

step "a program linked against the build tree starts (the SONAME link make -C ffi build leaves)"
build_lib="$target_dir/debug"
test -L "$build_lib/libconnect.so.$(sed -n 's/^version = "\([0-9]*\.[0-9]*\).*"/\1/p' Cargo.toml | head -n 1)"
printf '#include <stdio.h>\n#include "connect.h"\nint main(void) { return puts(connect_version()) < 0; }\n' \
  >"$out/build_tree.c"
cc -std=c11 -Wall -Werror -Iinclude "$out/build_tree.c" -o "$out/build_tree" \
  -L"$build_lib" -lconnect -Wl,-rpath,"$build_lib"
"$out/build_tree" | grep -q '^libconnect/'
make -s -C examples/c PREFIX="$prefix" OUT="$out" all cxx-check

cflags=(-std=c11 -Wall -Wextra -Wpedantic -Werror -g -Iinclude -Itests/c)
libs=(-L"$prefix/lib" -lconnect -Wl,-rpath,"$prefix/lib" -pthread)
sanitize=(-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

for t in test_misuse test_mtls test_contract; do
  step "$t under AddressSanitizer + UndefinedBehaviorSanitizer"
  cc "${cflags[@]}" "${sanitize[@]}" "tests/c/$t.c" -o "$out/$t.asan" "${libs[@]}"
  timeout 120 "$out/$t.asan"
done
step "raii_echo (C++) under AddressSanitizer + UndefinedBehaviorSanitizer"
c++ -std=c++17 -Wall -Wextra -Wpedantic -Werror -g "${sanitize[@]}" -Iinclude \
  examples/c/raii_echo.cpp -o "$out/raii_echo.asan" "${libs[@]}"
timeout 120 "$out/raii_echo.asan"

for t in test_misuse test_mtls test_contract; do
  step "$t under valgrind (leak check; errors fail)"
  cc "${cflags[@]}" "tests/c/$t.c" -o "$out/$t" "${libs[@]}"
  timeout 300 valgrind -q --suppressions=tests/c/valgrind.supp --leak-check=full \
    --show-leak-kinds=definite,indirect,possible --errors-for-leak-kinds=definite,indirect,possible \
    --error-exitcode=99 "$out/$t"
done

step "cargo test -p connect-ffi (header, C programs as processes, OpenSSL interop, examples)"
cargo test --workspace --locked --features connect-core/cli --test header --test c_programs

echo "libconnect C lane: $steps passed, 0 failed ($(($(date +%s) - started)) s)"
