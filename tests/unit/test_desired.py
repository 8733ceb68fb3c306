"""desired.py: the manifests one Identity should produce, built without a cluster."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from appidentity.desired import (
    TokenMaterial,
    cluster_object_name,
    cluster_role,
    cluster_role_binding,
    consents,
    desired_state,
    grant_base_name,
    is_subset,
    kubeconfig,
    object_key,
    render,
    role,
    role_binding,
    service_account,
    token_secret,
)
from appidentity.model import Identity

from .conftest import POD_READER, IdentityFactory

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SERVER = "https://10.0.0.1:6443"
MATERIAL = TokenMaterial(token=TOKEN, expires_at="2026-12-01T01:00:00Z", ca_crt=CA, server=SERVER)
LABELS = {
    "app.kubernetes.io/managed-by": "appidentity-operator",
    "appidentity.dev/identity": "team-a.app",
}
OWNER = [
    {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "name": "app",
        "uid": "uid-1234",
        "controller": True,
        "blockOwnerDeletion": True,
    }
]
CM_WRITER = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"]}
NODES = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def full_identity(make_identity: IdentityFactory) -> Identity:
    return make_identity(
        {
            "rules": [POD_READER],
            "clusterRoles": ["view"],
            "namespaces": [
                {"name": "team-b", "rules": [CM_WRITER], "clusterRoles": ["view", "edit"]},
                {"name": "team-c", "clusterRoles": ["view"]},
            ],
            "clusterRules": [NODES],
        },
        name="app",
        namespace="team-a",
    )


def kinds_and_names(objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [object_key(o) for o in objects]


# --- ServiceAccount ---------------------------------------------------------------------------


def test_service_account_defaults(make_identity: IdentityFactory) -> None:
    assert service_account(make_identity()) == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "app",
            "namespace": "team-a",
            "labels": LABELS,
            "ownerReferences": OWNER,
        },
        "automountServiceAccountToken": False,
    }


def test_service_account_carries_user_labels_and_annotations(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity(
        {
            "rules": [POD_READER],
            "serviceAccount": {
                "name": "reader",
                "automountToken": True,
                "labels": {"team": "billing", "appidentity.dev/identity": "spoofed"},
                "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"},
            },
        }
    )
    sa = service_account(identity)
    assert sa["metadata"]["name"] == "reader"
    assert sa["metadata"]["labels"] == {"team": "billing", **LABELS}
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}
    assert sa["automountServiceAccountToken"] is True


# --- token Secret -----------------------------------------------------------------------------


def test_bound_secret_without_material_is_empty_opaque(make_identity: IdentityFactory) -> None:
    assert token_secret(make_identity()) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "app-token",
            "namespace": "team-a",
            "labels": LABELS,
            "ownerReferences": OWNER,
        },
        "type": "Opaque",
    }


def test_bound_secret_with_material_holds_every_key(make_identity: IdentityFactory) -> None:
    secret = token_secret(make_identity(), MATERIAL)
    data = secret["data"]
    assert secret["type"] == "Opaque"
    assert sorted(data) == ["ca.crt", "expiresAt", "kubeconfig", "namespace", "token"]
    assert unb64(data["token"]) == TOKEN
    assert base64.b64decode(data["ca.crt"]) == CA
    assert unb64(data["namespace"]) == "team-a"
    assert unb64(data["expiresAt"]) == "2026-12-01T01:00:00Z"
    config = yaml.safe_load(unb64(data["kubeconfig"]))
    assert config["users"][0]["user"]["token"] == TOKEN


def test_bound_secret_leaves_kubeconfig_out_when_not_asked(make_identity: IdentityFactory) -> None:
    identity = make_identity({"rules": [POD_READER], "token": {"kubeconfig": False}})
    assert sorted(token_secret(identity, MATERIAL)["data"]) == [
        "ca.crt",
        "expiresAt",
        "namespace",
        "token",
    ]


LEGACY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.bGVnYWN5.c2ln"


@pytest.mark.parametrize(
    ("material", "legacy_token"),
    [(None, None), (MATERIAL, None), (None, LEGACY_TOKEN)],
    ids=["nothing", "material-only", "token-only"],
)
def test_legacy_secret_is_left_for_the_token_controller(
    make_identity: IdentityFactory, material: TokenMaterial | None, legacy_token: str | None
) -> None:
    identity = make_identity(
        {"rules": [POD_READER], "token": {"type": "Legacy", "secretName": "legacy-creds"}}
    )
    assert token_secret(identity, material, legacy_token) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "legacy-creds",
            "namespace": "team-a",
            "labels": LABELS,
            "ownerReferences": OWNER,
            "annotations": {"kubernetes.io/service-account.name": "app"},
        },
        "type": "kubernetes.io/service-account-token",
    }


def test_legacy_secret_gets_only_a_kubeconfig_built_from_the_controller_token(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity({"rules": [POD_READER], "token": {"type": "Legacy"}})
    secret = token_secret(identity, MATERIAL, LEGACY_TOKEN)
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert list(secret["data"]) == ["kubeconfig"]
    assert unb64(secret["data"]["kubeconfig"]) == kubeconfig(identity, SERVER, CA, LEGACY_TOKEN)
    assert TOKEN not in unb64(secret["data"]["kubeconfig"])


def test_legacy_secret_without_kubeconfig_asked_has_no_data(make_identity: IdentityFactory) -> None:
    identity = make_identity(
        {"rules": [POD_READER], "token": {"type": "Legacy", "kubeconfig": False}}
    )
    assert "data" not in token_secret(identity, MATERIAL, LEGACY_TOKEN)


def test_token_material_repr_hides_the_token() -> None:
    assert TOKEN not in repr(MATERIAL)


# --- kubeconfig -------------------------------------------------------------------------------


def test_kubeconfig_is_valid_yaml_with_server_ca_token_and_namespace(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity({"rules": [POD_READER], "serviceAccount": {"name": "reader"}})
    config = yaml.safe_load(kubeconfig(identity, SERVER, CA, TOKEN))
    assert config == {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "cluster",
                "cluster": {"server": SERVER, "certificate-authority-data": b64(CA)},
            }
        ],
        "users": [{"name": "reader", "user": {"token": TOKEN}}],
        "contexts": [
            {
                "name": "reader",
                "context": {"cluster": "cluster", "user": "reader", "namespace": "team-a"},
            }
        ],
        "current-context": "reader",
    }


# --- Roles and bindings ---------------------------------------------------------------------------


def test_role_lists_the_rules_in_k8s_form(make_identity: IdentityFactory) -> None:
    identity = make_identity()
    rules = identity.spec.rules
    assert role(identity, "app", "team-a", rules) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": "app",
            "namespace": "team-a",
            "labels": LABELS,
            "ownerReferences": OWNER,
        },
        "rules": [{"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"]}],
    }


def test_role_binding_binds_the_service_account(make_identity: IdentityFactory) -> None:
    identity = make_identity({"rules": [POD_READER], "serviceAccount": {"name": "reader"}})
    binding = role_binding(identity, "team-a.app:view", "team-b", "ClusterRole", "view")
    assert binding == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "team-a.app:view", "namespace": "team-b", "labels": LABELS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "team-a"}],
    }


def test_cluster_objects_are_named_after_namespace_and_name(make_identity: IdentityFactory) -> None:
    identity = make_identity({"clusterRules": [NODES]}, name="app", namespace="team-a")
    assert cluster_object_name(identity) == "appidentity:team-a:app"
    assert cluster_role(identity) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "appidentity:team-a:app", "labels": LABELS},
        "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["nodes"]}],
    }
    assert cluster_role_binding(identity) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "appidentity:team-a:app", "labels": LABELS},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "appidentity:team-a:app",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "team-a"}],
    }


def test_grant_base_name_is_plain_at_home_and_qualified_elsewhere(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity(name="app", namespace="team-a")
    assert grant_base_name(identity, "team-a") == "app"
    assert grant_base_name(identity, "team-b") == "team-a.app"


# --- desired_state -------------------------------------------------------------------------------


def test_desired_state_lists_everything_in_apply_order(make_identity: IdentityFactory) -> None:
    desired = desired_state(full_identity(make_identity), {"team-b", "team-c"}, active=True)
    assert kinds_and_names(desired.objects) == [
        ("ServiceAccount", "team-a", "app"),
        ("Role", "team-a", "app"),
        ("RoleBinding", "team-a", "app"),
        ("RoleBinding", "team-a", "app:view"),
        ("Role", "team-b", "team-a.app"),
        ("RoleBinding", "team-b", "team-a.app"),
        ("RoleBinding", "team-b", "team-a.app:view"),
        ("RoleBinding", "team-b", "team-a.app:edit"),
        ("RoleBinding", "team-c", "team-a.app:view"),
        ("ClusterRole", "", "appidentity:team-a:app"),
        ("ClusterRoleBinding", "", "appidentity:team-a:app"),
    ]
    assert desired.refused_namespaces == []
    assert desired.active is True
    assert desired.keys() == set(kinds_and_names(desired.objects))


def test_bindings_point_at_the_right_roles(make_identity: IdentityFactory) -> None:
    desired = desired_state(full_identity(make_identity), {"team-b", "team-c"}, active=True)
    refs = {
        object_key(o): (o["roleRef"]["kind"], o["roleRef"]["name"])
        for o in desired.objects
        if "roleRef" in o
    }
    assert refs == {
        ("RoleBinding", "team-a", "app"): ("Role", "app"),
        ("RoleBinding", "team-a", "app:view"): ("ClusterRole", "view"),
        ("RoleBinding", "team-b", "team-a.app"): ("Role", "team-a.app"),
        ("RoleBinding", "team-b", "team-a.app:view"): ("ClusterRole", "view"),
        ("RoleBinding", "team-b", "team-a.app:edit"): ("ClusterRole", "edit"),
        ("RoleBinding", "team-c", "team-a.app:view"): ("ClusterRole", "view"),
        ("ClusterRoleBinding", "", "appidentity:team-a:app"): (
            "ClusterRole",
            "appidentity:team-a:app",
        ),
    }


def test_namespaces_without_consent_get_nothing_and_are_reported(
    make_identity: IdentityFactory,
) -> None:
    desired = desired_state(full_identity(make_identity), {"team-c"}, active=True)
    assert [k for k in kinds_and_names(desired.objects) if k[1] == "team-b"] == []
    present = desired.keys()  # Desired.keys(): the (kind, namespace, name) of every object
    assert ("RoleBinding", "team-c", "team-a.app:view") in present
    assert desired.refused_namespaces == ["team-b"]


def test_no_consent_anywhere_refuses_every_other_namespace(make_identity: IdentityFactory) -> None:
    desired = desired_state(full_identity(make_identity), set(), active=True)
    assert desired.refused_namespaces == ["team-b", "team-c"]
    present = desired.keys()
    assert {namespace for _, namespace, _ in present} == {"team-a", ""}


def test_inactive_schedule_keeps_roles_but_drops_every_binding(
    make_identity: IdentityFactory,
) -> None:
    desired = desired_state(full_identity(make_identity), {"team-b", "team-c"}, active=False)
    assert kinds_and_names(desired.objects) == [
        ("ServiceAccount", "team-a", "app"),
        ("Role", "team-a", "app"),
        ("Role", "team-b", "team-a.app"),
        ("ClusterRole", "", "appidentity:team-a:app"),
    ]
    assert desired.active is False


def test_only_cluster_roles_means_no_role(make_identity: IdentityFactory) -> None:
    desired = desired_state(make_identity({"clusterRoles": ["view"]}), set(), active=True)
    assert kinds_and_names(desired.objects) == [
        ("ServiceAccount", "team-a", "app"),
        ("RoleBinding", "team-a", "app:view"),
    ]


def test_every_object_carries_both_labels(make_identity: IdentityFactory) -> None:
    identity = full_identity(make_identity)
    objects = [*desired_state(identity, {"team-b", "team-c"}, True).objects, token_secret(identity)]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "appidentity-operator", object_key(obj)
        assert labels["appidentity.dev/identity"] == "team-a.app", object_key(obj)


def test_only_same_namespace_objects_get_an_owner_reference(
    make_identity: IdentityFactory,
) -> None:
    identity = full_identity(make_identity)
    objects = [*desired_state(identity, {"team-b", "team-c"}, True).objects, token_secret(identity)]
    owned = {object_key(o) for o in objects if "ownerReferences" in o["metadata"]}
    assert owned == {
        ("ServiceAccount", "team-a", "app"),
        ("Secret", "team-a", "app-token"),
        ("Role", "team-a", "app"),
        ("RoleBinding", "team-a", "app"),
        ("RoleBinding", "team-a", "app:view"),
    }
    for obj in objects:
        if object_key(obj) in owned:
            assert obj["metadata"]["ownerReferences"] == OWNER


# --- consent annotation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("team-a", True),
        ("team-x,team-a", True),
        (" team-x , team-a ", True),
        ("team-x", False),
        ("team-ab", False),
        ("team", False),
        ("", False),
        ("*", False),  # no wildcard consent: a namespace names whom it trusts
    ],
)
def test_consent_annotation_is_a_comma_list(annotation: str, expected: bool) -> None:
    annotations = {"appidentity.dev/accept-grants-from": annotation}
    assert consents(annotations, "team-a") is expected


def test_no_consent_annotation_means_no_consent() -> None:
    assert consents({"other": "team-a"}, "team-a") is False


# --- is_subset ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "actual", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": 1, "b": 2}, {"a": 1}, False),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, True),
        ({"a": {"b": 1}}, {"a": {"b": 2}}, False),
        ({"a": [1, 2]}, {"a": [1, 2]}, True),
        ({"a": [1, 2]}, {"a": [2, 1]}, False),
        ({"a": [1]}, {"a": [1, 2]}, False),
        ({"a": [{"x": 1}]}, {"a": [{"x": 1, "y": 2}]}, True),
        ({"a": {}}, {"a": "text"}, False),
        ({"a": []}, {"a": {}}, False),
        ({}, {"anything": 1}, True),
        ("x", "x", True),
        ("x", "y", False),
    ],
)
def test_is_subset_semantics(desired: Any, actual: Any, expected: bool) -> None:
    assert is_subset(desired, actual) is expected


def test_built_objects_are_subsets_of_themselves_with_server_fields(
    make_identity: IdentityFactory,
) -> None:
    sa = service_account(make_identity())
    live = {
        **sa,
        "metadata": {**sa["metadata"], "uid": "x", "resourceVersion": "7"},
        "secrets": [],
    }
    assert is_subset(sa, live) is True
    edited = {**live, "automountServiceAccountToken": True}
    assert is_subset(sa, edited) is False


# --- render -------------------------------------------------------------------------------------


def test_render_assumes_consent_and_an_active_schedule(make_identity: IdentityFactory) -> None:
    identity = full_identity(make_identity)
    rendered = render(identity)
    assert kinds_and_names(rendered) == [
        ("ServiceAccount", "team-a", "app"),
        ("Secret", "team-a", "app-token"),
        *kinds_and_names(desired_state(identity, {"team-b", "team-c"}, True).objects[1:]),
    ]


def test_render_never_contains_token_data(make_identity: IdentityFactory) -> None:
    rendered = render(full_identity(make_identity))
    secret = rendered[1]
    assert "data" not in secret
    assert "token:" not in yaml.safe_dump_all(rendered).replace("-token", "")


def test_render_is_deterministic(make_identity: IdentityFactory) -> None:
    first = yaml.safe_dump_all(render(full_identity(make_identity)))
    second = yaml.safe_dump_all(render(full_identity(make_identity)))
    assert first == second
