#!/usr/bin/env bash
# Removes everything cluster-up.sh created: processes (by pid file and by membership of the
# cgroups we made), mounts, cgroups, network namespaces, links, routes, etcd data, state and the
# sysctls it changed. Touches nothing it did not create. Idempotent.
set -uo pipefail
source "$(dirname "$0")/env.sh"

kill_pids() { local sig=$1; shift; for p in "$@"; do [ -n "$p" ] && kill "-$sig" "$p" 2>/dev/null; done; }
cgroup_pids() { for c in /sys/fs/cgroup/pids/$CGROUP_PREFIX*; do [ -d "$c" ] && find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null; done; }
pidfiles() { find "$CLUSTER" -name '*.pid' -exec cat {} + 2>/dev/null; }

if [ -d "$CLUSTER" ] || compgen -G "/sys/fs/cgroup/pids/$CGROUP_PREFIX*" >/dev/null; then
  log "stopping processes"
  # nodes first (pods, kubelet, kube-proxy, containerd, shims all sit in our cgroups), then the control plane
  kill_pids TERM $(cgroup_pids) $(pidfiles)
  for _ in $(seq 20); do [ -z "$(cgroup_pids)$(for p in $(pidfiles); do kill -0 "$p" 2>/dev/null && echo "$p"; done)" ] && break; sleep 0.5; done
  kill_pids KILL $(cgroup_pids) $(pidfiles)
  sleep 0.5
fi
# Each node's mounts live in its own mount namespace and vanish with its last process.
for c in /sys/fs/cgroup/*/; do c=${c%/}; [ -L "$c" ] && continue
  for cg in "$c/$CGROUP_PREFIX"*; do [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null; done
done
for i in $(seq "$NODES"); do
  ns=$(node_ns "$i")
  ip link del "veth-$ns" 2>/dev/null
  [ -e "/run/netns/$ns" ] && ip netns del "$ns"
done
ip link del "$INET_VETH" 2>/dev/null
[ -e "/run/netns/$INET_NS" ] && ip netns del "$INET_NS"
ip link del "$BR" 2>/dev/null                 # takes the host's routes to the pod CIDRs with it
rm -rf /dev/shm/ferrite-etcd
if [ -f "$CLUSTER/sysctl.saved" ]; then
  while read -r kv; do sysctl -qw "$kv"; done <"$CLUSTER/sysctl.saved"
fi
# overlayfs snapshots may still be mounted if a node's mount namespace outlived it; they are ours only.
grep -o " $CLUSTER[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
rm -rf "$CLUSTER" "$KUBECONFIG_ADMIN"
if [ -f "$STATE/created-mounts" ] && [ -z "$(ip netns list)" ]; then
  while read -r m; do umount "$m" 2>/dev/null; rmdir "$m" 2>/dev/null; done <"$STATE/created-mounts"
  rm -f "$STATE/created-mounts"
fi
if [ -f "$STATE/created-dirs" ]; then
  sort -r "$STATE/created-dirs" | while read -r d; do rmdir "$d" 2>/dev/null; done
  rm -f "$STATE/created-dirs"
fi
log "down"
