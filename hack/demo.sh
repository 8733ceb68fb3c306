#!/usr/bin/env bash
# `make demo`: a local control plane (unless KUBECONFIG names a cluster), what deploy/ installs
# but for the operator's Deployment (the CRD, RBAC, policy ConfigMap, admission policies and the
# requester recording), the operator as a local process with that ConfigMap's policy, the
# examples, their verified status, a forbidden grant refused at admission, and an identity's
# usage report from the API server's audit log (issue 21). The last line is
# the `export PATH=... KUBECONFIG=...` that makes the README's commands work as written.
# `hack/demo.sh down` undoes it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
state="$repo/.state/demo"
kubectl="$repo/bin/kubectl"
operator="$repo/.venv/bin/appidentity-operator"
metrics_port=${DEMO_METRICS_PORT:-18080}
liveness_port=${DEMO_LIVENESS_PORT:-18081}
webhook_port=${DEMO_WEBHOOK_PORT:-18443}
webhook_health_port=${DEMO_WEBHOOK_HEALTH_PORT:-18444}
mkdir -p "$state"

stop_pid() {
  local pidfile="$state/$1.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$pidfile"
}

if [ "${1:-up}" = down ]; then
  stop_pid operator
  stop_pid webhook
  if [ -f "$state/own-cluster" ]; then bash hack/cluster.sh down "$repo/.state/cluster"; fi
  rm -rf "$state"
  echo "demo stopped"
  exit 0
fi

