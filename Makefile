# The two set-up commands are `make demo` and `make test`; everything they need is installed
# by the targets below (Python deps into .venv, Debian packages, the compiled control plane
# into ~/.cache/appidentity-operator).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
KUBECTL := bin/kubectl
STATE   := .state/cluster
PYTEST_ARGS ?=
PY_DIRS := $(wildcard operator tests bench)

.PHONY: help deps system-deps venv control-plane kstatus cluster cluster-down install run demo demo-down \
        test test-versions control-plane-window control-plane-oldest unit integration lint fmt render install.yaml bench bench-usage chaos judge e2e-kind helm image

help: ## this list
	@grep -hE '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

system-deps: ## Debian packages the harness uses (openssl, curl); needs root or sudo
	@missing=""; for p in openssl curl; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo_cmd=""; [ "$$(id -u)" = 0 ] || sudo_cmd=sudo; \
	  $$sudo_cmd apt-get update -q && $$sudo_cmd apt-get install -y -q $$missing; \
	fi
	@command -v go >/dev/null || { echo "Go is needed once, to compile the control plane (apt-get install golang or go.dev/dl)"; exit 1; }

venv: $(VENV)/.installed ## Python deps (pinned) into .venv
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip==25.3
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

deps: system-deps venv control-plane kstatus

control-plane: system-deps ## compile etcd, kube-apiserver, controller-manager, kubectl once (cached)
	@bash hack/build-control-plane.sh >/dev/null

# The support window (hack/versions.env): make test runs on its oldest and newest release.
WINDOW := $(shell . hack/versions.env && echo $$K8S_WINDOW)
OLDEST := $(firstword $(WINDOW))
NEWEST := $(lastword $(WINDOW))
# `K8S_VERSION=1.35.4 make test` runs the full suite on that release instead of the newest.
FULL   := $(or $(K8S_VERSION),$(NEWEST))
control-plane-window: system-deps ## compile every release of the support window (cached apart)
	@for v in $(WINDOW); do K8S_VERSION=$$v bash hack/build-control-plane.sh >/dev/null; done
control-plane-oldest: system-deps
	@K8S_VERSION=$(OLDEST) bash hack/build-control-plane.sh >/dev/null

helm: system-deps ## compile the Helm CLI once (pinned in hack/helm/go.mod, cached), linked as bin/helm
	@mkdir -p bin && ln -sfn "$$(bash hack/build-helm.sh | tail -n 1)" bin/helm

kstatus: system-deps ## compile hack/kstatus (the kstatus library Flux uses, pinned) once (cached)
	@bash hack/build-kstatus.sh >/dev/null

cluster: control-plane ## start the local control plane; prints the KUBECONFIG export line
	@bash hack/cluster.sh up $(STATE)

cluster-down: ## stop the local control plane and remove its state
	@bash hack/cluster.sh down $(STATE)

WEBHOOK_PORT ?= 9443
install: venv ## the CRD and the requester recording this cluster supports (KUBECONFIG's cluster)
	@bash hack/install.sh auto $(WEBHOOK_PORT)

run: install ## run the operator (and the requester webhook where installed) against KUBECONFIG
	@bash hack/run-local.sh

demo: deps ## local cluster (unless KUBECONFIG is set), deploy/ but the Deployment, operator with its policy, examples, verified status
	@bash hack/demo.sh

demo-down: ## stop what `make demo` started
	@bash hack/demo.sh down

lint: venv ## ruff, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)
	$(VENV)/bin/mypy

fmt: venv
	$(VENV)/bin/ruff format $(PY_DIRS)
	$(VENV)/bin/ruff check --fix $(PY_DIRS)

unit: venv ## unit tests of the pure logic (no cluster)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The operator's behaviour again, with the operator run from `make image`'s image with a Pod's
# credentials, under deploy/'s RBAC (APPID_TEST_OPERATOR=image; needs root, as CI has).
IMAGE_TESTS ?= tests/integration/test_image.py tests/integration/test_provisioning.py \
               tests/integration/test_selfcheck.py

