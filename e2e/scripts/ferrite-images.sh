#!/usr/bin/env bash
# Builds Ferrite's own images from this checkout's release binaries: localhost/ferrite-agent:dev
# (with the CNI plugin inside), localhost/ferrite-operator:dev and localhost/ferrite-web:dev.
# Each holds the binaries and the shared libraries they link (found with ldd), nothing else.
# An image is rewritten only when its content changed, so `make up` re-imports exactly those.
set -euo pipefail
source "$(dirname "$0")/env.sh"
mkdir -p "$IMAGES" "$LOGS"
cd "$REPO"
log "cargo build --release (Ferrite's binaries)"
cargo build --release --locked -p ferrite-agent -p ferrite-operator -p ferrite-web >"$LOGS/cargo-release.log" 2>&1 \
  || die "cargo build --release failed, see $LOGS/cargo-release.log"
# The plugin is linked statically: the runtime execs it for every ADD and DEL.
PLUGIN=$("$REPO/scripts/build-plugin.sh" 2>>"$LOGS/cargo-release.log") \
  || die "building the static CNI plugin failed, see $LOGS/cargo-release.log"
T=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release

image() { # name entrypoint binary... (a bare name is ours, from $T; name=path is ours, from path;
           # an absolute path is the host's, at the same place)
  local name=$1 entry=$2; shift 2
  local R b src dst; R=$(mktemp -d)
  mkdir -p "$R/usr/local/bin" "$R/tmp"
  for b in "$@"; do
    case $b in
      /*) src=$b dst=$R$b ;;
      *=*) src=${b#*=} dst=$R/usr/local/bin/${b%%=*} ;;
      *) src=$T/$b dst=$R/usr/local/bin/$b ;;
    esac
    install -D -m 0755 "$src" "$dst"
    for lib in $(ldd "$src" | grep -oE '/[^ ]+'); do install -D -m 0755 "$lib" "$R$lib"; done
  done
  local sum; sum=$(cd "$R" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$IMAGES/$name.sum" 2>/dev/null)" != "$sum" ]; then
    log "image localhost/$name:dev"
    "$E2E/scripts/mkimage.sh" "$R" "$IMAGES/$name.tar" "[\"/usr/local/bin/$entry\"]" 'null' "localhost/$name:dev"
    echo "$sum" >"$IMAGES/$name.sum"
  fi
  rm -rf "$R"
}
# The agent drives nftables through `nft -j` (the nftables crate), so nft ships with it.
image ferrite-agent ferrite-agent ferrite-agent "ferrite=$PLUGIN" /usr/sbin/nft
image ferrite-operator ferrite-operator ferrite-operator
image ferrite-web ferrite-web ferrite-web
