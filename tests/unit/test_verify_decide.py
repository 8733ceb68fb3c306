"""verify/decide.py: which checks the token's rules reviews answer, and which need an access
review. (Whether the API server's answers agree is tests/integration/test_authz_webhook.py's and
test_selfcheck.py's to show; here only the arithmetic.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from appidentity.rbac import Request, RuleDict
from appidentity.verify.decide import Answer, RulesAnswer, answered, split
from appidentity.verify.plan import Check, build_plan

from .conftest import IdentityFactory

PODS_GET_LIST = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
NODES_GET = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
SELF_REVIEWS = {
    "apiGroups": ["authorization.k8s.io"],
    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    "verbs": ["create"],
}


def complete(*rules: RuleDict) -> RulesAnswer:
    return RulesAnswer(list(rules), True)


def allowed(
    req: Request, reviews: Mapping[str, RulesAnswer], refused: Sequence[Request] = ()
) -> bool | None:
    """`answered`'s verdict alone: allowed, denied, or None when only an access review can tell."""
    answer = answered(req, reviews, refused)
    return None if answer is None else answer.allowed


def test_a_complete_review_answers_requests_in_its_namespace_both_ways() -> None:
    reviews = {"team-a": complete(PODS_GET_LIST, SELF_REVIEWS)}
    assert allowed(Request("list", "", "pods", "", "team-a"), reviews) is True
    assert allowed(Request("get", "", "pods", "", "team-a", "web-0"), reviews) is True
    assert allowed(Request("get", "", "secrets", "", "team-a"), reviews) is False
    assert allowed(Request("create", "", "pods", "exec", "team-a"), reviews) is False


def test_an_incomplete_review_answers_nothing() -> None:
    reviews = {"team-a": RulesAnswer([PODS_GET_LIST], complete=False)}
    assert allowed(Request("list", "", "pods", "", "team-a"), reviews) is None
    assert allowed(Request("get", "", "secrets", "", "team-a"), reviews) is None
    assert allowed(Request("get", "", "nodes", "proxy"), reviews) is None


def test_other_namespaces_are_never_answered() -> None:
    """RoleBindings in a namespace that was not reviewed are in no review."""
    reviews = {"team-a": complete(PODS_GET_LIST)}
    assert allowed(Request("list", "", "pods", "", "kube-system"), reviews) is None
    assert allowed(Request("get", "", "secrets", "", "kube-system"), reviews) is None


def test_outside_namespaces_a_review_proves_only_denial() -> None:
    """A namespace's review also lists what its RoleBindings grant, which never applies to a
    cluster-scoped request: a covering rule proves nothing, no covering rule proves denial."""
    reviews = {"team-a": complete(PODS_GET_LIST, NODES_GET)}
    assert allowed(Request("watch", "", "pods"), reviews) is False  # cluster-wide watch
    assert allowed(Request("get", "", "nodes", "proxy"), reviews) is False
    assert allowed(Request("get", url="/metrics"), reviews) is False
    assert allowed(Request("get", "", "nodes"), reviews) is None
    assert allowed(Request("list", "", "pods"), reviews) is None


def test_a_refusal_for_real_in_a_namespace_proves_the_cluster_wide_request_denied() -> None:
    """A ClusterRoleBinding allowing `list pods` would allow it in kube-system too."""
    reviews = {"team-a": complete(PODS_GET_LIST)}
    refused = [Request("list", "", "pods", "", "kube-system")]
    assert allowed(Request("list", "", "pods"), reviews, refused) is False
    assert allowed(Request("get", "", "pods"), reviews, refused) is None  # another verb
    # Only where the chain lists its rules: a webhook may allow what it refused elsewhere.
    assert allowed(Request("list", "", "pods"), {"team-a": RulesAnswer([], False)}, refused) is None


def test_one_complete_review_is_enough_outside_namespaces() -> None:
    reviews = {"team-a": RulesAnswer([], complete=False), "team-b": complete()}
    assert allowed(Request("bind", "rbac.authorization.k8s.io", "clusterroles"), reviews) is False


def test_a_one_rule_identity_needs_no_access_review(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity({"rules": [PODS_GET_LIST]}, name="app", namespace="team-a")
    plan = build_plan(identity, set(), {})
    reviews = {"team-a": complete(PODS_GET_LIST, SELF_REVIEWS)}
    checks = [*plan.allowed, *plan.denied]
    settled, asked = split(checks, reviews)
    assert [c.request for c in asked] == [
        Request("list", "", "pods", "", "kube-system"),  # the ungranted namespace
        Request("list", "", "pods"),  # cluster-wide, covered by the RoleBinding's rule
    ]
    assert asked[0] == plan.real_denied
    # Tried for real and refused, the first answers the second: no access review at all.
    settled, asked = split([c for c in checks if c != asked[0]], reviews, [asked[0].request])
    assert asked == []
    assert all(got.allowed == check.allowed for check, got in settled)


def test_with_an_incomplete_review_every_check_is_asked(make_identity: IdentityFactory) -> None:
    identity = make_identity({"rules": [PODS_GET_LIST]}, name="app", namespace="team-a")
    plan = build_plan(identity, set(), {})
    checks = [*plan.allowed, *plan.denied]
    settled, asked = split(checks, {"team-a": RulesAnswer([PODS_GET_LIST], complete=False)})
    assert settled == [] and asked == checks


def test_a_grant_the_review_lacks_is_settled_as_denied() -> None:
    check = Check(Request("list", "", "pods", "", "team-a"), True, "spec.rules[0]")
    settled, asked = split([check], {"team-a": complete(SELF_REVIEWS)})
    assert settled == [(check, Answer(False))] and asked == []
