#!/usr/bin/env bash
# Brings up the local cluster: a real control plane in the host network namespace and $NODES
# kubelets, each in its own network/UTS/mount namespace with its own containerd. Idempotent: a
# second run keeps what is running and only starts what is missing. See docs/local-cluster.md.
set -euo pipefail
source "$(dirname "$0")/env.sh"
HERE=$E2E/scripts
export PATH=$BIN:$PATH
mkdir -p "$PKI" "$KCDIR" "$LOGS" "$RUN"

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
bg() { local name=$1; shift; running "$name" && return 0
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null & echo $! >"$RUN/$name.pid"; }
wait_for() { local what=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "timed out waiting for $what (logs in $LOGS)"; }

preflight() {
  for c in cpu cpuacct cpuset memory pids; do
    mountpoint -q "/sys/fs/cgroup/$c" || die "cgroup v1 controller $c is not mounted (the kubelets run with cgroupfs on v1)"
  done
  # shellcheck disable=SC2086
  [ -f "$CLUSTER/sysctl.saved" ] || sysctl $HOST_SYSCTLS | sed 's/ = /=/' >"$CLUSTER/sysctl.saved"
  sysctl -qw net.ipv4.ip_forward=1 fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=524288
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$BIN/$b" ] || die "missing $BIN/$b: run e2e/scripts/build-k8s.sh"
  done
  for b in containerd runc ctr nft openssl; do command -v "$b" >/dev/null || die "missing $b: run e2e/scripts/install-deps.sh"; done
}

