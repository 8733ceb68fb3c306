"""What the cheaper proof (issue 23, verify/decide.py) must still find: a grant that reaches
beyond its namespace. Neither case is excess privilege (the effective rules in the granted
namespace are exactly the grant), so only the boundary checks can tell: the ungranted namespace's
list, tried for real, and the cluster-wide list, which its refusal would otherwise answer."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from appidentity.kube import Kube
from support import condition, create, identity, wait_ready, wait_reason

pytestmark = pytest.mark.usefixtures("operator")
READ_CONFIGMAPS = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
RBAC = "rbac.authorization.k8s.io"


def failed_checks(obj: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (c["verb"], c["resource"], c["namespace"], c["got"])
        for c in obj["status"]["verification"]["failed"]
    }


@pytest.fixture
def cluster_objects(kube: Kube) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Creates cluster-scoped objects and deletes them after the test."""
    made: list[tuple[str, str]] = []

    def make(obj: dict[str, Any]) -> None:
        create(kube, obj)
        made.append((obj["kind"], obj["metadata"]["name"]))

    yield make
    for kind, name in reversed(made):
        kube.delete(kind, None, name)


def test_a_cluster_role_binding_repeating_the_grant_everywhere_fails_the_proof(
    kube: Kube, namespace: str, cluster_objects: Callable[[dict[str, Any]], None]
) -> None:
    create(kube, identity("everywhere", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "everywhere")
    name = f"appid-test-{uuid.uuid4().hex[:8]}"
    cluster_objects(
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        }
    )
    cluster_objects(
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "everywhere", "namespace": namespace}],
        }
    )
    obj = wait_reason(kube, namespace, "everywhere", "CheckFailed", timeout=45)
    assert {
        ("list", "configmaps", "kube-system", "allowed"),  # tried for real: HTTP 200
        ("list", "configmaps", "", "allowed"),  # cluster-wide: no refusal to answer it
    } <= failed_checks(obj)
    assert obj["status"]["verification"]["excess"] == []  # within the grant where it is read


def test_a_role_binding_in_another_namespace_fails_the_proof(kube: Kube, namespace: str) -> None:
    create(kube, identity("elsewhere", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "elsewhere")
    name = f"appid-test-{uuid.uuid4().hex[:8]}"
    binding = {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "kube-system"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "elsewhere", "namespace": namespace}],
    }
    create(kube, binding)
    try:
        obj = wait_reason(kube, namespace, "elsewhere", "CheckFailed", timeout=45)
        assert ("list", "configmaps", "kube-system", "allowed") in failed_checks(obj)
        message = condition(obj, "AccessVerified")["message"]
        assert "list configmaps in kube-system expected denied, got allowed" in message
    finally:
        kube.delete("RoleBinding", "kube-system", name)
    wait_ready(kube, namespace, "elsewhere", timeout=45)
