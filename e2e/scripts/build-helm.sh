#!/usr/bin/env bash
# Builds Helm ($HELM_VERSION in versions.env) from its Go module and caches the binary under
# ~/.cache/ferrite/helm/helm-<version>-<go>/bin/helm, like build-k8s.sh does for the cluster's
# binaries: only the Go module proxy is needed. A warm call only checks that the binary exists.
# Prints the binary's path.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ ! -x "$HELM" ]; then
  command -v go >/dev/null || die "Go is missing: Helm is built from the Go module proxy"
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
  export GOMODCACHE=${GOMODCACHE:-$FERRITE_CACHE/go/mod} GOCACHE=${GOCACHE_FERRITE:-$FERRITE_CACHE/go/build}
  out=$(dirname "$HELM")
  mkdir -p "$out/.gobin"
  log "building helm $HELM_VERSION (a cold build takes a few minutes)" >&2
  # NB: Helm stamps its version with -X like its own Makefile does; without it `helm version`
  # reports only the minor (v4.3).
  GOBIN=$out/.gobin go install -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
  mv "$out/.gobin/helm" "$HELM"; rmdir "$out/.gobin"
fi
echo "$HELM"
