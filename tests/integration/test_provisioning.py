"""Provisioning against the real API server: objects, tokens, kubeconfigs, drift, consent,
conflicts, schedule and deletion (SPEC section 2)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from appidentity.kube import Kube
from appidentity.model import identity_key
from kubernetes import client
from support import (
    CLUSTER_RULES_NAMESPACE,
    READ_CONFIGMAPS,
    Cluster,
    InClusterOperator,
    Operator,
    Token,
    condition,
    conflicting_identity,
    create,
    identity,
    merge_patch,
    wait_ready,
    wait_reason,
    wait_until,
    whoami_status,
)

pytestmark = pytest.mark.usefixtures("operator")
LABELS = {"app.kubernetes.io/managed-by": "appidentity-operator"}


def secret_data(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    secret = kube.get("Secret", namespace, name) or {}
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def digest(token: Token) -> str:
    return hashlib.sha256(token.value.encode()).hexdigest()


def kubectl_as(cluster: Cluster, kubeconfig: str, tmp_path: Any, *args: str) -> int:
    path = tmp_path / "identity.kubeconfig"
    path.write_text(kubeconfig)
    return cluster.run_kubectl("--kubeconfig", str(path), *args, check=False).returncode


def test_bound_identity_creates_labelled_owned_objects_and_a_working_kubeconfig(
    kube: Kube, cluster: Cluster, namespace: str, tmp_path: Any
) -> None:
    create(kube, identity("reader", namespace, rules=[READ_CONFIGMAPS], clusterRoles=["view"]))
    obj = wait_ready(kube, namespace, "reader")
    key = identity_key(namespace, "reader")

    sa = kube.get("ServiceAccount", namespace, "reader")
    assert sa is not None
    assert sa["automountServiceAccountToken"] is False
    assert sa["metadata"]["labels"] == {**LABELS, "appidentity.dev/identity": key}
    owner = sa["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "AppIdentity",
        obj["metadata"]["uid"],
        True,
    )
    role = kube.get("Role", namespace, "reader")
    assert role is not None and role["rules"] == [READ_CONFIGMAPS]
    binding = kube.get("RoleBinding", namespace, "reader")
    assert binding is not None and binding["roleRef"]["name"] == "reader"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "reader", "namespace": namespace}
    ]
    view = kube.get("RoleBinding", namespace, "reader:view")
    assert view is not None and view["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "view",
    }

    secret = kube.get("Secret", namespace, "reader-token")
    assert secret is not None and secret["type"] == "Opaque"
    data = secret_data(kube, namespace, "reader-token")
    assert set(data) == {"token", "ca.crt", "namespace", "expiresAt", "kubeconfig"}
    assert data["namespace"] == namespace
    assert obj["status"]["token"]["expiresAt"] == data["expiresAt"]
    assert obj["status"]["subject"] == f"system:serviceaccount:{namespace}:reader"
    # kopf keeps no state on the object (no diff-base annotation); the finalizer is its only
    # mark, besides admission's record of the requester.
    assert set(obj["metadata"].get("annotations") or {}) == {"appidentity.dev/requester"}
    assert obj["metadata"]["finalizers"] == ["appidentity.dev/finalizer"]

    assert kubectl_as(cluster, data["kubeconfig"], tmp_path, "get", "configmaps") == 0
    assert kubectl_as(cluster, data["kubeconfig"], tmp_path, "get", "secrets") != 0


def test_legacy_identity_gets_a_controller_filled_token_that_works(
    kube: Kube, cluster: Cluster, namespace: str, tmp_path: Any
) -> None:
    create(kube, identity("legacy", namespace, rules=[READ_CONFIGMAPS], token={"type": "Legacy"}))
    obj = wait_ready(kube, namespace, "legacy")
    secret = kube.get("Secret", namespace, "legacy-token")
    assert secret is not None
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "legacy"
    data = secret_data(kube, namespace, "legacy-token")
    assert {"token", "ca.crt", "namespace", "kubeconfig"} <= set(data)
    assert obj["status"]["token"]["expiresAt"] == "never"
    assert kubectl_as(cluster, data["kubeconfig"], tmp_path, "get", "configmaps") == 0


def test_deleted_role_and_edited_binding_are_restored(kube: Kube, namespace: str) -> None:
    create(kube, identity("drift", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "drift")
    kube.delete("Role", namespace, "drift")
    wait_until(lambda: kube.get("Role", namespace, "drift"), 15, "the Role to come back")

    merge_patch(
        kube,
        "RoleBinding",
        namespace,
        "drift",
        {"subjects": [{"kind": "ServiceAccount", "name": "someone-else", "namespace": namespace}]},
    )

    def restored() -> bool:
        found = kube.get("RoleBinding", namespace, "drift") or {}
        return [s["name"] for s in found.get("subjects", [])] == ["drift"]

    wait_until(restored, 15, "the RoleBinding's subjects to be restored")
    wait_ready(kube, namespace, "drift")


def test_deleted_secret_revokes_the_old_token_and_a_new_one_is_issued(
    kube: Kube, namespace: str, token_api: Callable[[Token], client.ApiClient]
) -> None:
    create(kube, identity("rotate", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "rotate")
    old = Token(secret_data(kube, namespace, "rotate-token")["token"])
    assert whoami_status(token_api, old) == 200

    kube.delete("Secret", namespace, "rotate-token")

    def new_token() -> Token | None:
        raw = secret_data(kube, namespace, "rotate-token").get("token")
        return Token(raw) if raw and digest(Token(raw)) != digest(old) else None

    new = wait_until(new_token, 30, "a new token in a new Secret")
    # kube-apiserver caches a successful token authentication for up to 10 s.
    wait_until(lambda: whoami_status(token_api, old) == 401, 20, "the old token to be rejected")
    assert whoami_status(token_api, new) == 200
    wait_ready(kube, namespace, "rotate")


def test_restarted_operator_repairs_what_changed_while_it_was_down(
    kube: Kube, namespace: str, operator: Operator | InClusterOperator
) -> None:
    create(kube, identity("restart", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "restart")
    operator.stop()
    try:
        kube.delete("Role", namespace, "restart")
        kube.delete("RoleBinding", namespace, "restart")
    finally:
        operator.start()
    wait_until(lambda: kube.get("Role", namespace, "restart"), 30, "the Role after restart")
    wait_until(lambda: kube.get("RoleBinding", namespace, "restart"), 30, "the RoleBinding")
    wait_ready(kube, namespace, "restart")


def test_foreign_service_account_of_the_same_name_is_reported_and_untouched(
    kube: Kube, namespace: str
) -> None:
    conflicting_identity(kube, namespace, "taken")
    obj = wait_reason(kube, namespace, "taken", "Conflict", type_="Provisioned")
    assert "ServiceAccount" in condition(obj, "Provisioned")["message"]
    sa = kube.get("ServiceAccount", namespace, "taken") or {}
    assert "labels" not in sa["metadata"]
    assert "ownerReferences" not in sa["metadata"]
    assert kube.get("Role", namespace, "taken") is None


def test_a_foreign_token_secret_leaves_nothing_behind(kube: Kube, namespace: str) -> None:
    """A new identity creates its children without reading first; the Secret comes last, so
    finding it taken means undoing the ServiceAccount, Role and RoleBinding just created."""
    create(
        kube,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "late-token", "namespace": namespace},
            "stringData": {"note": "someone else's"},
        },
    )
    create(kube, identity("late", namespace, rules=[READ_CONFIGMAPS]))
    obj = wait_reason(kube, namespace, "late", "Conflict", type_="Provisioned")
    assert "Secret" in condition(obj, "Provisioned")["message"]
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        wait_until(lambda k=kind: kube.get(k, namespace, "late") is None, 30, f"{kind} undone")
    secret = kube.get("Secret", namespace, "late-token") or {}
    assert "labels" not in secret["metadata"]
    assert secret["data"] == {"note": "c29tZW9uZSBlbHNlJ3M="}


def test_grants_in_another_namespace_need_its_consent(
    kube: Kube, namespace: str, make_namespace: Callable[[], str]
) -> None:
    other = make_namespace()
    grant = {"name": other, "rules": [READ_CONFIGMAPS]}
    create(kube, identity("consent", namespace, rules=[READ_CONFIGMAPS], namespaces=[grant]))
    obj = wait_reason(kube, namespace, "consent", "ConsentMissing", type_="Provisioned")
    assert other in condition(obj, "Provisioned")["message"]
    assert kube.list_objects("Role", other) == []

    merge_patch(
        kube,
        "Namespace",
        None,
        other,
        {"metadata": {"annotations": {"appidentity.dev/accept-grants-from": namespace}}},
    )
    obj = wait_ready(kube, namespace, "consent")
    assert kube.get("Role", other, f"{namespace}.consent") is not None
    role_binding = kube.get("RoleBinding", other, f"{namespace}.consent") or {}
    assert "ownerReferences" not in role_binding["metadata"]
    assert obj["status"]["verification"]["failed"] == []


def test_deleting_an_identity_removes_everything_in_every_namespace_and_cluster_scope(
    kube: Kube, make_namespace: Callable[[], str]
) -> None:
    home = CLUSTER_RULES_NAMESPACE  # the test policy allows clusterRules here only
    other = make_namespace()
    merge_patch(
        kube,
        "Namespace",
        None,
        other,
        {"metadata": {"annotations": {"appidentity.dev/accept-grants-from": home}}},
    )
    name = "everything"
    create(
        kube,
        identity(
            name,
            home,
            rules=[READ_CONFIGMAPS],
            clusterRoles=["view"],
            namespaces=[{"name": other, "rules": [READ_CONFIGMAPS]}],
            clusterRules=[{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}],
        ),
    )
    wait_ready(kube, home, name)
    selector = f"appidentity.dev/identity={identity_key(home, name)}"
    kinds = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
    before = {k: len(kube.list_objects(k, None, selector)) for k in kinds}
    # Roles: home, the other namespace, and the token Secret's sentinel (test_token_signal).
    assert before == {"Role": 3, "RoleBinding": 3, "ClusterRole": 1, "ClusterRoleBinding": 1}

    kube.delete("AppIdentity", home, name)
    wait_until(lambda: kube.get("AppIdentity", home, name) is None, 30, "the finalizer to finish")
    assert {k: kube.list_objects(k, None, selector) for k in kinds} == {k: [] for k in kinds}
    assert kube.get("ServiceAccount", home, name) is None
    assert kube.get("Secret", home, f"{name}-token") is None


def test_dropping_a_grant_from_the_spec_removes_it(kube: Kube, namespace: str) -> None:
    create(kube, identity("shrink", namespace, rules=[READ_CONFIGMAPS], clusterRoles=["view"]))
    wait_ready(kube, namespace, "shrink")
    assert kube.get("RoleBinding", namespace, "shrink:view") is not None
    merge_patch(kube, "AppIdentity", namespace, "shrink", {"spec": {"clusterRoles": None}})
    wait_until(
        lambda: kube.get("RoleBinding", namespace, "shrink:view") is None,
        30,
        "the view binding to go",
    )
    wait_ready(kube, namespace, "shrink")


def test_schedule_keeps_bindings_and_token_away_until_not_before(
    kube: Kube, namespace: str
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    create(
        kube, identity("later", namespace, rules=[READ_CONFIGMAPS], schedule={"notBefore": later})
    )
    obj = wait_reason(kube, namespace, "later", "ScheduleInactive")
    assert later in condition(obj, "Ready")["message"]
    assert kube.get("Role", namespace, "later") is not None
    assert kube.get("RoleBinding", namespace, "later") is None
    assert kube.get("Secret", namespace, "later-token") is None

    earlier = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    merge_patch(
        kube, "AppIdentity", namespace, "later", {"spec": {"schedule": {"notBefore": earlier}}}
    )
    wait_ready(kube, namespace, "later")
    assert kube.get("RoleBinding", namespace, "later") is not None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"rules": [{"apiGroups": [""], "resources": ["pods"]}]}, "spec.rules[0].verbs"),
        (
            {
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["pods"],
                        "verbs": ["get"],
                        "nonResourceURLs": ["/healthz"],
                    }
                ]
            },
            "only spec.clusterRules may hold nonResourceURLs",
        ),
        (
            {"rules": [READ_CONFIGMAPS], "token": {"expirationSeconds": 60}},
            "spec.token.expirationSeconds",
        ),
        (
            {
                "rules": [READ_CONFIGMAPS],
                "schedule": {
                    "notBefore": "2026-12-02T00:00:00Z",
                    "expiresAt": "2026-12-01T00:00:00Z",
                },
            },
            "notBefore must be before schedule.expiresAt",
        ),
        ({"namespaces": [{"name": "other", "rules": []}]}, "set rules or clusterRoles"),
    ],
)
def test_invalid_spec_is_refused_at_admission_naming_the_field(
    kube: Kube, namespace: str, spec: dict[str, Any], message: str
) -> None:
    from appidentity.kube import ApiError

    with pytest.raises(ApiError) as refused:
        create(kube, identity("bad", namespace, **spec))
    assert refused.value.status == 422
    assert message in refused.value.message


def test_a_managed_binding_recreated_with_another_role_ref_is_replaced(
    kube: Kube, namespace: str, operator: Operator | InClusterOperator
) -> None:
    """roleRef is immutable, so repairing it means deleting and re-creating the binding."""
    create(kube, identity("reffed", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "reffed")
    binding = kube.get("RoleBinding", namespace, "reffed") or {}
    operator.stop()
    try:
        kube.delete("RoleBinding", namespace, "reffed")
        wait_until(lambda: kube.get("RoleBinding", namespace, "reffed") is None, 30, "deletion")
        create(
            kube,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {
                    "name": "reffed",
                    "namespace": namespace,
                    "labels": binding["metadata"]["labels"],
                },
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "edit",
                },
                "subjects": binding["subjects"],
            },
        )
    finally:
        operator.start()

    def restored() -> bool:
        found = kube.get("RoleBinding", namespace, "reffed") or {}
        return found.get("roleRef", {}).get("name") == "reffed"

    wait_until(restored, 30, "the binding to point at the identity's Role again")
    wait_ready(kube, namespace, "reffed")
