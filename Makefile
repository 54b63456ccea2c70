# Ferrite's commands. Two are for set-up: `make up` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help up down status test rust lint unit crds crds-check chart-check e2e smoke bench conformance

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

up: ## build everything and bring up the local cluster (FERRITE_CNI=reference|ferrite, FERRITE_PROXY=kube-proxy|ferrite)
	e2e/scripts/up.sh

down: ## remove everything `make up` created
	e2e/scripts/cluster-down.sh

status: ## show the local cluster
	@e2e/scripts/status.sh

test: lint unit crds-check chart-check smoke ## everything CI runs
	@echo "make test: all checks passed"

rust: ## make sure the pinned Rust toolchain is usable
	@scripts/ensure-rust.sh

lint: rust ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit: rust ## unit and schema tests of every crate
	$(CARGO) test --workspace --locked

crds: rust ## regenerate crds/yaml, the chart's CRDs and docs/crds.md from the Rust types
	$(CARGO) xtask crds

crds-check: rust ## fail when the generated CRDs or docs are stale
	$(CARGO) xtask crds --check

chart-check: ## helm lint --strict and render the chart with each values file; bad values must be refused (builds Helm once)
	scripts/chart-check.sh

e2e: ## the e2e tests against the running local cluster (make up first)
	$(CARGO) test --locked -p ferrite-e2e -- --ignored --test-threads=3

smoke: rust ## cold: up, e2e tests, down, and check that nothing was left behind
	e2e/scripts/smoke.sh

bench: rust ## as root: CNI latency vs the reference plugins, pod throughput vs raw veth, the operator at 1,000 Nodes (writes docs/benchmarks.md; BENCH_ARGS=...)
	$(CARGO) build --release --locked -p ferrite-agent -p ferrite-operator
	scripts/build-plugin.sh >/dev/null
	$(CARGO) run --release --locked -p ferrite-bench -- --out docs/benchmarks.md $(BENCH_ARGS)

conformance: ## upstream sig-network suites against the running cluster (SUITES=..., PROCS=...)
	e2e/scripts/conformance.sh
