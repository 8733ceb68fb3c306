"""The operator running with its own ServiceAccount from deploy/ (never admin credentials): it
provisions and verifies within its grantable ceiling, and the API server itself stops it from
granting beyond that (SPEC section 4)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from appidentity.kube import Kube
from support import (
    REPO,
    Cluster,
    Operator,
    condition,
    create,
    events_for,
    identity,
    token_kubeconfig,
    wait_ready,
    wait_reason,
    wait_until,
)

SA_NAMESPACE = "appidentity-system"
SA_NAME = "appidentity-operator"


def _own_kubeconfig(kube: Kube, cluster: Cluster, path: Path) -> Path:
    response = kube.request_token(SA_NAMESPACE, SA_NAME, 7200, [])
    return token_kubeconfig(
        cluster.server, cluster.ca_file, response["status"]["token"], SA_NAME, path
    )


@pytest.fixture(scope="module")
def own_sa_operator(
    kube: Kube, cluster: Cluster, operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    if not isinstance(operator, Operator):
        pytest.skip("the in-cluster operator already runs as its own ServiceAccount")
    for name in ("serviceaccount.yaml", "rbac.yaml", "grantable.yaml"):
        cluster.run_kubectl("apply", "-f", str(REPO / "deploy" / name))
    wait_until(
        lambda: (kube.get("ClusterRole", None, "appidentity-operator-grantable") or {}).get(
            "rules"
        ),
        30,
        "the grantable ceiling to aggregate",
    )
    workdir = tmp_path_factory.mktemp("own-sa")
    own = Operator(
        cluster,
        workdir,
        workdir / "operator.log",
        kubeconfig=_own_kubeconfig(kube, cluster, workdir / "operator.kubeconfig"),
    )
    operator.stop()
    own.start()
    try:
        yield own
    finally:
        own.stop()
        operator.start()


def test_operator_with_its_own_service_account_provisions_and_verifies_within_the_ceiling(
    kube: Kube, namespace: str, own_sa_operator: Operator
) -> None:
    rules = [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}]
    create(kube, identity("within", namespace, rules=rules, clusterRoles=["view"]))
    obj = wait_ready(kube, namespace, "within")
    assert obj["status"]["verification"]["failed"] == []
    # The operator's own RBAC never refused it (other 403s, e.g. a namespace being deleted by
    # an earlier test, are not about its permissions).
    # The log is JSON lines, so the quote before "cannot" may be escaped.
    denied = re.compile(rf'system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}\\?" cannot')
    assert not denied.search(own_sa_operator.log())


def test_a_grant_beyond_the_ceiling_is_refused_by_the_api_server_and_reported(
    kube: Kube, namespace: str, own_sa_operator: Operator
) -> None:
    rules = [
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "verbs": ["get", "list"],
        }
    ]
    create(kube, identity("beyond", namespace, rules=rules))
    obj = wait_reason(kube, namespace, "beyond", "ApplyRefused", type_="Provisioned")
    message = condition(obj, "Provisioned")["message"]
    assert f"Role {namespace}/beyond" in message
    assert "not currently held" in message  # the API server's RBAC escalation check
    assert kube.get("Role", namespace, "beyond") is None
    assert kube.get("RoleBinding", namespace, "beyond") is None
    assert "ApplyRefused" in {e["reason"] for e in events_for(kube, namespace, "beyond")}


def test_cluster_admin_is_refused(kube: Kube, namespace: str, own_sa_operator: Operator) -> None:
    create(kube, identity("greedy", namespace, clusterRoles=["cluster-admin"]))
    obj = wait_reason(kube, namespace, "greedy", "PolicyViolation", type_="Provisioned")
    assert "spec.clusterRoles[0]" in condition(obj, "Provisioned")["message"]
    assert kube.get("RoleBinding", namespace, "greedy:cluster-admin") is None
    assert kube.get("ServiceAccount", namespace, "greedy") is None
