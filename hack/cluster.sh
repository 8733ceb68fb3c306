#!/usr/bin/env bash
# A throwaway but real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
# running as detached local processes, for the integration tests and for manual work.
#
#   hack/cluster.sh up     [STATE_DIR]  start (or reuse) it; last line: export KUBECONFIG=...
#                                       (the audit log of ServiceAccounts' requests is
#                                       STATE_DIR/logs/audit.log; `up` prints it on stderr; the
#                                       same Events go to the audit webhook at the port in
#                                       STATE_DIR/audit-webhook.port: see write_audit_webhook)
#   hack/cluster.sh down   [STATE_DIR]  stop it and remove STATE_DIR
#   hack/cluster.sh status [STATE_DIR]  exit 0 when it is running and ready
#   hack/cluster.sh restart-apiserver [STATE_DIR]
#                                       stop and start kube-apiserver alone, on the same port,
#                                       etcd keeping its data (for fault tests)
#   hack/cluster.sh authz-webhook on|off [STATE_DIR]
#                                       put a Webhook authorizer before RBAC (on) or take it
#                                       away (off), and wait until the API server applies it;
#                                       see write_authz_config
#
# No kubelet and no scheduler: Pods never run. The operator's behaviour lives in RBAC, tokens
# and garbage collection, which is exactly what these three processes provide.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# K8S_VERSION (default in versions.env) picks the control plane; each is cached apart.
# shellcheck source=versions.env
. "$here/versions.env"

# Only the controllers the operator depends on; every extra one costs start-up time and noise.
# Canonical names (1.28+ added the -controller suffix; the short names remain aliases).
# clusterrole-aggregation makes aggregated ClusterRoles (e.g. `view`) grow with labelled roles.
readonly CONTROLLERS=serviceaccount-token-controller,serviceaccount-controller,garbage-collector-controller,namespace-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller
readonly SERVICE_CIDR=10.0.0.0/24
readonly SERVICE_IP=10.0.0.1
# The API server must advertise some address. On a loopback-only or routeless host it cannot
# pick one itself, and Endpoints refuse loopback IPs, so we advertise this and turn off the
# endpoint reconciler (nothing here would use the `kubernetes` Endpoints anyway).
readonly ADVERTISE_ADDRESS=127.0.0.1
readonly TIMEOUT=${APPID_CLUSTER_TIMEOUT:-120}
readonly COMPONENTS=(etcd kube-apiserver kube-controller-manager)

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

usage() {
  echo "usage: $0 up|down|status|restart-apiserver [STATE_DIR]   (default STATE_DIR: $repo/.state/cluster)" >&2
  echo "       $0 authz-webhook on|off [STATE_DIR]" >&2
  exit 2
}

# --- processes ---------------------------------------------------------------------------------

# Prints the pid of a component if it is alive and still ours (the pid file may be stale and the
# number reused by an unrelated process, which we must never signal).
live_pid() {
  local name=$1 pidfile="$state/$1.pid" pid
  [ -f "$pidfile" ] || return 1
  pid=$(<"$pidfile")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  # Matched on the command line, not /proc/<pid>/exe: that turns into "... (deleted)" when the
  # cached binary is rebuilt under a running cluster, and `down` must still find it.
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ "$cmdline" == *"/$name "* && "$cmdline" == *"$state/"* ]] || return 1
  echo "$pid"
}

# Starts a binary in its own session so it outlives the calling shell (and pytest), with output
# in logs/<name>.log and its pid in <name>.pid. setsid does not fork here (a background job is not
# a process-group leader), so $! is the component's own pid. fd 9 (our lock) is closed, or the
# component would hold the lock for its whole life.
start_detached() {
  local name=$1; shift
  setsid "$bin/$name" "$@" </dev/null >"$state/logs/$name.log" 2>&1 9>&- &
  echo $! >"$state/$name.pid"
}

