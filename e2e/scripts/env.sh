# Shared settings of the local cluster scripts (sourced). Every knob can be set from the environment.
# shellcheck shell=bash
E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(cd "$E2E/.." && pwd)
source "$E2E/scripts/versions.env"
: "${FERRITE_CACHE:=$HOME/.cache/ferrite}"
: "${STATE:=$REPO/.ferrite}"                 # kubeconfig, logs, PKI, node state (gitignored)
: "${NODES:=3}"
: "${BR:=fe-br0}" "${NET:=172.30.0}"        # host bridge: host = $NET.1, nodeI = $NET.(10+I)
: "${INET_NET:=198.51.100}"                  # the "internet host": $INET_NET.10, host side $INET_NET.1
: "${SVC_CIDR:=10.96.0.0/12}" "${SVC_IP:=10.96.0.1}" "${DNS_IP:=10.96.0.10}"
: "${CLUSTER_CIDR:=10.244.0.0/16}"
: "${FERRITE_CNI:=ferrite}"                  # ferrite | reference (bridge + host-local, for comparison)
: "${FERRITE_ROUTING:=VXLAN}"                # ClusterNetwork routingMode with FERRITE_CNI=ferrite: VXLAN | Native
: "${FERRITE_OPERATOR_REPLICAS:=2}"          # leader-elected: one replica leads, the other stands by
: "${FERRITE_PROXY:=kube-proxy}"             # kube-proxy (nftables mode) | ferrite (once it exists)
: "${KUBE_PROXY_MODE:=nftables}"
: "${SANDBOX_IMAGE:=registry.k8s.io/pause:3.10.1}"
CLUSTER=$STATE/cluster
PKI=$CLUSTER/pki KCDIR=$CLUSTER/kubeconfig LOGS=$STATE/logs RUN=$CLUSTER/run
KUBECONFIG_ADMIN=$STATE/kubeconfig
HOST_IP=$NET.1
NS_PREFIX=fe-
node_ns() { echo "${NS_PREFIX}node$1"; }
node_ip() { echo "$NET.$((10 + $1))"; }
INET_NS=${NS_PREFIX}internet INET_VETH=${NS_PREFIX}inet0   # link names: at most 15 characters
CGROUP_PREFIX=ferrite-node
GO_VERSION=$(go env GOVERSION 2>/dev/null || echo nogo)
BIN_KEY="k8s-$K8S_VERSION-etcd-$ETCD_VERSION-coredns-$COREDNS_VERSION-$GO_VERSION"
BIN=$FERRITE_CACHE/k8s/$BIN_KEY/bin
HELM=$FERRITE_CACHE/helm/helm-$HELM_VERSION-$GO_VERSION/bin/helm   # built by build-helm.sh
IMAGES=$FERRITE_CACHE/images
# Host sysctls the cluster changes: ours, and those kubelet sets on start (it is not told
# protectKernelDefaults). Saved before the first start, restored by cluster-down.sh.
HOST_SYSCTLS="net.ipv4.ip_forward fs.inotify.max_user_instances fs.inotify.max_user_watches vm.overcommit_memory kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
log() { echo "[$(basename "$0") $(date +%T)] $*"; }
die() { echo "ERROR: $*" >&2; exit 1; }
# NB: only ever talk to the cluster's address while it is on our own bridge. Without the bridge,
# 172.30.0.1 is not on this machine and a probe would leave it by the default route.
cluster_address_is_local() { ip -o addr show dev "$BR" 2>/dev/null | grep -q " $HOST_IP/"; }
# The cluster of this checkout answers (its address is local, its kubeconfig and kubectl exist).
cluster_running() {
  cluster_address_is_local && [ -f "$KUBECONFIG_ADMIN" ] && [ -x "$BIN/kubectl" ] && kc get --raw /readyz >/dev/null 2>&1
}
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
# Helm keeps its cache, configuration and data under .ferrite/helm, never under $HOME.
export HELM_CACHE_HOME=$STATE/helm/cache HELM_CONFIG_HOME=$STATE/helm/config HELM_DATA_HOME=$STATE/helm/data
hc() { "$HELM" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
