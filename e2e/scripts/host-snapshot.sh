#!/usr/bin/env bash
# Prints the host state the local cluster touches, normalised, so that a snapshot taken before
# `make up` and one taken after `make down` can be compared: anything left behind shows as a diff.
set -uo pipefail
source "$(dirname "$0")/env.sh"
echo "## links";       ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
echo "## netns";       ip netns list | awk '{print $1}' | sort
echo "## routes";      ip route show | sort
echo "## addresses";   ip -o addr show | awk '{print $2, $4}' | sort
echo "## cgroups";     for c in /sys/fs/cgroup/*/; do [ -L "${c%/}" ] || ls -1 "$c" | grep -E "^$CGROUP_PREFIX" | sed "s|^|${c}|"; done | sort
echo "## mounts";      awk '{print $2}' /proc/self/mounts | grep -E "$STATE|/var/lib/(kubelet|containerd|cni)|/etc/cni|/opt/cni|/var/log/(pods|containers)|/run/netns" | sort
echo "## processes";   for p in /proc/[0-9]*; do exe=$(readlink "$p/exe" 2>/dev/null) || continue
                         case "$exe" in "$BIN"/*|*/containerd|*/containerd-shim*|*/runc) echo "$exe";; esac; done | sort
echo "## paths";       for p in /var/lib/kubelet /var/lib/containerd /var/lib/cni /var/lib/ferrite /etc/cni/net.d /opt/cni/bin /var/log/pods \
                         /var/log/containers /dev/shm/ferrite-etcd "$CLUSTER" "$KUBECONFIG_ADMIN"; do [ -e "$p" ] && echo "$p"; done
# shellcheck disable=SC2086
echo "## sysctls";     sysctl $HOST_SYSCTLS
echo "## nftables";    nft list tables 2>/dev/null | sort
