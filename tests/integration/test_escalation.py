"""Nobody can use the operator to grant what they could not grant themselves (SPEC section 4).

Requesters are ServiceAccounts with exactly the RBAC each case gives them; they write
AppIdentities with their own tokens, and admission stamps them as the requester. The operator
runs with deploy/'s RBAC (never the admin's credentials), so what these tests show is what a
real installation does.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from appidentity.escalation import REQUESTER_ANNOTATION, parse_stamp
from appidentity.kube import Http, Kube
from appidentity.rbac import requests_of
from support import (
    CLUSTER_RULES_NAMESPACE,
    TEST_POLICY_FILE,
    Token,
    condition,
    create,
    events_for,
    identity,
    merge_patch,
    wait_ready,
    wait_reason,
    wait_until,
)

RBAC = "rbac.authorization.k8s.io"
WRITE_IDENTITIES = {
    "apiGroups": ["appidentity.dev"],
    "resources": ["appidentities"],
    "verbs": ["get", "list", "watch", "create", "patch", "update"],
}
MINT_TOKENS = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
READ_SECRETS = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}
CREATE_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
DELETE_CONFIGMAPS = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"]}
GET_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
ALL_ON_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}
BIND_VIEW = {
    "apiGroups": [RBAC],
    "resources": ["clusterroles"],
    "verbs": ["bind"],
    "resourceNames": ["view"],
}

Rule = dict[str, Any]
RequesterFactory = Callable[..., Http]


@pytest.fixture(scope="module")
def own_sa_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's policy, with wildcards allowed: so that a wildcard is refused here by the
    requester check, not earlier by the policy."""
    policy = yaml.safe_load(TEST_POLICY_FILE.read_text())
    policy["allowWildcards"] = True
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(autouse=True)
def _operator(own_sa_operator: Any) -> None:
    """Every test here runs against the operator on deploy/'s RBAC."""


