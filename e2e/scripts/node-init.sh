#!/usr/bin/env bash
# node-init.sh I — node I's init, run by cluster-up.sh inside the node's namespaces:
#   setsid unshare --mount --uts --propagation slave -- nsenter --net=/run/netns/fe-nodeI -- node-init.sh I
# Own network namespace (a veth on the host bridge), own hostname, own mount namespace (a slave
# of the host's, so host mounts stay visible), shared PID namespace and cgroupfs.
# NB: never `ip netns exec` for a node: it remounts /sys and hides /sys/fs/cgroup from kubelet.
set -euo pipefail
source "$(dirname "$0")/env.sh"
i=$1 n=node$1 D=$CLUSTER/nodes/node$1
export PATH=$BIN:$PATH

hostname "$n"
mount --make-rshared /
mount -t tmpfs -o mode=755 tmpfs /run            # node-private /run: containerd socket, shims, netns pins
mkdir -p /run/containerd /run/netns /run/xtables
# Conventional host paths -> per-node directories, so hostPath volumes of DaemonSets stay per node.
for p in var/lib/kubelet var/lib/containerd var/lib/cni var/lib/ferrite etc/cni/net.d opt/cni/bin var/log/pods var/log/containers run/ferrite; do
  mkdir -p "/$p"                                 # only /run/ferrite (tmpfs); cluster-up.sh made the others
  mount --bind "$D/fs/${p//\//-}" "/$p"
done
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 || true

containerd --config "$D/containerd.toml" >"$D/logs/containerd.log" 2>&1 &
echo $! >"$D/containerd.pid"
for _ in $(seq 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.2; done
touch "$D/images.stamp"
for t in "$IMAGES"/*.tar; do ctr -n k8s.io images import "$t" >>"$D/logs/images.log" 2>&1; done

kubelet --config="$D/kubelet.yaml" --kubeconfig="$KCDIR/$n.kubeconfig" \
  --hostname-override="$n" --node-ip="$(node_ip "$i")" --v=1 >"$D/logs/kubelet.log" 2>&1 &
echo $! >"$D/kubelet.pid"
if [ -f "$D/kube-proxy.yaml" ]; then
  kube-proxy --config="$D/kube-proxy.yaml" --v=1 >"$D/logs/kube-proxy.log" 2>&1 &
  echo $! >"$D/kube-proxy.pid"
fi
wait -n || true
echo "node $n: a daemon exited; see $D/logs" >&2
