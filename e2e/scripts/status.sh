#!/usr/bin/env bash
# `make status`: what runs of the local cluster.
set -uo pipefail
source "$(dirname "$0")/env.sh"
{ [ -f "$KUBECONFIG_ADMIN" ] && cluster_address_is_local; } || { echo "no local cluster (make up starts one)"; exit 0; }
for f in "$CLUSTER"/run/*.pid "$CLUSTER"/nodes/*/*.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f"); name=${f#"$CLUSTER"/}; name=${name%.pid}
  if kill -0 "$p" 2>/dev/null; then echo "running  $name (pid $p)"; else echo "STOPPED  $name"; fi
done
kc get nodes -o wide 2>&1
kc get pods -A -o wide 2>&1
