#!/usr/bin/env bash
# `make run`: the operator as a local process against KUBECONFIG's cluster and, where
# `make install` installed the requester webhook for a local process (a MutatingWebhookConfiguration
# with a URL, on clusters before 1.36), that webhook too, on the URL's port. Ctrl-C stops both.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
kubectl=${KUBECTL:-$repo/bin/kubectl}
command -v "$kubectl" >/dev/null || kubectl=kubectl
bin=$repo/.venv/bin

url=$("$kubectl" get mutatingwebhookconfiguration appidentity-requester \
  -o jsonpath='{.webhooks[0].clientConfig.url}' 2>/dev/null || true)
if [ -n "$url" ]; then
  port=${url##*:}; port=${port%%/*}
  "$bin/appidentity-operator" webhook --bind 127.0.0.1 --port "$port" \
    --health-port "${WEBHOOK_HEALTH_PORT:-9444}" --hosts localhost,127.0.0.1 --log-format text &
  webhook=$!
  trap 'kill "$webhook" 2>/dev/null; wait "$webhook" 2>/dev/null || true' EXIT
  echo "run-local.sh: requester webhook on $url (pid $webhook)" >&2
fi
"$bin/appidentity-operator" run --log-format text "$@"
