#!/usr/bin/env bash
# `make chart-check`: the Helm chart without a cluster. `helm lint --strict` and `helm template`
# with the default values and with every charts/testdata/values/*.yaml; the rendered YAML has no
# duplicate key (Helm and kubectl keep the last one silently); the rendered RBAC holds no
# wildcard and no Secrets; every charts/testdata/invalid/*.yaml is refused (by
# values.schema.json or a template check) with the message in its `# expect:` header. The
# rendered objects are validated against the real schemas by the e2e test chart.rs (strict
# server-side dry run against the local cluster's apiserver).
set -euo pipefail
source "$(dirname "$0")/../e2e/scripts/env.sh"
mkdir -p "$LOGS"
"$E2E/scripts/install-deps.sh"   # python3-yaml
"$E2E/scripts/build-helm.sh" >"$LOGS/build-helm.log" 2>&1 || die "building Helm failed, see $LOGS/build-helm.log"
CHART=$REPO/charts/ferrite TESTDATA=$REPO/charts/testdata
KUBE=${K8S_VERSION#v}
fail=0
bad() { echo "FAILED: $*" >&2; fail=1; }
# Parses every document, refusing a key that appears twice in one mapping.
# NB: Debian's python3, the one install-deps.sh gives python3-yaml (a python3 earlier on PATH
# may lack it).
no_duplicate_keys() {
  /usr/bin/python3 -c '
import sys, yaml
class Loader(yaml.SafeLoader):
    pass
def mapping(loader, node):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)
Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
list(yaml.load_all(sys.stdin, Loader=Loader))'
}
render() { "$HELM" template ferrite "$CHART" --namespace ferrite-system --kube-version "$KUBE" "$@"; }

for values in "" "$TESTDATA"/values/*.yaml; do
  args=(); what="default values"
  [ -n "$values" ] && { args=(--values "$values"); what=${values#"$REPO"/}; }
  "$HELM" lint --strict --quiet "$CHART" --namespace ferrite-system --kube-version "$KUBE" "${args[@]}" || bad "helm lint --strict with $what"
  out=$(render "${args[@]}" 2>&1) || { bad "helm template with $what: $out"; continue; }
  no_duplicate_keys <<<"$out" || bad "the YAML rendered with $what"
  # RBAC: no wildcard anywhere, nothing about Secrets.
  if grep -nE '^\s*-?\s*(apiGroups|resources|verbs|resourceNames):.*"\*"' <<<"$out"; then bad "wildcard in the RBAC rendered with $what"; fi
  if grep -nE '\bsecrets\b' <<<"$out"; then bad "the RBAC rendered with $what mentions Secrets"; fi
  echo "ok: $what ($(grep -c '^kind:' <<<"$out") objects)"
done

for f in "$TESTDATA"/invalid/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$f")
  [ -n "$expect" ] || { bad "${f#"$REPO"/} has no '# expect:' header"; continue; }
  if out=$(render --values "$f" 2>&1); then bad "${f#"$REPO"/} was accepted"; continue; fi
  grep -qF -- "$expect" <<<"$out" || bad "${f#"$REPO"/} was refused, but not with \"$expect\": $out"
done
[ "$fail" = 0 ] || exit 1
echo "ok: $(ls "$TESTDATA"/invalid/*.yaml | wc -l) invalid values files refused"