# TERM to a group of components at once, KILL after 10s. The API server and controller manager
# go together (nothing left to save); etcd only after them, because a TERMed etcd waits for its
# clients' watch streams to close and the TERMed API server waits for etcd: a 10s stand-off.
stop_group() {
  local c pid waited=0
  local -a pids=()
  for c in "$@"; do
    if pid=$(live_pid "$c"); then
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$state/$c.pid"
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  while any_alive "${pids[@]}" && [ "$waited" -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
  any_alive "${pids[@]}" || return 0
  log "$* still running 10s after TERM, killing"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  while any_alive "${pids[@]}"; do sleep 0.1; done
}

stop_all() {
  stop_group kube-controller-manager kube-apiserver
  stop_group etcd
}

any_alive() { local pid; for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }

# Fails with the tail of a component's log: the usual reason a wait did not succeed.
fail_with_log() {
  local name=$1 what=$2
  echo "cluster.sh: $what; last lines of $state/logs/$name.log:" >&2
  tail -n 25 "$state/logs/$name.log" >&2 || true
  stop_all
  die "$what (full log: $state/logs/$name.log; state kept in $state for inspection)"
}

# Polls a check until it succeeds; fails early when the component died, or after TIMEOUT seconds.
wait_for() {
  local name=$1 what=$2; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    live_pid "$name" >/dev/null || fail_with_log "$name" "$name exited while waiting for $what"
    [ "$SECONDS" -lt "$deadline" ] || fail_with_log "$name" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.2
  done
}

# --- ports -------------------------------------------------------------------------------------

port_in_use() { ss -Htln "sport = :$1" | grep -q .; }

# Stores in the variable named $1 a free loopback port below the kernel's ephemeral range, so an
# outgoing connection cannot take it between our check and the bind. Not `echo`ed: a command
# substitution's subshell would forget which ports this run already handed out.
declare -a taken_ports=()
free_port() {
  local p tries=0
  while [ "$tries" -lt 200 ]; do
    tries=$((tries + 1))
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    [[ " ${taken_ports[*]} " == *" $p "* ]] && continue
    port_in_use "$p" && continue
    taken_ports+=("$p")
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found between 20000 and 32000"
}

# --- PKI ---------------------------------------------------------------------------------------

# Issues a certificate signed by the cluster CA (or the CA named by $4, e.g. audit-ca). $3 is
# the extension section (SANs, usage).
issue_cert() {
  local name=$1 subject=$2 extensions=$3 ca=${4:-ca} pki="$state/pki"
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr"
  printf '%s\n' "$extensions" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

make_pki() {
  local pki="$state/pki"
  mkdir -p "$pki"
  openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=appidentity-local-ca" -days 365 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt"
  issue_cert apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
    'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=serverAuth' \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:$SERVICE_IP")"
  local client
  client=$(printf '%s\n' 'basicConstraints=CA:FALSE' \
    'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=clientAuth')
  issue_cert admin "/O=system:masters/CN=admin" "$client"
  issue_cert controller-manager "/CN=system:kube-controller-manager" "$client"
  # The audit webhook's: the operator's receiver is started with (paths under STATE_DIR/pki)
  #   --audit-webhook-cert audit-receiver.crt --audit-webhook-key audit-receiver.key
  #   --audit-webhook-client-ca audit-ca.crt --audit-webhook-port $(cat STATE_DIR/audit-webhook.port)
  make_webhook_pki audit audit-receiver appidentity-audit-receiver kube-apiserver-audit
  # The authorization webhook's (write_authz_config): the tests serve it (tests/authz_webhook.py).
  make_webhook_pki authz authz-webhook appidentity-authz-webhook kube-apiserver-authz
  # Service-account tokens: the API server signs and verifies, the controller manager signs.
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

# A webhook's own CA, apart from the cluster's: it signs the webhook's serving certificate and
# the API server's client certificate for it, so a webhook trusting it as its client CA accepts
# the API server and nothing else (not the admin, whose certificate the cluster CA signed).
# Files in STATE_DIR/pki: $1-ca, $2 (serving, CN $3), $1-client (CN $4).
make_webhook_pki() {
  local prefix=$1 server=$2 server_cn=$3 client_cn=$4 pki="$state/pki"
  openssl genrsa -out "$pki/$prefix-ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$pki/$prefix-ca.key" -subj "/CN=appidentity-local-$prefix-ca" \
    -days 365 -sha256 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$pki/$prefix-ca.crt"
  local usage=('basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment')
  issue_cert "$server" "/CN=$server_cn" "$(printf '%s\n' "${usage[@]}" \
    'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost')" "$prefix-ca"
  issue_cert "$prefix-client" "/CN=$client_cn" "$(printf '%s\n' "${usage[@]}" \
    'extendedKeyUsage=clientAuth')" "$prefix-ca"
}

# A kubeconfig with every credential embedded, so it stays valid when copied elsewhere.
write_kubeconfig() {
  local file=$1 user=$2 server=$3 pki="$state/pki"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: appidentity-local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$user.crt")
    client-key-data: $(base64 -w0 "$pki/$user.key")
contexts:
- name: appidentity-local
  context:
    cluster: appidentity-local
    user: $user
current-context: appidentity-local
EOF
  chmod 600 "$file"
}

# --- readiness ---------------------------------------------------------------------------------

apiserver_url() { [ -f "$state/apiserver.url" ] && cat "$state/apiserver.url"; }

admin_curl() {
  local pki="$state/pki"
  curl -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$@"
}

etcd_healthy() { curl -fsS --max-time 5 "$1/health" | grep -q '"health":"true"'; }
apiserver_ready() { local url; url=$(apiserver_url) && admin_curl "$url/readyz"; }
default_sa_exists() {
  "$bin/kubectl" --kubeconfig "$state/admin.kubeconfig" -n default get serviceaccount default
}

is_ready() {
  local c
  for c in "${COMPONENTS[@]}"; do live_pid "$c" >/dev/null || return 1; done
  apiserver_ready >/dev/null 2>&1
}

# --- commands ----------------------------------------------------------------------------------

start_etcd() {
  local client_port peer_port
  free_port client_port; free_port peer_port
  etcd_url="http://127.0.0.1:$client_port"
  echo "$etcd_url" >"$state/etcd.url"
  local peer="http://127.0.0.1:$peer_port"
  start_detached etcd --name=appidentity --data-dir="$state/etcd" \
    --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
    --initial-cluster="appidentity=$peer" --initial-cluster-state=new \
    --unsafe-no-fsync --log-level=warn
  wait_for etcd "etcd health at $etcd_url" etcd_healthy "$etcd_url"
}

# The audit policy: what every ServiceAccount does (the usage report's evidence), at Metadata
# level (who, verb, object, response code, user agent; never a request or response body, so
# never a token), each request once (ResponseComplete or Panic; RequestReceived is omitted).
# Users who are not ServiceAccounts (the admin, the control plane's components) are not audited.
write_audit_policy() {
  cat >"$state/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
EOF
}

# The audit log and its rotation: 100 MB a file, the newest 5 rotated ones kept for at most 7
# days. `usage` reads the rotated files as well as the live one. A test run writes a few MB.
audit_flags() {
  echo --audit-policy-file="$state/audit-policy.yaml" \
    --audit-log-path="$state/logs/audit.log" --audit-log-format=json \
    --audit-log-maxsize=100 --audit-log-maxbackup=5 --audit-log-maxage=7
}

# The audit webhook backend's target: a kubeconfig naming the receiver (the operator, started
# later with the port recorded here) and the API server's client certificate. The port is picked
# once, at cluster start, since the API server reads this file only when it starts. While no
# receiver listens, each batch fails after its retries and is dropped: the API server then
# writes an error and the batch's Events (`AUDIT: id=...`, Metadata level) to its own log,
# logs/kube-apiserver.log. The audit log file beside it is unaffected.
write_audit_webhook() {
  local port
  webhook_port audit port
  write_webhook_kubeconfig audit "https://127.0.0.1:$port/audit"
}

# Stores in the variable named $2 the port of webhook $1, picked once and kept in
# STATE_DIR/$1-webhook.port, so the API server and whoever serves the webhook agree on it.
webhook_port() {
  local file="$state/$1-webhook.port"
  if [ -f "$file" ]; then
    printf -v "$2" '%s' "$(<"$file")"
  else
    free_port "$2"
    echo "${!2}" >"$file"
  fi
}

# STATE_DIR/$1-webhook.kubeconfig: the webhook at URL $2, trusted through $1-ca, the API server
# presenting $1-client (make_webhook_pki).
write_webhook_kubeconfig() {
  local prefix=$1 url=$2 pki="$state/pki" file="$state/$1-webhook.kubeconfig"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: appidentity-$prefix-webhook
  cluster:
    server: $url
    certificate-authority-data: $(base64 -w0 "$pki/$prefix-ca.crt")
users:
- name: kube-apiserver
  user:
    client-certificate-data: $(base64 -w0 "$pki/$prefix-client.crt")
    client-key-data: $(base64 -w0 "$pki/$prefix-client.key")
contexts:
- name: $prefix
  context:
    cluster: appidentity-$prefix-webhook
    user: kube-apiserver
current-context: $prefix
EOF
  chmod 600 "$file"
}

# Batches of at most 2 s, so a receiver sees a request within seconds; failed sends retried
# from 1 s (not the default 10 s) so a receiver that is absent costs little.
audit_webhook_flags() {
  echo --audit-webhook-config-file="$state/audit-webhook.kubeconfig" \
    --audit-webhook-mode=batch --audit-webhook-batch-max-wait=2s \
    --audit-webhook-initial-backoff=1s
}

# Authorization is structured configuration (apiserver.config.k8s.io/v1: GA in 1.32 and read by
# every release of the window), not --authorization-mode=RBAC, so that a Webhook authorizer can
# be put before RBAC while the API server runs: it watches this file (inotify, else a poll every
# minute) and applies a valid change within about a second. $1 off: RBAC alone (what `up`
# writes); on: first the webhook at STATE_DIR/authz-webhook.port (served by the tests,
# tests/authz_webhook.py), asked only about ServiceAccounts of namespaces named authz-webhook-*,
# no opinion when it cannot be reached; then RBAC. Written by a rename, never half a file.
write_authz_config() {
  local file="$state/authorization-config.yaml"
  {
    printf '%s\n' 'apiVersion: apiserver.config.k8s.io/v1' 'kind: AuthorizationConfiguration' \
      'authorizers:'
    # The shortest cache lives allowed (> 0): a test changes the webhook's answers at will.
    [ "$1" = off ] || cat <<EOF
- type: Webhook
  name: authz-webhook
  webhook:
    timeout: 3s
    authorizedTTL: 1ms
    unauthorizedTTL: 1ms
    subjectAccessReviewVersion: v1
    matchConditionSubjectAccessReviewVersion: v1
    failurePolicy: NoOpinion
    connectionInfo:
      type: KubeConfigFile
      kubeConfigFile: $state/authz-webhook.kubeconfig
    matchConditions:
    - expression: "request.user.startsWith('system:serviceaccount:authz-webhook-')"
EOF
    printf '%s\n' '- type: RBAC' '  name: rbac'
  } >"$file.new"
  mv "$file.new" "$file"
}

# The authorization webhook's port and kubeconfig, made once like the audit webhook's; the
# chain itself is left as it is, so a restarted API server keeps the webhook if a test put it in.
write_authz_webhook() {
  local port
  webhook_port authz port
  write_webhook_kubeconfig authz "https://127.0.0.1:$port/authorize"
  [ -f "$state/authorization-config.yaml" ] || write_authz_config off
}

# A Webhook authorizer cannot list rules, so with one in the chain every SelfSubjectRulesReview,
# the admin's too, says `incomplete: true`; with RBAC alone, never. Prints on or off.
authz_webhook_state() {
  local review='{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectRulesReview","spec":{"namespace":"default"}}' answer
  answer=$(admin_curl -X POST -H 'Content-Type: application/json' --data "$review" \
    "$(apiserver_url)/apis/authorization.k8s.io/v1/selfsubjectrulesreviews") || return 1
  if [[ "$answer" =~ \"incomplete\":\ *true ]]; then echo on; else echo off; fi
}

# With a port argument the API server comes back where it was: same issuer, same kubeconfigs.
start_apiserver() {
  local port=${1:-} pki="$state/pki"
  [ -n "$port" ] || free_port port
  local url="https://127.0.0.1:$port"
  echo "$url" >"$state/apiserver.url"
  write_kubeconfig "$state/admin.kubeconfig" admin "$url"
  write_kubeconfig "$state/controller-manager.kubeconfig" controller-manager "$url"
  write_audit_policy
  write_audit_webhook
  write_authz_webhook
  # shellcheck disable=SC2046 # audit_flags' words hold no spaces (paths in the state dir)
  start_detached kube-apiserver $(audit_flags) $(audit_webhook_flags) \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 --secure-port="$port" \
    --advertise-address="$ADVERTISE_ADDRESS" --endpoint-reconciler-type=none \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --cert-dir="$pki" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-config="$state/authorization-config.yaml" \
    --service-account-issuer="$url" --api-audiences="$url" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --profiling="${APPID_APISERVER_PROFILING:-false}"
  wait_for kube-apiserver "$url/readyz" apiserver_ready
}

start_controller_manager() {
  local port pki="$state/pki"
  free_port port
  # No --authentication/authorization-kubeconfig: its own HTTPS port only serves /healthz and
  # /metrics, and delegated auth would log errors forever about the (unused) front-proxy CA.
  start_detached kube-controller-manager \
    --kubeconfig="$state/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$port" --cert-dir="$state/controller-manager-certs" \
    --controllers="$CONTROLLERS" \
    --use-service-account-credentials \
    --leader-elect=false \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --profiling=false
  wait_for kube-controller-manager "ServiceAccount default/default" default_sa_exists
}

link_kubectl() {
  mkdir -p "$repo/bin"
  ln -sfn "$bin/kubectl" "$repo/bin/kubectl"
}

# The version a running control plane was started at; another K8S_VERSION means a new one.
same_version() { [ "$(cat "$state/version" 2>/dev/null)" = "$K8S_VERSION" ]; }

cmd_up() {
  bin=$("$here/build-control-plane.sh" | tail -n 1)
  [ -x "$bin/kube-apiserver" ] || die "build-control-plane.sh did not yield a bin dir (got: $bin)"
  link_kubectl
  # A control plane started before the audit webhook or the authorization webhook existed is
  # started afresh, too.
  if ! is_ready || ! same_version || [ ! -f "$state/audit-webhook.port" ] ||
    [ ! -f "$state/authz-webhook.port" ]; then
    # Half-started or crashed leftovers: start from scratch rather than repair.
    stop_all
    rm -rf "$state"
    mkdir -p "$state/logs"
    echo "$K8S_VERSION" >"$state/version"
    make_pki
    start_etcd
    start_apiserver
    start_controller_manager
    log "Kubernetes v$K8S_VERSION ready at $(apiserver_url) (logs: $state/logs)"
  fi
  log "audit log (ServiceAccounts' requests, Metadata level): $state/logs/audit.log"
  local port pki="$state/pki"
  port=$(<"$state/audit-webhook.port")
  log "audit webhook to https://127.0.0.1:$port/audit; run the operator with --audit-webhook-port $port --audit-webhook-cert $pki/audit-receiver.crt --audit-webhook-key $pki/audit-receiver.key --audit-webhook-client-ca $pki/audit-ca.crt"
  echo "export KUBECONFIG=$state/admin.kubeconfig"
}

cmd_down() {
  [ -d "$state" ] || return 0
  stop_all
  rm -rf "$state"
}

cmd_restart_apiserver() {
  bin=$("$here/build-control-plane.sh" | tail -n 1)
  is_ready || die "not running; start it with: $0 up $state"
  local url
  url=$(apiserver_url)
  etcd_url=$(<"$state/etcd.url")
  stop_group kube-apiserver
  start_apiserver "${url##*:}"
  log "kube-apiserver restarted at $url"
}

# Puts the Webhook authorizer into the chain or takes it out, then waits (up to 75 s: a reload
# missed by inotify comes with the API server's one-minute poll) until the API server's answers
# show it. A change that does not parse is refused in the API server's log, which is shown.
cmd_authz_webhook() {
  local mode=$1 began=$EPOCHREALTIME
  is_ready || die "not running; start it with: $0 up $state"
  write_authz_config "$mode"
  until [ "$(authz_webhook_state 2>/dev/null)" = "$mode" ]; do
    if [ "$(elapsed_ms "$began")" -ge 75000 ]; then
      grep -i 'authoriz.*config' "$state/logs/kube-apiserver.log" | tail -n 5 >&2 || true
      die "the API server did not apply authorization webhook $mode within 75s"
    fi
    sleep 0.1
  done
  log "authorization webhook $mode, applied after $(elapsed_ms "$began") ms"
}

elapsed_ms() {
  local now=$EPOCHREALTIME
  echo $(((${now/./} - ${1/./}) / 1000))
}

cmd_status() {
  if is_ready; then echo "running at $(apiserver_url)"; else echo "not running"; return 1; fi
}

main() {
  if [ $# -lt 1 ] || [ $# -gt 3 ]; then usage; fi
  local cmd=$1 mode=""
  if [ "$cmd" = authz-webhook ]; then
    [ "${2:-}" = on ] || [ "${2:-}" = off ] || usage
    mode=$2
    shift
  elif [ $# -gt 2 ]; then
    usage
  fi
  state=${2:-$repo/.state/cluster}
  mkdir -p "$(dirname "$state")"
  state=$(cd "$(dirname "$state")" && pwd)/$(basename "$state")
  # Serialise commands on one state dir: `up` racing `down` would leave orphans behind.
  exec 9>"$state.lock"
  flock 9
  case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    restart-apiserver) cmd_restart_apiserver ;;
    authz-webhook) cmd_authz_webhook "$mode" ;;
    *) usage ;;
  esac
}

state=""
bin=""
etcd_url=""
main "$@"
