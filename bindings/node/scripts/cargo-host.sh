#!/usr/bin/env bash
# `napi build` always runs `cargo build --target <triple>`, which for the host triple builds
# every dependency a second time under target/<triple>/ instead of reusing target/debug from
# `cargo test` and `cargo clippy`. The Node lane points napi at this script (CARGO=…): for
# the host triple it drops `--target`, builds in the shared tree, and puts the library where
# napi looks for it. Any other target passes through unchanged.
set -euo pipefail
unset CARGO
host=$(rustc -vV | sed -n 's/^host: //p')
args=()
triple=""
profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --target)
      if [ "$2" = "$host" ]; then triple=$2; shift 2; continue; fi ;;
    --release|-r) profile=release ;;
    --profile) profile=$2 ;;
  esac
  args+=("$1")
  shift
done
cargo "${args[@]}"
if [ -n "$triple" ] && [ "${args[0]:-}" = "build" ]; then
  dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
  [ "$profile" = dev ] && profile=debug
  mkdir -p "$dir/$triple/$profile"
  cp -f "$dir/$profile/liblibconnect_node.so" "$dir/$triple/$profile/liblibconnect_node.so"
fi
