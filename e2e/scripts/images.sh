#!/usr/bin/env bash
# Builds the images the local cluster runs without a registry, cached under $FERRITE_CACHE/images:
# pause (the sandbox), busybox, agnhost (Debian minbase + the upstream test tools), CoreDNS.
# Tags are the ones kubelet and the pinned e2e.test ask for, so nothing is ever pulled.
set -euo pipefail
source "$(dirname "$0")/env.sh"
HERE=$E2E/scripts
mkdir -p "$IMAGES"
K8S_SRC=$(cat "$BIN/../k8s-src-path")
ROOTFS=$FERRITE_CACHE/rootfs
R=$(mktemp -d); trap 'rm -rf "$R"' EXIT
E2E_REG=registry.k8s.io/e2e-test-images

img() { [ -f "$IMAGES/$1.tar" ] && [ "$IMAGES/$1.tar" -nt "$2" ]; }

if ! img pause "$BIN/kubelet"; then
  log "pause"
  mkdir -p "$R/pause"
  gcc -Os -static -DVERSION=ferrite -o "$R/pause/pause" "$K8S_SRC/build/pause/linux/pause.c"
  "$HERE/mkimage.sh" "$R/pause" "$IMAGES/pause.tar" '["/pause"]' 'null' "$SANDBOX_IMAGE"
fi

if ! img busybox /bin/busybox; then
  log "busybox"
  mkdir -p "$R/busybox"/{bin,etc,tmp,root}
  cp /bin/busybox "$R/busybox/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/busybox/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$R/busybox/etc/passwd"; echo 'root:x:0:' >"$R/busybox/etc/group"
  "$HERE/mkimage.sh" "$R/busybox" "$IMAGES/busybox.tar" 'null' '["sh"]' "$E2E_REG/busybox:1.37.0-1" docker.io/library/busybox:latest
fi

# agnhost: the upstream image is Alpine (busybox: wget, nslookup, ...) with bash, curl, netcat, dig,
# iproute2 and iperf; this is Debian minbase with the same tools. The rootfs is cached per package list.
AGNHOST_PKGS=ca-certificates,curl,wget,netcat-openbsd,iproute2,iputils-ping,bind9-dnsutils,bash,procps,socat,iperf,iperf3
AGNHOST_ROOTFS=$ROOTFS/agnhost-$(echo "$AGNHOST_PKGS" | sha256sum | cut -c1-12)
if [ ! -x "$AGNHOST_ROOTFS/bin/bash" ]; then
  log "agnhost rootfs (mmdebstrap, a few minutes once)"
  # NB: Debian 12 images may have no /etc/apt/sources.list at all (deb822 .sources only).
  # Only active entries: 'URIs:' (deb822) or 'deb' lines, never a commented-out one.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -E '^(URIs:|deb )' \
    | grep -oE 'https?://[^[:space:]]+/debian/?([[:space:]]|$)' | head -1 | tr -d '[:space:]' || true)
  [ -n "$mirror" ] || die "no Debian repository in the apt sources; set one up first"
  rm -rf "$AGNHOST_ROOTFS.tmp"; mkdir -p "$ROOTFS" "$LOGS"
  mmdebstrap --variant=minbase --include="$AGNHOST_PKGS" bookworm "$AGNHOST_ROOTFS.tmp" "$mirror" >"$LOGS/mmdebstrap.log" 2>&1 \
    || die "mmdebstrap failed, see $LOGS/mmdebstrap.log"
  rm -rf "$AGNHOST_ROOTFS.tmp/var/cache/apt" "$AGNHOST_ROOTFS.tmp/var/lib/apt/lists"
  mv "$AGNHOST_ROOTFS.tmp" "$AGNHOST_ROOTFS"
fi
# Rebuilt when its inputs change: the rootfs (keyed by package list) or the agnhost binary.
agnhost_key="$(basename "$AGNHOST_ROOTFS") $(sha256sum "$BIN/agnhost" | cut -c1-16)"
if [ ! -f "$IMAGES/agnhost.tar" ] || [ "$(cat "$IMAGES/agnhost.key" 2>/dev/null)" != "$agnhost_key" ]; then
  log "agnhost"
  cp -a "$AGNHOST_ROOTFS" "$R/agnhost"
  install -m 0755 "$BIN/agnhost" "$R/agnhost/agnhost"; ln -sf agnhost "$R/agnhost/agnhost-2"
  mkdir -p "$R/agnhost/uploads"
  cp "$K8S_SRC/test/images/agnhost/porter/localhost.crt" "$K8S_SRC/test/images/agnhost/porter/localhost.key" "$R/agnhost/"
  "$HERE/mkimage.sh" "$R/agnhost" "$IMAGES/agnhost.tar" '["/agnhost"]' '["pause"]' \
    "$E2E_REG/agnhost:2.56" "$E2E_REG/jessie-dnsutils:1.7"
  echo "$agnhost_key" >"$IMAGES/agnhost.key"
fi

if ! img coredns "$BIN/coredns"; then
  log "coredns"
  mkdir -p "$R/coredns/etc"
  install -m 0755 "$BIN/coredns" "$R/coredns/coredns"
  "$HERE/mkimage.sh" "$R/coredns" "$IMAGES/coredns.tar" '["/coredns"]' 'null' "registry.k8s.io/coredns/coredns:$COREDNS_VERSION"
fi
ls "$IMAGES"
