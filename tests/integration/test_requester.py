"""The requester, recorded at admission on every supported version: by the
MutatingAdmissionPolicy where the API server has it (1.36+), by the requester webhook elsewhere
(and on request, APPID_TEST_REQUESTER=webhook). Both must write the very stamp that the
ValidatingAdmissionPolicy computes, or every write would be refused; the tests in
test_escalation.py show the operator's judgement on it. Here: exactness for an awkward user,
a removed stamp restored, the operator's own writes never becoming the requester, and, for the
webhook, what availability means: a replica killed under load, the webhook down, and its
certificate rotated while it serves."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from appidentity.escalation import REQUESTER_ANNOTATION, parse_stamp
from appidentity.kube import ApiError, Http, Kube, path_for
from cryptography import x509
from kubernetes import config
from requester import WEBHOOK_NAME, RequesterWebhook
from support import (
    READ_CONFIGMAPS,
    Cluster,
    create,
    identity,
    merge_patch,
    wait_ready,
)
from urllib3 import HTTPHeaderDict

# A user whose name, uid, groups and extra need every kind of escaping a header can carry (and
# who may write AppIdentities: system:masters).
AWKWARD = {
    "user": 'o\'brien "the\\admin"\tx',
    "uid": 'uid-"1"',
    "groups": ['team "a"', "b\\c", "system:masters"],
    "extra": {"z.example.com/scopes": ['v"1', "v2"], "a.example.com/k": ["x y"]},
}


def _create_as(cluster: Cluster, who: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """POST as an impersonated user: the admin's client with Impersonate-* headers, one header
    per group and per extra value, as kubectl --as-group sends them."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig), persist_config=False)
    headers = HTTPHeaderDict({"Content-Type": "application/json", "Accept": "application/json"})
    headers.add("Impersonate-User", who["user"])
    headers.add("Impersonate-Uid", who["uid"])
    for group in who["groups"]:
        headers.add("Impersonate-Group", group)
    for key, values in who["extra"].items():
        for value in values:
            headers.add(f"Impersonate-Extra-{quote(key, safe='')}", value)
    url = api.configuration.host + path_for(obj["kind"], obj["metadata"]["namespace"])
    try:
        response = api.rest_client.pool_manager.request(
            "POST", url, body=json.dumps(obj), headers=headers
        )
    finally:
        api.close()
    assert response.status == 201, response.data.decode()[:500]
    created: dict[str, Any] = json.loads(response.data)
    return created


def _stamp(obj: dict[str, Any] | None) -> str | None:
    value = ((obj or {}).get("metadata", {}).get("annotations") or {}).get(REQUESTER_ANNOTATION)
    return value if isinstance(value, str) else None


# --- both modes -------------------------------------------------------------------------------


def test_the_stamp_is_exactly_the_user_the_api_server_authenticated(
    cluster: Cluster, kube: Kube, crd_installed: Any, namespace: str
) -> None:
    made = _create_as(cluster, AWKWARD, identity("awkward", namespace, rules=[READ_CONFIGMAPS]))
    stamped = parse_stamp(_stamp(made) or "")
    assert stamped.username == AWKWARD["user"]
    assert stamped.uid == AWKWARD["uid"]
    assert set(AWKWARD["groups"]) <= set(stamped.groups)
    assert dict(stamped.extra) == {k: tuple(v) for k, v in AWKWARD["extra"].items()}
    assert [k for k, _ in stamped.extra] == sorted(AWKWARD["extra"])


def test_a_removed_stamp_is_put_back(kube: Kube, crd_installed: Any, namespace: str) -> None:
    made = create(kube, identity("keep", namespace, rules=[READ_CONFIGMAPS]))
    stamp = _stamp(made)
    assert stamp and parse_stamp(stamp).username == "admin"
    path = f"/metadata/annotations/{REQUESTER_ANNOTATION.replace('/', '~1')}"
    kube.request(
        "PATCH",
        path_for("AppIdentity", namespace, "keep"),
        body=[{"op": "remove", "path": path}],
        content_type="application/json-patch+json",
    )
    assert _stamp(kube.get("AppIdentity", namespace, "keep")) == stamp


