#!/usr/bin/env bash
# Runs the local cluster's pinned kubectl or Helm (build-k8s.sh, build-helm.sh) against it, with
# $KUBECONFIG if set, else the cluster's admin kubeconfig, and Helm's state under .ferrite/helm:
#   e2e/scripts/tool.sh helm -n ferrite-system status ferrite
# The e2e tests run the tools through it.
set -euo pipefail
source "$(dirname "$0")/env.sh"
tool=${1:-}; [ $# -gt 0 ] && shift
case $tool in
  kubectl) exec "$BIN/kubectl" --kubeconfig "${KUBECONFIG:-$KUBECONFIG_ADMIN}" "$@" ;;
  helm) exec "$HELM" --kubeconfig "${KUBECONFIG:-$KUBECONFIG_ADMIN}" "$@" ;;
  *) die "usage: tool.sh kubectl|helm ARGS..." ;;
esac
