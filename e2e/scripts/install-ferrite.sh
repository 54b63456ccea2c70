#!/usr/bin/env bash
# Installs (or upgrades) Ferrite on the local cluster (make up; the uninstall e2e test installs
# it again), as docs/install.md tells users to: the CRDs server-side (Helm installs a chart's
# crds/ on first install only and never upgrades them, so a changed CRD would be missed), the
# namespace labelled for privileged pods, then the chart charts/ferrite (operator, its RBAC,
# the default ClusterNetwork and IPPool). The agents install the plugin and its
# configuration on their nodes once their datapath is programmed; the kubelets then report Ready.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ -x "$HELM" ] || die "missing $HELM: run e2e/scripts/build-helm.sh"
kc apply --server-side --force-conflicts -f "$REPO/crds/yaml/all.yaml" >/dev/null
kc wait --for=condition=Established --timeout=60s \
  crd/ippools.ferrite.dev crd/clusternetworks.ferrite.dev crd/nodenetworks.ferrite.dev crd/encryptionpolicies.ferrite.dev >/dev/null \
  || die "Ferrite's CRDs are not established: kubectl --kubeconfig $KUBECONFIG_ADMIN get crd"
# The agent is privileged and both run in the host network: what Pod Security's baseline refuses.
kc apply --server-side -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: ferrite-system
  labels: {pod-security.kubernetes.io/enforce: privileged}
YAML
# The image's content sum as a pod annotation: a rebuilt operator image (same tag) rolls the
# operator, an unchanged one leaves it running. --force-conflicts: these settings win over
# edits made since (an e2e test switching the routing mode, say), as a GitOps sync would.
hc upgrade --install ferrite "$REPO/charts/ferrite" --namespace ferrite-system --create-namespace --skip-crds --force-conflicts \
  --set operator.image.repository=localhost/ferrite-operator,operator.image.tag=dev,operator.image.pullPolicy=Never \
  --set agent.image.repository=localhost/ferrite-agent,agent.image.tag=dev,agent.image.pullPolicy=Never \
  --set operator.replicas="$FERRITE_OPERATOR_REPLICAS" \
  --set-string "operator.podAnnotations.ferrite\.dev/image-sum=$(cat "$IMAGES/ferrite-operator.sum")" \
  --set ipPool.cidr="$CLUSTER_CIDR",clusterNetwork.serviceCIDR="$SVC_CIDR",clusterNetwork.routingMode="$FERRITE_ROUTING" \
  >"$LOGS/helm.log" 2>&1 || die "helm upgrade --install failed: $(cat "$LOGS/helm.log")"
kc -n ferrite-system rollout status deploy/ferrite-operator --timeout=180s >/dev/null \
  || die "ferrite-operator did not start: kubectl --kubeconfig $KUBECONFIG_ADMIN -n ferrite-system logs deploy/ferrite-operator"
# The operator renders the agent's DaemonSet from the ClusterNetwork.
for _ in $(seq 120); do kc -n ferrite-system get ds/ferrite-agent >/dev/null 2>&1 && break; sleep 1; done
kc -n ferrite-system get ds/ferrite-agent >/dev/null 2>&1 \
  || die "the operator did not create the agent DaemonSet: kubectl --kubeconfig $KUBECONFIG_ADMIN get clusternetwork default -o yaml; kubectl -n ferrite-system logs deploy/ferrite-operator"
# A rebuilt agent image has the same tag: restart the agents (the restart annotation is
# kubectl's field; the operator's server-side apply leaves it alone).
kc -n ferrite-system rollout restart ds/ferrite-agent >/dev/null
kc -n ferrite-system rollout status ds/ferrite-agent --timeout=180s >/dev/null \
  || die "ferrite-agent is not ready on every node: kubectl --kubeconfig $KUBECONFIG_ADMIN -n ferrite-system logs ds/ferrite-agent"
# What a user waits for: every node networked with the current configuration.
kc wait --for=condition=Ready clusternetwork/default --timeout=180s >/dev/null \
  || die "clusternetwork/default is not Ready: kubectl --kubeconfig $KUBECONFIG_ADMIN get clusternetwork default -o yaml"
# The host runs the control plane but is not a node: route each node's blocks via the node,
# so the apiserver reaches pods (webhooks, aggregated APIs, kubectl port-forward's peers).
kc get nodenetworks -o jsonpath='{range .items[*]}{.spec.nodeIP}{" "}{.spec.blocks[*]}{"\n"}{end}' | while read -r via blocks; do
  for b in $blocks; do ip route replace "$b" via "$via"; done
done
# Blocks the operator adds later (a node outgrowing its first) are not in that list: the whole
# pool goes via the first node as well, which forwards to the block's node (nodes route every
# block), so the apiserver reaches those pods too. The per-block routes stay the direct way.
first_node_ip=$(kc get nodenetworks -o jsonpath='{.items[0].spec.nodeIP}')
[ -n "$first_node_ip" ] || die "no NodeNetwork has a nodeIP: kubectl --kubeconfig $KUBECONFIG_ADMIN get nodenetworks -o yaml"
ip route replace "$CLUSTER_CIDR" via "$first_node_ip"
