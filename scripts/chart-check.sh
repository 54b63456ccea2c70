#!/usr/bin/env bash
# `make chart-check`: the Helm chart without a cluster. `helm lint --strict` and `helm template`
# with the default values and with every charts/testdata/values/*.yaml; the rendered RBAC holds
# no wildcard and no Secrets; every charts/testdata/invalid/*.yaml is refused (by
# values.schema.json or a template check) with the message in its `# expect:` header. The
# rendered objects are validated against the real schemas by the e2e test chart.rs (strict
# server-side dry run against the local cluster's apiserver).
set -euo pipefail
source "$(dirname "$0")/../e2e/scripts/env.sh"
mkdir -p "$LOGS"
"$E2E/scripts/build-helm.sh" >"$LOGS/build-helm.log" 2>&1 || die "building Helm failed, see $LOGS/build-helm.log"
CHART=$REPO/charts/ferrite TESTDATA=$REPO/charts/testdata
KUBE=${K8S_VERSION#v}
fail=0
bad() { echo "FAILED: $*" >&2; fail=1; }
render() { "$HELM" template ferrite "$CHART" --namespace ferrite-system --kube-version "$KUBE" "$@"; }

for values in "" "$TESTDATA"/values/*.yaml; do
  args=(); what="default values"
  [ -n "$values" ] && { args=(--values "$values"); what=${values#"$REPO"/}; }
  "$HELM" lint --strict --quiet "$CHART" --namespace ferrite-system --kube-version "$KUBE" "${args[@]}" || bad "helm lint --strict with $what"
  out=$(render "${args[@]}" 2>&1) || { bad "helm template with $what: $out"; continue; }
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