def test_the_operators_own_writes_never_become_the_requester(
    kube: Kube, operator: Any, namespace: str
) -> None:
    made = create(kube, identity("mine", namespace, rules=[READ_CONFIGMAPS]))
    ready = wait_ready(kube, namespace, "mine", timeout=90)
    # The operator wrote its finalizer and status in between; the requester is still the admin.
    assert "appidentity.dev/finalizer" in ready["metadata"].get("finalizers", [])
    assert _stamp(ready) == _stamp(made)


# --- the webhook ------------------------------------------------------------------------------


@pytest.fixture
def webhook(crd_installed: RequesterWebhook | None) -> Iterator[RequesterWebhook]:
    """The session's webhook replicas; whatever a test stops is running again afterwards."""
    if crd_installed is None:
        pytest.skip("the requester is recorded by the MutatingAdmissionPolicy here")
    yield crd_installed
    missing = 2 - len(crd_installed.replicas)
    for _ in range(max(missing, 0)):
        crd_installed.start_replica()


def _spec_writes(
    kube: Http, namespace: str, name: str, seconds: float, refused: list[str]
) -> threading.Thread:
    """A writer that changes the spec (so every write goes through the webhook) for `seconds`."""

    def run() -> None:
        verbs = (["get"], ["get", "list"])
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            rule = {**READ_CONFIGMAPS, "verbs": verbs[i % 2]}
            try:
                merge_patch(kube, "AppIdentity", namespace, name, {"spec": {"rules": [rule]}})
            except ApiError as exc:
                refused.append(f"{exc.status} {exc.message}")
            i += 1
            time.sleep(0.05)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_replica_stopped_under_load_refuses_no_write(
    kube: Kube, webhook: RequesterWebhook, namespace: str
) -> None:
    """Stopped as Kubernetes stops a Pod (SIGTERM: requests in flight are answered, new
    connections go to the other replica). A SIGKILLed replica cannot answer what it was
    handling; the API server then reports that one write as failed."""
    create(kube, identity("busy", namespace, rules=[READ_CONFIGMAPS]))
    refused: list[str] = []
    writer = _spec_writes(kube, namespace, "busy", 8, refused)
    time.sleep(2)
    webhook.stop_replica(webhook.replicas[0], signal.SIGTERM)
    writer.join()
    assert refused == []
    assert _stamp(kube.get("AppIdentity", namespace, "busy"))


def test_with_the_webhook_down_spec_writes_are_refused_and_nothing_else(
    kube: Kube, webhook: RequesterWebhook, namespace: str
) -> None:
    create(kube, identity("present", namespace, rules=[READ_CONFIGMAPS]))
    webhook.stop()
    with pytest.raises(ApiError) as refused:
        create(kube, identity("absent", namespace, rules=[READ_CONFIGMAPS]))
    assert WEBHOOK_NAME in refused.value.message, refused.value.message
    # Metadata of an existing identity, deletion and everything else in the cluster go on.
    merge_patch(kube, "AppIdentity", namespace, "present", {"metadata": {"labels": {"a": "b"}}})
    kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        body={"metadata": {"name": "unaffected"}},
    )
    assert kube.delete("AppIdentity", namespace, "present")


def _served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_its_certificate_is_rotated_while_it_serves(
    kube: Kube, webhook: RequesterWebhook, namespace: str
) -> None:
    """Replicas whose certificates live 24 s renew them every 16 s; writes go on throughout."""
    webhook.stop()
    webhook.extra_args = ("--cert-seconds", "24", "--sync-seconds", "1")
    try:
        webhook.start()
        create(kube, identity("rotating", namespace, rules=[READ_CONFIGMAPS]))
        serials = {_served_serial(webhook.port)}
        refused: list[str] = []
        writer = _spec_writes(kube, namespace, "rotating", 40, refused)
        while writer.is_alive():
            serials.add(_served_serial(webhook.port))
            time.sleep(1)
        assert refused == []
        assert len(serials) >= 3, f"served certificates: {len(serials)}"
    finally:
        webhook.stop()
        webhook.extra_args = ()
