#!/usr/bin/env bash
# `make conformance [SUITES="network-conformance services netpol"] [PROCS=2]`: runs the pinned
# upstream e2e.test against the running local cluster and writes, per suite, the JUnit report and
# a summary under .ferrite/conformance/<suite>/. Needs `make up` first; builds e2e.test once.
set -euo pipefail
source "$(dirname "$0")/env.sh"
: "${SUITES:=network-conformance services netpol}" "${PROCS:=2}"
cluster_running || die "no running local cluster: make up first"
"$E2E/scripts/build-k8s.sh" conformance >"$LOGS/build-conformance.log" 2>&1 || die "building e2e.test failed, see $LOGS/build-conformance.log"
# Not in this kernel or this cluster: SCTP, IPv6, IPVS-only behaviour, cloud load balancers; and
# tests that disrupt the control plane or reboot nodes.
ALWAYS_SKIP='SCTP|IPv6|\[Feature:(IPv6DualStack|SCTPConnectivity|LoadBalancer|Networking-IPv6|ServiceCIDRs)\]|LoadBalancer|ESIPP|\[Disruptive\]|\[Flaky\]|\[Serial\]'
OUT=$STATE/conformance
for suite in $SUITES; do
  case "$suite" in
    network-conformance) focus='\[sig-network\].*\[Conformance\]' skip="$ALWAYS_SKIP" ;;
    services)            focus='\[sig-network\] Services' skip="$ALWAYS_SKIP|\[Slow\]|\[Feature:" ;;
    netpol)              focus='\[sig-network\] Netpol' skip="$ALWAYS_SKIP" ;;
    granular)            focus='\[sig-network\] Networking Granular Checks: Pods' skip="$ALWAYS_SKIP" ;;
    *) die "unknown suite $suite (network-conformance, services, netpol, granular)" ;;
  esac
  mkdir -p "$OUT/$suite"; rm -f "$OUT/$suite"/*.xml
  log "$suite: focus $focus, $PROCS parallel"
  set +e
  "$BIN/ginkgo" --procs="$PROCS" --timeout=3h --focus="$focus" --skip="$skip" --no-color \
    --junit-report="$OUT/$suite/junit.xml" "$BIN/e2e.test" -- \
    --kubeconfig="$KUBECONFIG_ADMIN" --provider=skeleton --kubectl-path="$BIN/kubectl" \
    --report-dir="$OUT/$suite" --dump-logs-on-failure=false >"$OUT/$suite/output.log" 2>&1
  set -e
  # One line a spec that ran: "passed|failed <spec>"; then the counts.
  python3 - "$OUT/$suite/junit.xml" >"$OUT/$suite/summary.txt" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
counts = {"passed": 0, "failed": 0, "skipped": 0}
for case in root.iter("testcase"):
    if case.find("skipped") is not None:
        counts["skipped"] += 1; continue
    failed = case.find("failure") is not None or case.find("error") is not None
    name = case.get("name", "")
    if not name.startswith("[It]"):   # suite set-up and report nodes are not specs
        continue
    counts["failed" if failed else "passed"] += 1
    print(("failed " if failed else "passed ") + name)
print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
PY
  log "$suite: $(tail -1 "$OUT/$suite/summary.txt")  ($OUT/$suite/)"
done