pki() {
  [ -f "$PKI/ca.crt" ] && return 0
  log "PKI"
  ( cd "$PKI"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=ferrite-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out ca.crt
    sign() { # file CN O extensions
      openssl genrsa -out "$1.key" 2048 2>/dev/null
      openssl req -new -key "$1.key" -subj "/CN=$2${3:+/O=$3}" -out "$1.csr"
      printf "$4" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"; }
    local client='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
    sign apiserver kube-apiserver "" "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$HOST_IP,IP:$SVC_IP\n"
    sign admin kubernetes-admin system:masters "$client"
    sign apiserver-kubelet kube-apiserver-kubelet-client system:masters "$client"
    sign kcm system:kube-controller-manager "" "$client"
    sign scheduler system:kube-scheduler "" "$client"
    sign kube-proxy system:kube-proxy "" "$client"
    for i in $(seq "$NODES"); do
      sign "node$i" "system:node:node$i" system:nodes "$client"
      sign "kubelet$i" "node$i" "" "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:node$i,IP:$(node_ip "$i")\n"
    done
    openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null )
}

kubeconfig() { # out-file cert-name
  cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: ferrite-local
  cluster: {server: "https://$HOST_IP:6443", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: ferrite-local
  context: {cluster: ferrite-local, user: $2}
current-context: ferrite-local
YAML
}

network() {
  # `ip netns add` mounts /run/netns on first use; remember that it was us, for cluster-down.sh.
  mountpoint -q /run/netns || { grep -qx /run/netns "$STATE/created-mounts" 2>/dev/null || echo /run/netns >>"$STATE/created-mounts"; }
  ip link show "$BR" >/dev/null 2>&1 || ip link add "$BR" type bridge
  ip addr replace "$HOST_IP/24" dev "$BR"; ip link set "$BR" up
  for i in $(seq "$NODES"); do
    local ns; ns=$(node_ns "$i")
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "veth-$ns" >/dev/null 2>&1; then
      ip link add "veth-$ns" type veth peer name eth0 netns "$ns"
      ip link set "veth-$ns" master "$BR" up
      ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
      ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
      ip -n "$ns" route add default via "$HOST_IP"
    fi
    # kubelet's --cgroup-root must exist in every v1 hierarchy; the node's daemons live beside it.
    for c in /sys/fs/cgroup/*/; do c=${c%/}; [ -L "$c" ] || mkdir -p "$c/$CGROUP_PREFIX$i" "$c/$CGROUP_PREFIX$i-daemons"; done
    for d in "$CGROUP_PREFIX$i" "$CGROUP_PREFIX$i-daemons"; do
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$d/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$d/cpuset.mems"
    done
  done
  # The outside world: a host on its own network that knows only the node network, so
  # traffic from pods reaches it only when SNATed to a node address.
  [ -e "/run/netns/$INET_NS" ] || ip netns add "$INET_NS"
  if ! ip link show "$INET_VETH" >/dev/null 2>&1; then
    ip link add "$INET_VETH" type veth peer name eth0 netns "$INET_NS"
    ip addr add "$INET_NET.1/24" dev "$INET_VETH"; ip link set "$INET_VETH" up
    ip -n "$INET_NS" addr add "$INET_NET.10/24" dev eth0
    ip -n "$INET_NS" link set eth0 up; ip -n "$INET_NS" link set lo up
    ip -n "$INET_NS" route add "$NET.0/24" via "$INET_NET.1"
  fi
}

control_plane() {
  kubeconfig "$KUBECONFIG_ADMIN" admin
  for n in kcm scheduler kube-proxy; do kubeconfig "$KCDIR/$n.kubeconfig" "$n"; done
  for i in $(seq "$NODES"); do kubeconfig "$KCDIR/node$i.kubeconfig" "node$i"; done
  mkdir -p /dev/shm/ferrite-etcd
  bg etcd "$BIN/etcd" --name ferrite --data-dir /dev/shm/ferrite-etcd --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster ferrite=http://127.0.0.1:2380 --quota-backend-bytes=4294967296 --log-level=warn
  bg kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$HOST_IP" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet.crt" --kubelet-client-key="$PKI/apiserver-kubelet.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SVC_CIDR" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_for "kube-apiserver /readyz" 120 kc get --raw /readyz
  bg kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$KCDIR/kcm.kubeconfig" \
    --authentication-kubeconfig="$KCDIR/kcm.kubeconfig" --authorization-kubeconfig="$KCDIR/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SVC_CIDR" --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" \
    --node-cidr-mask-size=24 --controllers='*' --v=1
  cat >"$CLUSTER/scheduler.yaml" <<YAML
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$KCDIR/scheduler.kubeconfig"}
leaderElection: {leaderElect: false}
YAML
  bg kube-scheduler "$BIN/kube-scheduler" --config="$CLUSTER/scheduler.yaml" \
    --authentication-kubeconfig="$KCDIR/scheduler.kubeconfig" --authorization-kubeconfig="$KCDIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --v=1
}

node_files() { # i
  local i=$1 D=$CLUSTER/nodes/node$1
  mkdir -p "$D/logs"
  for p in var/lib/kubelet var/lib/containerd var/lib/cni var/lib/ferrite etc/cni/net.d opt/cni/bin var/log/pods var/log/containers run/ferrite; do
    mkdir -p "$D/fs/${p//\//-}"
  done
  for p in bridge host-local loopback portmap; do cp -u "/usr/lib/cni/$p" "$D/fs/opt-cni-bin/"; done
  cat >"$D/containerd.toml" <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  restrict_oom_score_adj = true          # no CAP_SYS_RESOURCE: negative oom_score_adj is refused
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
TOML
  cat >"$D/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PREFIX$i
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
tlsCertFile: "$PKI/kubelet$i.crt"
tlsPrivateKeyFile: "$PKI/kubelet$i.key"
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: ["$DNS_IP"]
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
evictionHard: {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"}
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
YAML
  if [ "$FERRITE_PROXY" = kube-proxy ]; then
    cat >"$D/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$KCDIR/kube-proxy.kubeconfig"}
hostnameOverride: node$i
mode: $KUBE_PROXY_MODE
clusterCIDR: $CLUSTER_CIDR
oomScoreAdj: 0
conntrack: {maxPerCore: 0}
YAML
  else rm -f "$D/kube-proxy.yaml"; fi
}

# A running node gets the images that changed since it last imported (a rebuilt Ferrite image,
# say), through its containerd's own mount namespace (its socket is on the node's private /run).
refresh_images() { # i
  local D=$CLUSTER/nodes/node$1 t
  for t in "$IMAGES"/*.tar; do
    [ "$t" -nt "$D/images.stamp" ] || continue
    log "node$1: importing $(basename "$t")"
    nsenter -t "$(cat "$D/containerd.pid")" -m -- ctr -n k8s.io images import "$t" >>"$D/logs/images.log" 2>&1
  done
  touch "$D/images.stamp"
}

start_node() { # i
  local i=$1 D=$CLUSTER/nodes/node$1
  if [ -f "$D/init.pid" ] && kill -0 "$(cat "$D/init.pid")" 2>/dev/null; then refresh_images "$i"; return 0; fi
  node_files "$i"
  log "starting node$i"
  ( echo "$BASHPID" >"/sys/fs/cgroup/pids/$CGROUP_PREFIX$i-daemons/cgroup.procs"
    echo "$BASHPID" >"/sys/fs/cgroup/memory/$CGROUP_PREFIX$i-daemons/cgroup.procs"
    exec setsid unshare --mount --uts --propagation slave -- \
      nsenter --net="/run/netns/$(node_ns "$i")" -- "$HERE/node-init.sh" "$i" ) >"$D/logs/node-init.log" 2>&1 < /dev/null &
  echo $! >"$D/init.pid"
}

# Reference CNI: the bridge plugin with host-local IPAM on each node's podCIDR, plus static
# routes between nodes (and from the host, so the apiserver reaches pods).
reference_cni() {
  for i in $(seq "$NODES"); do
    local cidr="" D=$CLUSTER/nodes/node$i
    for _ in $(seq 120); do cidr=$(kc get node "node$i" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true); [ -n "$cidr" ] && break; sleep 1; done
    [ -n "$cidr" ] || die "node$i has no podCIDR (is it registered? see $D/logs/kubelet.log)"
    local gw; gw="${cidr%.0/24}.1"
    cat >"$D/fs/etc-cni-net.d/10-reference.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "reference", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr", "gateway": "$gw"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
    # The bridge plugin's ipMasq would NAT pod-to-pod traffic between nodes too; masquerade only
    # what leaves the cluster CIDR (as kubenet and Flannel do).
    nsenter --net="/run/netns/$(node_ns "$i")" nft -f - <<NFT
table ip ferrite-reference
delete table ip ferrite-reference
table ip ferrite-reference {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $CLUSTER_CIDR ip daddr != $CLUSTER_CIDR oifname "eth0" masquerade
  }
}
NFT
    ip route replace "$cidr" via "$(node_ip "$i")"
    for j in $(seq "$NODES"); do [ "$i" = "$j" ] || ip -n "$(node_ns "$j")" route replace "$cidr" via "$(node_ip "$i")"; done
  done
}

# Ferrite's CNI: e2e/scripts/install-ferrite.sh (also what the uninstall e2e test reinstalls with).
ferrite_cni() {
  "$E2E/scripts/install-ferrite.sh"
}

addons() {
  sed -e "s/@DNS_IP@/$DNS_IP/" -e "s/@COREDNS_VERSION@/$COREDNS_VERSION/" "$E2E/manifests/coredns.yaml" | kc apply -f - >/dev/null
}

# The nodes bind-mount their own directories over these host paths; create the mount points
# that do not exist yet and remember them, so cluster-down.sh removes exactly those.
mount_points() {
  for p in var/lib/kubelet var/lib/containerd var/lib/cni var/lib/ferrite etc/cni/net.d opt/cni/bin var/log/pods var/log/containers; do
    [ -d "/$p" ] && continue
    mkdir -p "/$p" && echo "/$p" >>"$STATE/created-dirs"
  done
}

preflight; pki; network; mount_points; control_plane
for i in $(seq "$NODES"); do start_node "$i"; done
for _ in $(seq 180); do [ "$(kc get nodes --no-headers 2>/dev/null | wc -l)" -ge "$NODES" ] && break; sleep 1; done
case "$FERRITE_CNI" in
  reference) reference_cni ;;
  ferrite) ferrite_cni ;;
  *) die "FERRITE_CNI must be reference or ferrite, not $FERRITE_CNI" ;;
esac
kc wait --for=condition=Ready nodes --all --timeout=180s >/dev/null || die "nodes not Ready: kubectl --kubeconfig $KUBECONFIG_ADMIN describe nodes"
addons
kc -n kube-system rollout status deploy/coredns --timeout=180s >/dev/null || die "CoreDNS not ready: kubectl --kubeconfig $KUBECONFIG_ADMIN -n kube-system get pods"
log "cluster up: $NODES nodes Ready, CNI=$FERRITE_CNI, service proxy=$FERRITE_PROXY"
