#!/usr/bin/env bash
# Makes sure the toolchain pinned in rust-toolchain.toml (1.95.0, with rustfmt and clippy) is
# usable without downloading one: only the crate registry is reachable here, not rustup's
# dist server. When `stable` already is 1.95.0 it is linked under the pinned name.
set -euo pipefail
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
command -v rustup >/dev/null || { echo "rustup is missing: install Rust $want with rustup first" >&2; exit 1; }
if ! rustup toolchain list | grep -q "^$want-"; then
  have=$(rustc +stable --version 2>/dev/null | awk '{print $2}')
  if [ "$have" = "$want" ]; then
    rustup toolchain link "$want" "$(rustc +stable --print sysroot)"
  else
    rustup toolchain install "$want" --profile minimal --component rustfmt,clippy
  fi
fi
for tool in cargo-fmt cargo-clippy; do
  [ -x "$(rustc +"$want" --print sysroot)/bin/$tool" ] || rustup component add --toolchain "$want" "${tool#cargo-}"
done
