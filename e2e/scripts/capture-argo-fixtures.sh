#!/usr/bin/env bash
# Captures the live ClusterNetwork `default` and every IPPool of the running local cluster into
# e2e/testdata/argo/live-*.json, as `kubectl get -o json` prints them (managedFields left out,
# as Argo CD's health scripts never see them), so the Argo CD health checks are tested against
# what the operator really writes: `cargo test -p ferrite-e2e --test argo_health` evaluates
# every file there. Pools named e2e-* belong to tests running at the time and are skipped.
# Previous live-*.json files are replaced only once every object was read.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cluster_running || die "no local cluster answers (start it with \`make up\`)"

OUT=$E2E/testdata/argo
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

get() { # resource name file
  kc get "$1" "$2" -o json --show-managed-fields=false >"$TMP/$3" \
    || die "kubectl get $1 $2 failed"
  log "captured $1/$2 -> $3"
}

get clusternetworks.ferrite.dev default live-clusternetwork-default.json
pools=$(kc get ippools.ferrite.dev -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}') \
  || die "listing IPPools failed"
[ -n "$pools" ] || die "the cluster has no IPPool"
for pool in $pools; do
  case $pool in
    e2e-*) log "skipping $pool (a test's pool)" ;;
    *) get ippools.ferrite.dev "$pool" "live-ippool-$pool.json" ;;
  esac
done

rm -f "$OUT"/live-*.json
mv "$TMP"/live-*.json "$OUT"/
log "wrote $(ls "$OUT"/live-*.json | wc -l) objects to $OUT; check them with: cargo test --locked -p ferrite-e2e --test argo_health"
