#!/usr/bin/env bash
# `make up`: installs what is missing, builds (or reuses cached) binaries and images, brings up
# the cluster. A second run reuses the running cluster.
set -euo pipefail
source "$(dirname "$0")/env.sh"
mkdir -p "$LOGS"
"$E2E/scripts/install-deps.sh"
log "Kubernetes $K8S_VERSION binaries (cached in $FERRITE_CACHE/k8s; a cold build takes ~20 minutes)"
"$E2E/scripts/build-k8s.sh" core >"$LOGS/build-k8s.log" 2>&1 || die "build failed, see $LOGS/build-k8s.log"
log "Helm $HELM_VERSION (cached in $FERRITE_CACHE/helm)"
"$E2E/scripts/build-helm.sh" >"$LOGS/build-helm.log" 2>&1 || die "build failed, see $LOGS/build-helm.log"
"$E2E/scripts/images.sh"
"$E2E/scripts/ferrite-images.sh"
"$E2E/scripts/cluster-up.sh"
cat <<MSG

The local cluster is up: $NODES nodes, Kubernetes $K8S_VERSION, CNI=$FERRITE_CNI, service proxy=$FERRITE_PROXY.
  export KUBECONFIG=$KUBECONFIG_ADMIN
  export PATH=$BIN:\$PATH      # kubectl $K8S_VERSION
  kubectl get nodes
Logs: $LOGS and $CLUSTER/nodes/*/logs. Tear down: make down.
MSG
