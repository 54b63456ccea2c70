#!/usr/bin/env bash
# Builds the local cluster's Go binaries from the Go module proxy, pinned, and caches them under
# ~/.cache/ferrite/k8s/<key>/bin. A warm call only checks the stamp. Usage:
#   build-k8s.sh core        kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy, kubectl, agnhost, etcd, coredns
#   build-k8s.sh conformance core + e2e.test + ginkgo
# Why a wrapper module: k8s.io/kubernetes maps its staging modules with `replace => ./staging/...`, which
# `go install pkg@version` refuses; a throw-away main module re-maps each to its published v0.X.Y tag.
set -euo pipefail
source "$(dirname "$0")/env.sh"
what=${1:-core}
CACHE=$FERRITE_CACHE
KEY=$BIN_KEY
OUT=$CACHE/k8s/$KEY/bin
mkdir -p "$OUT"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod} GOCACHE=${GOCACHE_FERRITE:-$CACHE/go/build}
STAGING="v0${K8S_VERSION#v1}"
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)

need() { for b in "$@"; do [ -x "$OUT/$b" ] || return 0; done; return 1; }
log() { echo "[build-k8s $(date +%T)] $*"; }

k8s_module() {
  local W=$CACHE/k8s/gomod-$K8S_VERSION
  mkdir -p "$W"; cd "$W"
  if [ ! -f go.mod ]; then
    go mod init local/k8s-build >/dev/null 2>&1
    go mod edit -go=1.24.0
    go mod download k8s.io/kubernetes@"$K8S_VERSION"
    local up; up=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod
    go mod edit -require=k8s.io/kubernetes@"$K8S_VERSION"
    local args=()
    for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$up"); do
      args+=("-replace=$m=$m@$STAGING")
    done
    go mod edit "${args[@]}"
    # NB: the module proxy here answers 403 for k8s.io/sample-apiserver v0.34.2+; only e2e.test's
    # aggregator test imports it, so an older patch of the same minor is enough.
    go mod edit -replace="k8s.io/sample-apiserver=k8s.io/sample-apiserver@$SAMPLE_APISERVER_VERSION"
    log "wrapper module with ${#args[@]} staging replaces"
  fi
}
ldflags() {
  local v="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  echo "-s -w $v ${v//component-base\/version/client-go\/pkg\/version}"
}

if need kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl agnhost; then
  k8s_module
  LDF=$(ldflags)
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$OUT/$c" ] && continue
    log "building $c"
    go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$LDF" -o "$OUT/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$OUT/$c.tmp" "$OUT/$c"
  done
  if [ ! -x "$OUT/agnhost" ]; then
    log "building agnhost"
    go build -trimpath -ldflags="$LDF" -o "$OUT/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost
    mv "$OUT/agnhost.tmp" "$OUT/agnhost"
  fi
  echo "$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION" > "$OUT/../k8s-src-path"
fi

if need etcd; then
  E=$CACHE/k8s/gomod-etcd-$ETCD_VERSION; mkdir -p "$E"; cd "$E"
  if [ ! -f go.mod ]; then go mod init local/etcd-build >/dev/null 2>&1; go mod edit -go=1.24.0; fi
  go mod edit -require=go.etcd.io/etcd/server/v3@"$ETCD_VERSION"
  log "building etcd"
  go build -trimpath -ldflags="-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
fi

if need coredns; then
  log "building coredns"
  GOBIN=$OUT/.gobin go install -trimpath -ldflags="-s -w" github.com/coredns/coredns@"$COREDNS_VERSION"
  mv "$OUT/.gobin/coredns" "$OUT/coredns"; rmdir "$OUT/.gobin"
fi

if [ "$what" = conformance ] && need e2e.test ginkgo; then
  k8s_module
  LDF=$(ldflags)
  log "building e2e.test"
  go test -c -vet=off -trimpath -ldflags="$LDF" -o "$OUT/e2e.test.tmp" k8s.io/kubernetes/test/e2e
  mv "$OUT/e2e.test.tmp" "$OUT/e2e.test"
  log "building ginkgo"
  go build -trimpath -o "$OUT/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
fi
echo "$OUT"