def _wait_allowed(kube: Kube, user: str, rule: dict[str, Any], namespace: str) -> None:
    """RBAC reaches the authorizer a moment after it is written: wait until the requester's
    rights are in effect, so a test never races its own set-up."""
    review = {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"]}
    for req in requests_of(rule, namespace):
        wait_until(partial(kube.subject_access_review, review, req), 30, f"{user}: {req}")


@pytest.fixture
def requester(
    kube: Kube, service_account_token: Callable[[str, str], Token]
) -> Iterator[RequesterFactory]:
    """Factory: a ServiceAccount `name` in `namespace` that may write AppIdentities there and
    holds `rules` there, `cluster_rules` cluster-wide, `cluster_roles` bound there, and
    `elsewhere` {namespace: rules}; returns a client that authenticates as it."""
    cleanup: list[tuple[str, str]] = []

    def make(
        namespace: str,
        name: str,
        rules: Sequence[Rule] = (),
        cluster_rules: Sequence[Rule] = (),
        cluster_roles: Sequence[str] = (),
        elsewhere: Mapping[str, Sequence[Rule]] | None = None,
    ) -> Http:
        user = f"system:serviceaccount:{namespace}:{name}"
        subjects = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        held = {namespace: [WRITE_IDENTITIES, *rules], **(elsewhere or {})}
        role = f"requester-{name}"
        for where, granted in held.items():
            create(kube, _doc("Role", role, where, rules=granted))
            ref = {"kind": "Role", "name": role, "apiGroup": RBAC}
            create(kube, _doc("RoleBinding", role, where, roleRef=ref, subjects=subjects))
        for cluster_role in cluster_roles:
            ref = {"kind": "ClusterRole", "name": cluster_role, "apiGroup": RBAC}
            binding = f"{role}-{cluster_role}"
            create(kube, _doc("RoleBinding", binding, namespace, roleRef=ref, subjects=subjects))
        if cluster_rules:
            wide = f"{role}-{uuid.uuid4().hex[:8]}"
            ref = {"kind": "ClusterRole", "name": wide, "apiGroup": RBAC}
            create(kube, _doc("ClusterRole", wide, None, rules=cluster_rules))
            create(kube, _doc("ClusterRoleBinding", wide, None, roleRef=ref, subjects=subjects))
            cleanup.extend([("ClusterRoleBinding", wide), ("ClusterRole", wide)])
        for where, granted in [*held.items(), ("", cluster_rules)]:
            for rule in granted:
                _wait_allowed(kube, user, rule, where)
        return kube.token_client(service_account_token(namespace, name).value)

    yield make
    for kind, name in cleanup:
        kube.delete(kind, None, name)


def _doc(kind: str, name: str, namespace: str | None, **fields: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": meta, **fields}


def _refusal(kube: Kube, namespace: str, name: str) -> str:
    obj = wait_reason(kube, namespace, name, "EscalationRefused", type_="Provisioned")
    assert condition(obj, "Ready")["reason"] == "EscalationRefused"
    return str(condition(obj, "Provisioned")["message"])


def _nothing_granted(kube: Kube, namespace: str, name: str) -> None:
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert kube.get(kind, namespace, name) is None, f"{kind} {name} was created"
    assert kube.get("Secret", namespace, f"{name}-token") is None


# --- the rule -------------------------------------------------------------------------------


def test_a_requester_gets_what_it_holds_and_nothing_it_does_not(
    kube: Kube, namespace: str, requester: RequesterFactory
) -> None:
    rules = [CREATE_PODS, DELETE_CONFIGMAPS]
    strong = requester(namespace, "strong", rules=[*rules, MINT_TOKENS])
    weak = requester(namespace, "weak", rules=[READ_SECRETS, MINT_TOKENS])
    create(strong, identity("deployer", namespace, rules=rules))
    create(weak, identity("sneaky", namespace, rules=rules))

    ready = wait_ready(kube, namespace, "deployer", timeout=90)
    assert ready["status"]["verification"]["failed"] == []
    role = kube.get("Role", namespace, "deployer")
    assert role is not None and {v for r in role["rules"] for v in r["verbs"]} == {
        "create",
        "delete",
    }

    message = _refusal(kube, namespace, "sneaky")
    who = f"system:serviceaccount:{namespace}:weak"
    assert f"spec.rules[0]: {who} may not create pods in {namespace}" in message
    assert f"spec.rules[1]: {who} may not delete configmaps in {namespace}" in message
    _nothing_granted(kube, namespace, "sneaky")
    events = [
        e for e in events_for(kube, namespace, "sneaky") if e["reason"] == "EscalationRefused"
    ]
    assert events and f"may not create pods in {namespace}" in events[0]["message"]


def test_the_token_itself_needs_the_right_to_mint_it(
    kube: Kube, namespace: str, requester: RequesterFactory
) -> None:
    holder = requester(namespace, "no-mint", rules=[GET_PODS])
    create(holder, identity("reader", namespace, rules=[GET_PODS]))
    message = _refusal(kube, namespace, "reader")
    who = f"system:serviceaccount:{namespace}:no-mint"
    assert message == (
        f"spec.token: {who} may not create serviceaccounts/token/reader in {namespace}"
    )
    _nothing_granted(kube, namespace, "reader")


def test_a_wildcard_is_asked_for_literally(
    kube: Kube, namespace: str, requester: RequesterFactory
) -> None:
    reader = requester(namespace, "reader", rules=[GET_PODS, MINT_TOKENS])
    create(reader, identity("greedy", namespace, rules=[ALL_ON_PODS]))
    assert f"may not * pods in {namespace}" in _refusal(kube, namespace, "greedy")
    _nothing_granted(kube, namespace, "greedy")


# --- ClusterRoles ---------------------------------------------------------------------------


def test_binding_a_cluster_role_needs_bind_on_it_or_all_its_rules(
    kube: Kube, namespace: str, requester: RequesterFactory
) -> None:
    neither = requester(namespace, "neither", rules=[MINT_TOKENS])
    binder = requester(namespace, "binder", rules=[BIND_VIEW, MINT_TOKENS])
    admin = requester(namespace, "admin", rules=[MINT_TOKENS], cluster_roles=["admin"])
    for client, name in ((neither, "by-neither"), (binder, "by-binder"), (admin, "by-admin")):
        create(client, identity(name, namespace, clusterRoles=["view"]))

    message = _refusal(kube, namespace, "by-neither")
    assert message.startswith(
        f"spec.clusterRoles[0]: system:serviceaccount:{namespace}:neither may not bind "
        "ClusterRole view and lacks some of its permissions: may not "
    )
    assert kube.get("RoleBinding", namespace, "by-neither:view") is None
    for name in ("by-binder", "by-admin"):
        wait_ready(kube, namespace, name, timeout=90)
        assert kube.get("RoleBinding", namespace, f"{name}:view") is not None


# --- other namespaces and cluster scope ------------------------------------------------------


def test_a_grant_in_a_consenting_namespace_needs_the_rights_there(
    kube: Kube, namespace: str, make_namespace: Callable[[], str], requester: RequesterFactory
) -> None:
    target = make_namespace()
    merge_patch(
        kube,
        "Namespace",
        None,
        target,
        {"metadata": {"annotations": {"appidentity.dev/accept-grants-from": namespace}}},
    )
    # It may create pods at home, but not in the target namespace.
    local = requester(namespace, "local", rules=[CREATE_PODS, MINT_TOKENS])
    spec = {"rules": [CREATE_PODS], "namespaces": [{"name": target, "rules": [CREATE_PODS]}]}
    create(local, identity("spread", namespace, **spec))
    message = _refusal(kube, namespace, "spread")
    who = f"system:serviceaccount:{namespace}:local"
    assert message == f"spec.namespaces[0].rules[0]: {who} may not create pods in {target}"
    _nothing_granted(kube, namespace, "spread")
    assert kube.get("Role", target, f"{namespace}.spread") is None

    # With the rights in the target namespace too, the same spec is granted.
    both = requester(
        namespace, "both", rules=[CREATE_PODS, MINT_TOKENS], elsewhere={target: [CREATE_PODS]}
    )
    create(both, identity("spread-ok", namespace, **spec))
    wait_ready(kube, namespace, "spread-ok", timeout=90)


def test_cluster_rules_need_the_rights_cluster_wide(
    kube: Kube, requester: RequesterFactory
) -> None:
    ns = CLUSTER_RULES_NAMESPACE
    suffix = uuid.uuid4().hex[:6]
    rules = [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]
    local = requester(ns, f"local-{suffix}", rules=[*rules, MINT_TOKENS])
    create(local, identity(f"wide-{suffix}", ns, clusterRules=rules))
    message = _refusal(kube, ns, f"wide-{suffix}")
    who = f"system:serviceaccount:{ns}:local-{suffix}"
    assert message == f"spec.clusterRules[0]: {who} may not get namespaces cluster-wide"
    assert kube.get("ClusterRole", None, f"appidentity:{ns}:wide-{suffix}") is None

    wide = requester(ns, f"wide-{suffix}-req", rules=[MINT_TOKENS], cluster_rules=rules)
    create(wide, identity(f"wide-ok-{suffix}", ns, clusterRules=rules))
    try:
        wait_ready(kube, ns, f"wide-ok-{suffix}", timeout=90)
    finally:
        for name in (f"wide-{suffix}", f"wide-ok-{suffix}"):
            kube.delete("AppIdentity", ns, name)


# --- who the requester is --------------------------------------------------------------------


def _stamped_user(obj: dict[str, Any]) -> str:
    return parse_stamp(obj["metadata"]["annotations"][REQUESTER_ANNOTATION]).username


def test_a_forged_requester_is_replaced_by_the_real_one(
    kube: Kube, namespace: str, requester: RequesterFactory
) -> None:
    strong = requester(namespace, "strong", rules=[CREATE_PODS, MINT_TOKENS])
    weak = requester(namespace, "weak", rules=[MINT_TOKENS])
    made = create(strong, identity("genuine", namespace, rules=[CREATE_PODS]))
    strong_stamp = made["metadata"]["annotations"][REQUESTER_ANNOTATION]
    assert _stamped_user(made) == f"system:serviceaccount:{namespace}:strong"

    forged = identity("forged", namespace, rules=[CREATE_PODS])
    forged["metadata"]["annotations"] = {REQUESTER_ANNOTATION: strong_stamp}
    stored = create(weak, forged)
    assert _stamped_user(stored) == f"system:serviceaccount:{namespace}:weak"
    assert "weak may not create pods" in _refusal(kube, namespace, "forged")
    _nothing_granted(kube, namespace, "forged")

    # Borrowing the stamp onto one's own identity, or rewriting another's, changes nothing.
    merge_patch(
        weak,
        "AppIdentity",
        namespace,
        "forged",
        {"metadata": {"annotations": {REQUESTER_ANNOTATION: strong_stamp}}},
    )
    assert _stamped_user(kube.get("AppIdentity", namespace, "forged") or {}).endswith(":weak")
    wait_ready(kube, namespace, "genuine", timeout=90)
    merge_patch(
        weak,
        "AppIdentity",
        namespace,
        "genuine",
        {"metadata": {"annotations": {REQUESTER_ANNOTATION: "v1;" + _b64("x") + ";;;"}}},
    )
    assert (kube.get("AppIdentity", namespace, "genuine") or {})["metadata"]["annotations"][
        REQUESTER_ANNOTATION
    ] == strong_stamp


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_weak_user_may_relabel_a_strong_identity_but_not_widen_it(
    kube: Kube, namespace: str, requester: RequesterFactory
) -> None:
    strong = requester(namespace, "strong", rules=[CREATE_PODS, DELETE_CONFIGMAPS, MINT_TOKENS])
    weak = requester(namespace, "weak", rules=[MINT_TOKENS])
    create(strong, identity("shared", namespace, rules=[CREATE_PODS]))
    before = wait_ready(kube, namespace, "shared", timeout=90)

    merge_patch(weak, "AppIdentity", namespace, "shared", {"metadata": {"labels": {"x": "y"}}})
    relabelled = kube.get("AppIdentity", namespace, "shared") or {}
    assert relabelled["metadata"]["generation"] == before["metadata"]["generation"]
    assert _stamped_user(relabelled).endswith(":strong")
    wait_ready(kube, namespace, "shared")

    merge_patch(
        weak,
        "AppIdentity",
        namespace,
        "shared",
        {"spec": {"rules": [CREATE_PODS, DELETE_CONFIGMAPS]}},
    )
    message = _refusal(kube, namespace, "shared")
    assert f"spec.rules[0]: system:serviceaccount:{namespace}:weak may not create pods" in message
    # What the strong user granted stays as it was; nothing is widened.
    role = kube.get("Role", namespace, "shared") or {}
    assert [r["resources"] for r in role["rules"]] == [["pods"]]
