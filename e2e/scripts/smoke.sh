#!/usr/bin/env bash
# The cluster part of `make test`: brings the local cluster up (cold: builds everything), runs the
# e2e tests against it, tears it down and checks that nothing was left behind. When a cluster was
# already running it is reused and left running, and the leftover check says it did not run.
set -euo pipefail
source "$(dirname "$0")/env.sh"
mkdir -p "$STATE"
cd "$REPO"
was_up=false
cluster_running && was_up=true
if ! $was_up; then
  # A live apiserver on the cluster's address that is not ours belongs to another checkout's
  # cluster: refuse rather than tear it down. A dead one's leftovers (namespaces, links, cgroups
  # outlive the processes) are cleaned.
  if cluster_address_is_local && curl -sk -m 3 "https://$HOST_IP:6443/readyz" >/dev/null 2>&1; then
    die "a local cluster started from another checkout is running (https://$HOST_IP:6443): run make down there first"
  fi
  "$E2E/scripts/cluster-down.sh" >/dev/null
  "$E2E/scripts/host-snapshot.sh" >"$STATE/host-before.txt"
  trap '"$E2E/scripts/cluster-down.sh" >/dev/null 2>&1 || true' EXIT
fi
"$E2E/scripts/up.sh"
cargo test --locked -p ferrite-e2e -- --ignored --test-threads=3
if $was_up; then
  echo "SKIPPED: the make-down leftover check (a cluster was already running before make test; it is left running)"
  exit 0
fi
trap - EXIT
"$E2E/scripts/cluster-down.sh"
"$E2E/scripts/host-snapshot.sh" >"$STATE/host-after.txt"
if ! diff -u "$STATE/host-before.txt" "$STATE/host-after.txt"; then
  echo "FAILED: make down left the differences above behind" >&2; exit 1
fi
echo "make down left nothing behind"
