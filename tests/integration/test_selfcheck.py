"""The self-check against the real API server (SPEC section 3): what the minted token proves,
how excess privilege and RBAC growth are noticed, and that no token ever leaks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from appidentity.kube import Kube
from support import (
    REPO,
    Cluster,
    InClusterOperator,
    Operator,
    condition,
    create,
    events_for,
    identity,
    merge_patch,
    secret_token,
    wait_ready,
    wait_reason,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("operator")
READ_PODS = {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}


def run_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appidentity", *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_fresh_identity_becomes_ready_with_every_check_listed_and_passed(
    kube: Kube, cluster: Cluster, namespace: str
) -> None:
    create(
        kube,
        identity(
            "prover",
            namespace,
            rules=[READ_PODS],
            verification={"mustDeny": [{"verb": "delete", "resource": "pods"}]},
        ),
    )
    done = cluster.run_kubectl(
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        "-n",
        namespace,
        "appid/prover",
        check=False,
    )
    assert done.returncode == 0
    obj = kube.get("AppIdentity", namespace, "prover") or {}
    ver = obj["status"]["verification"]
    assert ver["authenticatedAs"] == f"system:serviceaccount:{namespace}:prover"
    # 2 resources x 2 verbs granted; the real list of pods is one more allowed check
    assert ver["allowedChecks"] == 5
    assert ver["deniedChecks"] >= 14
    assert ver["failed"] == [] and ver["excess"] == []
    assert obj["status"]["token"]["issuer"].startswith("https://")
    assert obj["status"]["token"]["keyID"]
    assert condition(obj, "AccessVerified")["reason"] == "AccessVerified"

    table = run_cli(cluster, "check", "prover", "-n", namespace)
    assert table.returncode == 0, table.stderr
    assert "delete pods in " + namespace in table.stdout
    assert "spec.verification.mustDeny[0]" in table.stdout
    assert "VERIFIED" in table.stdout.splitlines()[-1]
    missing = run_cli(cluster, "check", "absent", "-n", namespace)
    assert missing.returncode == 1
    assert f"AppIdentity {namespace}/absent not found" in missing.stderr


def test_rolebinding_granting_secrets_is_reported_as_excess_and_its_removal_restores_ready(
    kube: Kube, namespace: str
) -> None:
    create(kube, identity("guarded", namespace, rules=[READ_PODS]))
    wait_ready(kube, namespace, "guarded")
    create(
        kube,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "leaky", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    create(
        kube,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "leaky", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leaky"},
            "subjects": [{"kind": "ServiceAccount", "name": "guarded", "namespace": namespace}],
        },
    )
    obj = wait_reason(kube, namespace, "guarded", "ExcessPrivilege", timeout=45)
    excess = obj["status"]["verification"]["excess"]
    assert {
        "namespace": namespace,
        "verbs": ["list"],
        "apiGroups": [""],
        "resources": ["secrets"],
    } in excess
    assert "list secrets" in condition(obj, "AccessVerified")["message"]
    reasons = {e["reason"] for e in events_for(kube, namespace, "guarded")}
    assert {"ExcessPrivilege", "EffectiveRulesChanged"} <= reasons

    kube.delete("RoleBinding", namespace, "leaky")
    wait_ready(kube, namespace, "guarded", timeout=45)


def test_a_token_the_api_server_refuses_is_token_rejected_and_stalled_until_rotated(
    kube: Kube, cluster: Cluster, namespace: str
) -> None:
    """A Legacy token (never minted again by time) replaced in its Secret by one whose
    signature does not verify: the API server refuses it, and that is a verdict, not a retry."""
    name = "refused"
    create(kube, identity(name, namespace, rules=[READ_PODS], token={"type": "Legacy"}))
    wait_ready(kube, namespace, name)
    real = secret_token(kube, namespace, f"{name}-token")
    assert real is not None
    head, claims, signature = real.value.split(".")
    forged = ".".join([head, claims, signature[::-1]])
    encoded = base64.b64encode(forged.encode()).decode()
    merge_patch(kube, "Secret", namespace, f"{name}-token", {"data": {"token": encoded}})
    # Secrets are not watched: a new generation makes the next reconcile read it at once.
    patch = {"spec": {"verification": {"intervalSeconds": 900}}}
    merge_patch(kube, "AppIdentity", namespace, name, patch)

    obj = wait_reason(kube, namespace, name, "TokenRejected", type_="AccessVerified")
    assert "the token was refused: HTTP 401" in condition(obj, "AccessVerified")["message"]
    assert condition(obj, "Stalled")["reason"] == "TokenRejected"
    assert "Reconciling" not in {c["type"] for c in obj["status"]["conditions"]}

    rotated = run_cli(cluster, "rotate", name, "-n", namespace)  # the remedy
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert condition(wait_ready(kube, namespace, name), "AccessVerified")["status"] == "True"


@pytest.fixture
def aggregated_into_view(kube: Kube) -> Iterator[dict[str, Any]]:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": "appid-test-widgets",
            "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
        },
        "rules": [
            {
                "apiGroups": ["widgets.example.com"],
                "resources": ["widgets"],
                "verbs": ["get", "list"],
            }
        ],
    }
    yield role
    kube.delete("ClusterRole", None, "appid-test-widgets")


def test_growth_of_an_aggregated_cluster_role_is_noticed(
    kube: Kube, namespace: str, aggregated_into_view: dict[str, Any]
) -> None:
    create(kube, identity("viewer", namespace, clusterRoles=["view"]))
    before = wait_ready(kube, namespace, "viewer")["status"]["verification"]["rulesHash"]
    create(kube, aggregated_into_view)

    def grown() -> bool:
        obj = kube.get("AppIdentity", namespace, "viewer") or {}
        return obj.get("status", {}).get("verification", {}).get("rulesHash") not in (None, before)

    wait_until(grown, 45, "the identity to notice view's new rules")
    reasons = {e["reason"] for e in events_for(kube, namespace, "viewer")}
    assert "EffectiveRulesChanged" in reasons
    wait_ready(kube, namespace, "viewer")


def test_metrics_report_each_identity(
    kube: Kube, namespace: str, operator: Operator | InClusterOperator
) -> None:
    create(kube, identity("metered", namespace, rules=[READ_PODS]))
    wait_ready(kube, namespace, "metered")

    def exported() -> str | None:
        text = operator.metrics()
        line = f'appidentity_verified{{name="metered",namespace="{namespace}"}} 1.0'
        return text if line in text else None

    text = wait_until(exported, 20, "the verified gauge")
    for name in (
        "appidentity_reconciles_total",
        "appidentity_reconcile_duration_seconds",
        "appidentity_excess_rules",
        "appidentity_token_expiry_seconds",
    ):
        assert name in text


def _every_token(kube: Kube) -> list[str]:
    found = []
    for secret in kube.list_objects(
        "Secret", None, "app.kubernetes.io/managed-by=appidentity-operator"
    ):
        raw = (secret.get("data") or {}).get("token")
        if raw:
            found.append(base64.b64decode(raw).decode())
    return found


def test_no_token_appears_in_logs_events_status_or_metrics(
    kube: Kube, namespace: str, operator: Operator | InClusterOperator
) -> None:
    create(kube, identity("secretive", namespace, rules=[READ_PODS], token={"kubeconfig": True}))
    wait_ready(kube, namespace, "secretive")
    tokens = _every_token(kube)
    assert len(tokens) >= 1
    # The signature is the secret part; a header or payload alone would not authenticate.
    needles = tokens + [t.rsplit(".", 1)[-1] for t in tokens]
    events = kube.request("GET", "/api/v1/events").get("items", [])
    statuses = [o.get("status") for o in kube.list_objects("AppIdentity")]
    metrics = operator.metrics()
    haystacks = {
        "operator log": operator.log(),
        "events": json.dumps(events),
        "status": json.dumps(statuses),
        "metrics": metrics,
    }
    leaks = [where for where, text in haystacks.items() if any(n in text for n in needles)]
    assert leaks == [], "a token appeared in: " + ", ".join(leaks)