# The core that every supported version must pass: provisioning, the self-check, escalation and
# the requester recording, the one-judge sample, the chart install, kstatus, and the self-check
# against a Webhook authorizer before RBAC.
CORE_TESTS ?= tests/integration/test_control_plane.py tests/integration/test_provisioning.py \
              tests/integration/test_selfcheck.py tests/integration/test_escalation.py \
              tests/integration/test_requester.py tests/integration/test_one_judge.py \
              tests/integration/test_chart.py tests/integration/test_gitops.py \
              tests/integration/test_authz_webhook.py
MATRIX = $(PY) hack/test_matrix.py --core "$(CORE_TESTS)"

test: deps control-plane-oldest helm lint image ## everything on the newest release, the core on the oldest and in webhook mode, then from the image
	$(MATRIX) $(FULL)/auto/all $(FULL)/webhook/core $(OLDEST)/auto/core -- $(PYTEST_ARGS)
	K8S_VERSION=$(NEWEST) APPID_TEST_OPERATOR=image $(PY) -m pytest $(IMAGE_TESTS) $(PYTEST_ARGS)

test-versions: deps control-plane-window helm ## the core on every release of the support window, both requester modes where both exist
	$(MATRIX) $(foreach v,$(WINDOW),$(v)/auto/core) $(foreach v,$(filter 1.36.% 1.37.%,$(WINDOW)),$(v)/webhook/core) -- $(PYTEST_ARGS)

image: ## the image from Dockerfile without Docker (podman, a Debian base): dist/*.oci.tar
	@bash hack/image.sh

render: venv ## print what the examples would create (no cluster needed)
	$(VENV)/bin/appidentity-operator render -f examples/ 2>/dev/null || \
	  for f in examples/*.yaml; do $(VENV)/bin/appidentity-operator render -n default -f $$f; done

install.yaml: control-plane venv ## regenerate deploy/install.yaml, deploy/webhook/install.yaml (and the chart's copies of the CRD and requester policy)
	"$$(bash hack/build-control-plane.sh | tail -n 1)/kubectl" kustomize deploy/ > deploy/install.yaml.new
	mv deploy/install.yaml.new deploy/install.yaml
	$(PY) hack/webhook_install.py > deploy/webhook/install.yaml
	cp crds/appidentity.dev_appidentities.yaml deploy/requester-policy.yaml charts/appidentity-operator/files/
	$(PY) -c 'import sys, yaml; docs = yaml.safe_load_all(open("deploy/requester-policy.yaml")); \
	  yaml.safe_dump_all([d for d in docs if d["kind"].startswith("Validating")], sys.stdout, sort_keys=False)' \
	  > charts/appidentity-operator/files/requester-validation.yaml
	mkdir -p charts/appidentity-operator/files/webhook
	cd deploy/webhook && cp serviceaccount.yaml rbac.yaml secret.yaml deployment.yaml service.yaml \
	  mutating-webhook.yaml ../../charts/appidentity-operator/files/webhook/

N ?= 1,100,1000
bench: deps ## time to Ready, API requests, memory, restart; vs kubectl and a plain client (N=1,100,1000)
	$(PY) bench/run.py --n $(N)

bench-usage: venv ## `usage` on a generated >= 1 GB audit log and a tenth of it: time, MB/s, peak RSS (bench/usage.py)
	$(PY) bench/usage.py

chaos: deps ## the fault suite in full: 50 identities, 20 SIGKILLs, 10 repairs per kind
	APPID_CHAOS_IDENTITIES=50 APPID_CHAOS_KILLS=20 APPID_CHAOS_REPEATS=10 \
	  $(PY) -m pytest tests/chaos -v $(PYTEST_ARGS)

JUDGE_EXAMPLES ?= 5000
JUDGE_SEED ?= $(shell date +%s)
judge: deps ## the one-judge property test, longer: admission vs operator on JUDGE_EXAMPLES specs
	APPID_JUDGE_EXAMPLES=$(JUDGE_EXAMPLES) APPID_JUDGE_SEED=$(JUDGE_SEED) \
	  $(PY) -m pytest tests/integration/test_one_judge.py -s $(PYTEST_ARGS)

e2e-kind: ## for machines with Docker: kind cluster, image, deploy/, the same e2e suite
	@bash hack/e2e-kind.sh
