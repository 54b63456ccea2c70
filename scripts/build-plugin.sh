#!/usr/bin/env bash
# Builds the release `ferrite` CNI plugin as a static PIE and prints its path
# (<target dir>/<host triple>/release/ferrite). The agent image ships this build and
# `make bench` measures it.
#
# Why static: the runtime forks and execs the plugin for every ADD and DEL, and the dynamic
# loader's work (mapping libc and libgcc_s, relocating) is a fixed cost of each; a static PIE
# starts 0.3-0.5 ms sooner on the benchmark machine (docs/benchmarks.md, "exec floor").
# `--target` keeps `crt-static` off build scripts and proc macros, which cannot be static.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$host" ] || { echo "build-plugin: cannot tell the host triple from rustc -vV" >&2; exit 1; }
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p ferrite-cni --bin ferrite --target "$host" >&2
target=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
plugin=$target/$host/release/ferrite
# A static PIE names no program interpreter (the dynamic loader).
if readelf -l "$plugin" | grep -q 'program interpreter'; then
  echo "build-plugin: $plugin is dynamically linked; crt-static did not take" >&2
  exit 1
fi
echo "$plugin"