# Issue 21: an application that uses part of its grant and is denied once, and what `usage`
# makes of the API server's audit log. The log is the local control plane's (hack/cluster.sh
# audits ServiceAccounts); on another cluster DEMO_AUDIT_LOG names a copy of its audit log.
show_usage() {
  local audit=${DEMO_AUDIT_LOG:-}
  [ -n "$audit" ] || [ ! -f "$state/own-cluster" ] || audit="$repo/.state/cluster/logs/audit.log"
  if [ -z "$audit" ] || [ ! -r "$audit" ]; then
    echo "== usage: skipped (no audit log; set DEMO_AUDIT_LOG to this cluster's audit log file)"
    return 0
  fi
  echo "== usage: AppIdentity team-a/inventory is granted all verbs on configmaps and get, list on pods;"
  echo "   its application reads configmaps and tries to read a secret (denied)"
  "$kubectl" apply -f - >/dev/null <<'YAML'
apiVersion: appidentity.dev/v1alpha1
kind: AppIdentity
metadata: {name: inventory, namespace: team-a}
spec:
  rules:
  - {apiGroups: [""], resources: [configmaps], verbs: [get, list, watch, create, update, patch, delete]}
  - {apiGroups: [""], resources: [pods], verbs: [get, list]}
  token: {kubeconfig: true}
YAML
  "$kubectl" wait --for=condition=Ready appidentity/inventory -n team-a --timeout=120s >/dev/null
  local app="$state/inventory.kubeconfig"
  (umask 077 && "$operator" kubeconfig inventory -n team-a >"$app")
  "$kubectl" --kubeconfig "$app" get configmaps -o name >/dev/null
  "$kubectl" --kubeconfig "$app" get configmap kube-root-ca.crt -o name >/dev/null
  if "$kubectl" --kubeconfig "$app" get secret inventory-token >/dev/null 2>&1; then
    echo "the application read a secret it was not granted" >&2
    exit 1
  fi
  echo "   \$ appidentity-operator usage inventory -n team-a --audit-log $audit --force"
  echo "   (--force: the log covers minutes, less than the default --min-window of 7 days)"
  "$operator" usage inventory -n team-a --audit-log "$audit" --force --policy "$state/policy.yaml" | sed 's/^/   /'
  [ ${#receiver[@]} -gt 0 ] || return 0
  echo "== the same, live: the operator's audit webhook receiver, in status.usage (written at most"
  echo "   once a minute per identity; waiting for it)"
  if "$kubectl" wait --for=jsonpath='{.status.usage.deniedCount}'=1 appidentity/inventory -n team-a \
    --timeout=90s >/dev/null; then
    "$kubectl" get appidentity inventory -n team-a \
      -o jsonpath='{.status.usage}{"\n"}{range .status.conditions[?(@.type=="UsageObserved")]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' |
      sed 's/^/   /'
  else
    echo "   status.usage did not show the denial within 90 s; see $state/operator.log" >&2
  fi
}

if [ -z "${KUBECONFIG:-}" ]; then
  echo "== no KUBECONFIG given: starting the local control plane"
  export_line=$(bash hack/cluster.sh up "$repo/.state/cluster" | tail -n 1)
  export KUBECONFIG=${export_line#export KUBECONFIG=}
  touch "$state/own-cluster"
else
  echo "== using the cluster of KUBECONFIG=$KUBECONFIG"
fi
# bin/: the cached kubectl of the local control plane's release (the README's `kubectl`)
[ -x "$kubectl" ] || { mkdir -p bin && ln -sfn "$(bash hack/build-control-plane.sh | tail -n 1)/kubectl" "$kubectl"; }

echo "== installing deploy/ but for the operator's Deployment: the CRD, RBAC, the policy ConfigMap,"
echo "   the admission policies and the requester recording (who writes a spec must hold what it grants)"
mode=$(bash hack/install.sh auto "$webhook_port" --deploy | tail -n 1)
mode=${mode#requester: }
if [ "$mode" = webhook ]; then
  echo "   Kubernetes before 1.36: the requester webhook, served by a local process (log: $state/webhook.log)"
  stop_pid webhook
  nohup "$operator" webhook --bind 127.0.0.1 --port "$webhook_port" --health-port "$webhook_health_port" \
    --hosts localhost,127.0.0.1 --log-format text >"$state/webhook.log" 2>&1 &
  echo $! >"$state/webhook.pid"
else
  echo "   Kubernetes 1.36+: the MutatingAdmissionPolicy appidentity-requester"
fi
probe='{"apiVersion":"appidentity.dev/v1alpha1","kind":"AppIdentity","metadata":{"name":"probe","namespace":"appidentity-system"},"spec":{"rules":[{"apiGroups":[""],"resources":["pods"],"verbs":["get"]}]}}'
for _ in $(seq 120); do
  stamp=$(echo "$probe" | "$kubectl" create --dry-run=server -f - \
    -o jsonpath='{.metadata.annotations.appidentity\.dev/requester}' 2>/dev/null || true)
  [ -n "$stamp" ] && break
  sleep 0.5
done
[ -n "$stamp" ] || { echo "the requester recording ($mode) did not take effect" >&2; exit 1; }
forbidden='{"apiVersion":"appidentity.dev/v1alpha1","kind":"AppIdentity","metadata":{"name":"impersonator","namespace":"team-a"},"spec":{"rules":[{"apiGroups":[""],"resources":["users"],"verbs":["impersonate"]}]}}'
for _ in $(seq 60); do
  if ! refused=$(echo "${forbidden//team-a/appidentity-system}" | "$kubectl" create --dry-run=server -f - 2>&1); then
    [[ $refused == *forbiddenVerbs* ]] && break
  fi
  refused=""
  sleep 0.5
done
[ -n "$refused" ] || { echo "the operator policy's admission policy did not take effect" >&2; exit 1; }

echo "== starting the operator with the policy of ConfigMap appidentity-system/appidentity-policy (log: $state/operator.log)"
"$kubectl" get configmap appidentity-policy -n appidentity-system \
  -o jsonpath='{.data.policy\.yaml}' >"$state/policy.yaml"
stop_pid operator
# On the local control plane the operator also receives its audit webhook (hack/cluster.sh
# points the API server at this port with these certificates): status.usage, live.
receiver=()
cluster_state="$repo/.state/cluster"
if [ -f "$state/own-cluster" ] && [ -f "$cluster_state/audit-webhook.port" ]; then
  receiver=(--audit-webhook-port "$(<"$cluster_state/audit-webhook.port")" --audit-webhook-bind 127.0.0.1
    --audit-webhook-cert "$cluster_state/pki/audit-receiver.crt"
    --audit-webhook-key "$cluster_state/pki/audit-receiver.key"
    --audit-webhook-client-ca "$cluster_state/pki/audit-ca.crt")
fi
nohup "$operator" run --all-namespaces --policy "$state/policy.yaml" \
  --metrics-port "$metrics_port" --liveness-port "$liveness_port" "${receiver[@]}" \
  >"$state/operator.log" 2>&1 &
echo $! >"$state/operator.pid"

echo "== applying examples/"
"$kubectl" apply -f examples/
echo "== waiting for every AppIdentity to be Ready (verified with its own token)"
if ! "$kubectl" wait --for=condition=Ready appidentities --all --all-namespaces --timeout=180s >/dev/null; then
  "$kubectl" get appidentities -A -o wide
  echo "not every identity became Ready; see $state/operator.log" >&2
  exit 1
fi
echo
"$kubectl" get appidentities -A
echo
echo "== what the self-check proved"
"$kubectl" get appidentities -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}: {.status.verification.allowedChecks} allowed and {.status.verification.deniedChecks} denied checks passed as {.status.verification.authenticatedAs}, signed by key {.status.token.keyID}{"\n"}{end}'
echo
echo "== a grant the operator policy forbids is refused at admission, before anything is stored:"
echo "   kubectl apply of AppIdentity team-a/impersonator with verbs [impersonate] on users"
if out=$(echo "$forbidden" | "$kubectl" apply -f - 2>&1); then
  echo "the forbidden AppIdentity was admitted: $out" >&2
  exit 1
fi
echo "   refused: ${out#*denied request: }"
echo
show_usage
echo
echo "== next, with the line below run in your shell first (it puts .venv/bin and bin/ on PATH):"
"$kubectl" get appidentities -A -o jsonpath='{range .items[?(@.spec.token.kubeconfig==true)]}  appidentity-operator kubeconfig {.metadata.name} -n {.metadata.namespace} > {.metadata.name}.kubeconfig && kubectl --kubeconfig {.metadata.name}.kubeconfig auth can-i --list{"\n"}{end}'
echo "  every check, one identity:  kubectl appid check pod-reader -n team-a"
echo "  all identities:             kubectl appid status -A"
echo "  what an identity used:      kubectl appid usage inventory -n team-a --audit-log .state/cluster/logs/audit.log --force"
echo "  a token for another service (as that service verifies it):"
echo "    kubectl get secret vault-client-token -n team-a -o jsonpath='{.data.token}' | base64 -d | appidentity-operator verify-token --audience vault"
echo "  metrics:                    curl -s localhost:$metrics_port/metrics | grep ^appidentity_"
echo "  stop everything:            make demo-down"
echo
# The last line: the README's `appidentity-operator`, `kubectl appid` (.venv/bin/kubectl-appid)
# and `kubectl` (bin/, the release of the local control plane) first on PATH, and its cluster.
printf 'export PATH="%s/.venv/bin:%s/bin:$PATH" KUBECONFIG=%s\n' "$repo" "$repo" "$KUBECONFIG"
