#!/usr/bin/env bash
# Installs the Debian packages the local cluster needs (a no-op when they are present).
set -euo pipefail
PKGS=(containerd runc containernetworking-plugins nftables iptables conntrack iproute2 openssl
      mmdebstrap busybox-static jq gcc libc6-dev curl iperf3 python3-yaml)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go is missing: the cluster's Kubernetes binaries are built from the Go module proxy" >&2; exit 1; }
