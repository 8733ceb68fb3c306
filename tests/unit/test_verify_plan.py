"""verify/plan.py: the exact questions the self-check asks with the minted token."""

from __future__ import annotations

from typing import Any

from appidentity.rbac import Request, covered
from appidentity.verify.plan import MAX_ALLOWED_CHECKS, MAX_REAL_READS, Check, Plan, build_plan

from .conftest import IdentityFactory

RBAC = "rbac.authorization.k8s.io"
PODS_GET_LIST = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
SECRET_DB = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["db"]}
VIEW = [
    {"apiGroups": [""], "resources": ["configmaps", "pods"], "verbs": ["get", "list", "watch"]},
    {"nonResourceURLs": ["/view-only"], "verbs": ["get"]},
]

FIXED_BOUNDARY = [
    Request("get", "", "secrets", "", "team-a"),
    Request("list", "", "secrets", "", "team-a"),
    Request("watch", "", "secrets", "", "team-a"),
    Request("create", "", "pods", "", "team-a"),
    Request("create", "", "pods", "exec", "team-a"),
    Request("create", RBAC, "rolebindings", "", "team-a"),
    Request("escalate", RBAC, "roles", "", "team-a"),
    Request("bind", RBAC, "clusterroles"),
    Request("impersonate", "", "users"),
    Request("impersonate", "", "serviceaccounts", "", "team-a"),
    Request("create", "", "serviceaccounts", "token", "team-a"),
    Request("get", "", "nodes", "proxy"),
]


def plan_for(
    make_identity: IdentityFactory,
    spec: dict[str, Any],
    consenting: set[str] | None = None,
    cluster_roles: dict[str, list[dict[str, Any]]] | None = None,
) -> Plan:
    identity = make_identity(spec, name="app", namespace="team-a")
    return build_plan(identity, consenting or set(), cluster_roles or {})


def requests(checks: list[Check]) -> list[Request]:
    return [c.request for c in checks]


def by_source(checks: list[Check], source: str) -> list[Request]:
    return [c.request for c in checks if c.source == source]


# --- allowed checks -----------------------------------------------------------------------------


def test_every_granted_verb_group_resource_and_name_is_checked(
    make_identity: IdentityFactory,
) -> None:
    rule = {
        "apiGroups": ["", "apps"],
        "resources": ["pods", "deployments/scale"],
        "verbs": ["get", "update"],
        "resourceNames": ["a", "b"],
    }
    plan = plan_for(make_identity, {"rules": [rule]})
    assert requests(plan.allowed) == [
        Request(verb, group, resource, sub, "team-a", name)
        for group in ("", "apps")
        for resource, sub in (("pods", ""), ("deployments", "scale"))
        for verb in ("get", "update")
        for name in ("a", "b")
    ]
    assert all(c.allowed is True and c.source == "spec.rules[0]" for c in plan.allowed)
    assert plan.truncated == 0


def test_namespace_grants_are_checked_in_their_namespace_only_with_consent(
    make_identity: IdentityFactory,
) -> None:
    spec = {
        "rules": [PODS_GET_LIST],
        "namespaces": [
            {"name": "team-b", "rules": [SECRET_DB]},
            {"name": "team-c", "rules": [PODS_GET_LIST]},
        ],
    }
    plan = plan_for(make_identity, spec, consenting={"team-b"})
    assert by_source(plan.allowed, "spec.namespaces[0].rules[0]") == [
        Request("get", "", "secrets", "", "team-b", "db")
    ]
    assert [c for c in plan.allowed if c.request.namespace == "team-c"] == []
    assert plan.namespaces == ["team-a", "team-b"]
    assert list(plan.grants) == ["team-a", "team-b", ""]


