"""The live receiver (issue 21, item 3) on the local control plane: its API server sends every
ServiceAccount's audit Events to the operator's audit webhook receiver (hack/cluster.sh), and
within a minute `status.usage` says which grants went unused and how many requests were denied,
the informational UsageObserved condition says so, Ready stays True and kstatus says Current.
A client without the API server's client certificate is refused at the TLS handshake."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appidentity.kube import Kube
from gitops import kstatus
from support import (
    TEST_STATE_DIR,
    Cluster,
    InClusterOperator,
    Operator,
    condition,
    replacing,
    use_part_of_the_grant,
    wait_until,
)

PKI = TEST_STATE_DIR / "pki"
PORT_FILE = TEST_STATE_DIR / "audit-webhook.port"


@pytest.fixture(scope="module")
def receiver_port(cluster: Cluster) -> int:
    if cluster.external or not PORT_FILE.exists():
        pytest.skip("needs the local control plane's audit webhook (hack/cluster.sh)")
    return int(PORT_FILE.read_text())


@pytest.fixture(scope="module")
def receiving_operator(
    cluster: Cluster,
    operator: Operator | InClusterOperator,
    receiver_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The session's operator, replaced for this module by one with the receiver on."""
    if not isinstance(operator, Operator):
        pytest.skip("the receiver is tested with a local operator process")
    workdir = tmp_path_factory.mktemp("receiver")
    flags = {
        "--audit-webhook-port": str(receiver_port),
        "--audit-webhook-bind": "127.0.0.1",
        "--audit-webhook-cert": str(PKI / "audit-receiver.crt"),
        "--audit-webhook-key": str(PKI / "audit-receiver.key"),
        "--audit-webhook-client-ca": str(PKI / "audit-ca.crt"),
    }
    own = Operator(
        cluster,
        workdir,
        workdir / "operator.log",
        extra_args=tuple(x for kv in flags.items() for x in kv),
        # The default schedule (no re-check every 2 s): the receiver's own wake-up is what
        # brings the usage into the status, as in a real cluster.
        recheck_seconds=None,
    )
    with replacing(operator, own):
        yield own


def usage_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.get("AppIdentity", namespace, name) or {}
    return dict((obj.get("status") or {}).get("usage") or {})


def test_status_usage_shows_unused_grants_and_denials_within_a_minute_and_stays_current(
    kube: Kube, namespace: str, receiving_operator: Operator, token_api: Any
) -> None:
    use_part_of_the_grant(kube, namespace, token_api)

    wait_until(
        lambda: usage_of(kube, namespace, "app").get("deniedCount") == 1,
        60,
        "usage within a minute",
    )
    usage = usage_of(kube, namespace, "app")
    assert usage["usedEntries"] == 1 and usage["unusedEntries"] == 1
    # The self-check's own requests (same token, its own User-Agent) are not counted as use.
    assert usage["unused"] == [
        "spec.rules[1]",
        "spec.rules[0]: configmaps: watch, create, update, patch, delete",
    ]
    assert usage["window"]["from"] <= usage["lastSeen"] <= usage["window"]["to"]
    obj = kube.get("AppIdentity", namespace, "app")
    assert obj is not None
    observed = condition(obj, "UsageObserved")
    assert observed["status"] == "True" and observed["reason"] == "UnusedGrants"
    assert "spec.rules[1]" in observed["message"] and "1 request(s) denied" in observed["message"]
    assert condition(obj, "Ready")["status"] == "True"
    types = {c["type"] for c in obj["status"]["conditions"]}
    assert not types & {"Reconciling", "Stalled"}
    assert kstatus(obj)[0] == "Current"
    metrics = receiving_operator.metrics()
    line = f'appidentity_unused_entries{{name="app",namespace="{namespace}"}} 1.0'
    assert line in metrics.splitlines()


def test_a_client_without_the_api_servers_certificate_is_refused(
    receiving_operator: Operator, receiver_port: int, tmp_path: Path
) -> None:
    url = f"https://127.0.0.1:{receiver_port}/audit"
    body = json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []})

    def post(context: ssl.SSLContext) -> int:
        request = urllib.request.Request(url, body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return int(response.status)

    anonymous = ssl.create_default_context(cafile=str(PKI / "audit-ca.crt"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        post(anonymous)
    # The admin's certificate is the cluster CA's, not the audit CA's: refused as well.
    admin = ssl.create_default_context(cafile=str(PKI / "audit-ca.crt"))
    admin.load_cert_chain(PKI / "admin.crt", PKI / "admin.key")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        post(admin)
    # The API server's own client certificate is accepted (so the refusals above are the CA's).
    apiserver = ssl.create_default_context(cafile=str(PKI / "audit-ca.crt"))
    apiserver.load_cert_chain(PKI / "audit-client.crt", PKI / "audit-client.key")
    assert post(apiserver) == 200
    with urllib.request.urlopen(url.replace("/audit", "/usage"), timeout=5, context=apiserver) as r:
        assert isinstance(json.loads(r.read()), dict)
    bad = urllib.request.Request(url, b"[1]", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=5, context=apiserver)
    assert refused.value.code == 400