def test_one_sample_check_per_cluster_role_rule(make_identity: IdentityFactory) -> None:
    roles = {
        "view": [
            {"apiGroups": [""], "resources": ["configmaps", "pods"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch"]},
        ]
    }
    plan = plan_for(make_identity, {"clusterRoles": ["view"]}, cluster_roles=roles)
    assert by_source(plan.allowed, "ClusterRole view") == [
        Request("get", "", "configmaps", "", "team-a"),
        Request("list", "apps", "deployments", "", "team-a"),
    ]


def test_cluster_role_non_resource_rules_are_left_out_of_namespace_grants(
    make_identity: IdentityFactory,
) -> None:
    plan = plan_for(make_identity, {"clusterRoles": ["view"]}, cluster_roles={"view": VIEW})
    assert plan.grants["team-a"] == [VIEW[0]]


def test_unknown_cluster_role_adds_no_checks(make_identity: IdentityFactory) -> None:
    plan = plan_for(make_identity, {"clusterRoles": ["view"]}, cluster_roles={})
    assert plan.allowed == []
    assert plan.grants == {"team-a": [], "": []}


def test_wildcard_requests_are_not_asked_as_allowed_checks(make_identity: IdentityFactory) -> None:
    wild = {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}
    plan = plan_for(make_identity, {"rules": [wild, PODS_GET_LIST]})
    assert by_source(plan.allowed, "spec.rules[0]") == []
    assert plan.grants["team-a"][0] == {"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}


def test_cluster_rules_are_checked_cluster_wide(make_identity: IdentityFactory) -> None:
    spec = {
        "clusterRules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        ]
    }
    plan = plan_for(make_identity, spec)
    assert [(c.request, c.source) for c in plan.allowed] == [
        (Request("list", "", "nodes"), "spec.clusterRules[0]"),
        (Request("get", url="/metrics"), "spec.clusterRules[1]"),
    ]
    assert plan.namespaces == ["team-a"]


def test_allowed_checks_are_capped_and_the_rest_counted(make_identity: IdentityFactory) -> None:
    rule = {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["get", "update", "patch"],
        "resourceNames": [f"cm-{i}" for i in range(50)],
    }
    plan = plan_for(make_identity, {"rules": [rule]})
    assert len(plan.allowed) == MAX_ALLOWED_CHECKS == 128
    assert plan.truncated == 150 - 128


# --- boundary -----------------------------------------------------------------------------------


def test_fixed_boundary_is_asked_in_the_identity_namespace(make_identity: IdentityFactory) -> None:
    plan = plan_for(make_identity, {"rules": [PODS_GET_LIST]})
    assert by_source(plan.denied, "boundary") == FIXED_BOUNDARY
    assert all(c.allowed is False for c in plan.denied)


def test_granted_resources_are_denied_elsewhere_and_cluster_wide(
    make_identity: IdentityFactory,
) -> None:
    plan = plan_for(make_identity, {"rules": [PODS_GET_LIST]})
    # a list, as the cluster-wide check is: refused for real, it answers that one too (decide.py)
    assert by_source(plan.denied, "boundary: ungranted namespace") == [
        Request("list", "", "pods", "", "kube-system")
    ]
    assert by_source(plan.denied, "boundary: cluster-wide") == [Request("list", "", "pods")]


def test_ungranted_namespace_avoids_granted_ones(make_identity: IdentityFactory) -> None:
    spec = {
        "rules": [PODS_GET_LIST],
        "namespaces": [
            {"name": "kube-system", "rules": [PODS_GET_LIST]},
            {"name": "default", "rules": [PODS_GET_LIST]},
        ],
    }
    plan = plan_for(make_identity, spec, consenting={"kube-system", "default"})
    assert {r.namespace for r in by_source(plan.denied, "boundary: ungranted namespace")} == {
        "kube-public"
    }


def test_ungranted_namespace_falls_back_to_a_made_up_name(make_identity: IdentityFactory) -> None:
    grants = [
        {"name": ns, "rules": [PODS_GET_LIST]} for ns in ("kube-system", "default", "kube-public")
    ]
    plan = plan_for(
        make_identity,
        {"rules": [PODS_GET_LIST], "namespaces": grants},
        consenting={"kube-system", "default", "kube-public"},
    )
    assert by_source(plan.denied, "boundary: ungranted namespace") == [
        Request("list", "", "pods", "", "team-a-not-granted")
    ]


def test_boundary_never_contradicts_the_grant(make_identity: IdentityFactory) -> None:
    roles = {
        "edit": [
            {"apiGroups": [""], "resources": ["pods", "pods/exec"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
        ]
    }
    plan = plan_for(make_identity, {"clusterRoles": ["edit"]}, cluster_roles=roles)
    boundary = by_source(plan.denied, "boundary")
    for gone in FIXED_BOUNDARY[:5]:
        assert gone not in boundary
    assert boundary == FIXED_BOUNDARY[5:]
    for check in plan.denied:
        grants = plan.grants[""] + plan.grants.get(check.request.namespace, [])
        assert not covered(grants, check.request), check.request.describe()


def test_get_secrets_boundary_stays_when_only_named_secrets_are_granted(
    make_identity: IdentityFactory,
) -> None:
    # a get of an unnamed secret is not covered by resourceNames, so it must stay denied
    plan = plan_for(make_identity, {"rules": [SECRET_DB]})
    boundary = by_source(plan.denied, "boundary")
    assert Request("get", "", "secrets", "", "team-a") in boundary
    assert Request("get", "", "secrets", "", "team-a", "db") not in requests(plan.denied)
    assert Request("get", "", "secrets", "", "team-a", "db") in requests(plan.allowed)


def test_granted_secret_reads_drop_their_boundary_checks(make_identity: IdentityFactory) -> None:
    secrets = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}
    plan = plan_for(make_identity, {"rules": [secrets]})
    assert by_source(plan.denied, "boundary") == FIXED_BOUNDARY[3:]


def test_cluster_wide_list_boundary_is_dropped_when_cluster_rules_grant_it(
    make_identity: IdentityFactory,
) -> None:
    spec = {
        "rules": [PODS_GET_LIST],
        "clusterRules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
    }
    plan = plan_for(make_identity, spec)
    assert by_source(plan.denied, "boundary: cluster-wide") == []
    # "get pods" is not in the cluster-wide grant, so it stays denied in other namespaces
    assert by_source(plan.denied, "boundary: ungranted namespace") == [
        Request("get", "", "pods", "", "kube-system")
    ]


def test_cluster_rules_granting_the_verb_everywhere_drop_the_namespace_boundary(
    make_identity: IdentityFactory,
) -> None:
    spec = {"rules": [PODS_GET_LIST], "clusterRules": [PODS_GET_LIST]}
    plan = plan_for(make_identity, spec)
    assert by_source(plan.denied, "boundary: ungranted namespace") == []
    assert by_source(plan.denied, "boundary: cluster-wide") == []


def test_boundary_per_resource_is_asked_once(make_identity: IdentityFactory) -> None:
    spec = {
        "rules": [PODS_GET_LIST],
        "namespaces": [{"name": "team-b", "rules": [PODS_GET_LIST]}],
    }
    plan = plan_for(make_identity, spec, consenting={"team-b"})
    assert by_source(plan.denied, "boundary: cluster-wide") == [Request("list", "", "pods")]
    assert len(plan.denied) == len(set(plan.denied))


def test_user_must_deny_is_kept_even_when_it_contradicts_the_grant(
    make_identity: IdentityFactory,
) -> None:
    spec = {
        "rules": [PODS_GET_LIST],
        "verification": {
            "mustDeny": [
                {"verb": "get", "resource": "pods"},
                {"verb": "get", "resource": "pods/log", "namespace": "team-x", "name": "web-0"},
                {
                    "verb": "delete",
                    "group": "apps",
                    "resource": "deployments",
                    "subresource": "scale",
                },
            ]
        },
    }
    plan = plan_for(make_identity, spec)
    assert [(c.request, c.source, c.allowed) for c in plan.denied[-3:]] == [
        (Request("get", "", "pods", "", "team-a"), "spec.verification.mustDeny[0]", False),
        (
            Request("get", "", "pods", "log", "team-x", "web-0"),
            "spec.verification.mustDeny[1]",
            False,
        ),
        (
            Request("delete", "apps", "deployments", "scale", "team-a"),
            "spec.verification.mustDeny[2]",
            False,
        ),
    ]


# --- real requests ------------------------------------------------------------------------------


def test_real_reads_get_what_is_gettable_and_list_the_rest(
    make_identity: IdentityFactory,
) -> None:
    spec = {
        "rules": [
            PODS_GET_LIST,
            SECRET_DB,
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},  # the probe name
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},  # subresource
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"]},  # not a read
            {
                "apiGroups": [""],
                "resources": ["endpoints"],
                "verbs": ["list"],
                "resourceNames": ["x"],
            },
        ],
        "clusterRules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        ],
    }
    plan = plan_for(make_identity, spec)
    assert plan.real_reads == [
        Request("get", "", "pods", "", "team-a"),
        Request("get", "", "secrets", "", "team-a", "db"),
        Request("get", "", "services", "", "team-a"),
        Request("list", "", "nodes"),
    ]


def test_real_reads_take_the_first_concrete_request_of_a_rule(
    make_identity: IdentityFactory,
) -> None:
    rule = {
        "apiGroups": ["*", "apps"],
        "resources": ["deployments", "replicasets"],
        "verbs": ["list"],
    }
    plan = plan_for(make_identity, {"rules": [rule]}, cluster_roles={})
    assert plan.real_reads == [Request("list", "apps", "deployments", "", "team-a")]


def test_real_reads_are_capped(make_identity: IdentityFactory) -> None:
    rules = [{"apiGroups": [""], "resources": [f"thing{i}"], "verbs": ["list"]} for i in range(12)]
    plan = plan_for(make_identity, {"rules": rules})
    assert plan.real_reads == [
        Request("list", "", f"thing{i}", "", "team-a") for i in range(MAX_REAL_READS)
    ]


def test_real_denied_is_the_boundary_check_in_an_ungranted_namespace(
    make_identity: IdentityFactory,
) -> None:
    """No rules review covers that namespace: tried for real, it needs no access review."""
    plan = plan_for(make_identity, {"rules": [PODS_GET_LIST]})
    assert plan.real_denied is not None
    assert plan.real_denied.request == Request("list", "", "pods", "", "kube-system")
    assert plan.real_denied in plan.denied


def test_real_denied_is_a_list_in_the_granted_namespace_when_nothing_is_granted(
    make_identity: IdentityFactory,
) -> None:
    plan = plan_for(make_identity, {})
    assert plan.real_denied is not None
    assert plan.real_denied.request == Request("list", "", "secrets", "", "team-a")


def test_real_denied_skips_boundary_checks_the_grant_covers(
    make_identity: IdentityFactory,
) -> None:
    secrets_list = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}
    pods_list = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
    plan = plan_for(make_identity, {"rules": [secrets_list, pods_list]})
    assert plan.real_denied is not None
    assert plan.real_denied.request == Request("list", "", "secrets", "", "kube-system")


def test_real_denied_is_chosen_even_when_secret_reads_are_granted(
    make_identity: IdentityFactory,
) -> None:
    secrets = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}
    plan = plan_for(make_identity, {"rules": [secrets]})
    assert plan.real_denied is not None
    denied = plan.real_denied.request
    assert (denied.verb in ("get", "list"), denied.name, denied.subresource) == (True, "", "")
    assert denied in requests(plan.denied)
    assert not covered(plan.grants[""] + plan.grants.get(denied.namespace, []), denied)
