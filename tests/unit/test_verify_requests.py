"""verify/run.check_access: which requests a proof sends, given the API server's answers
(verify/run.py's decisions without API behaviour are in test_verify_run.py).

The answers are scripted here; whether the API server really gives them is the integration
tests' to show (test_selfcheck.py, test_authz_webhook.py). What is pinned here is the request
budget of issue 23 and what an answer that is no verdict does."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from appidentity.kube import ApiError
from appidentity.rbac import Request, RuleDict, covered
from appidentity.verify.plan import build_plan
from appidentity.verify.run import ClusterFacts, check_access

from .conftest import IdentityFactory

PODS_GET_LIST = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
SELF_REVIEWS = {
    "apiGroups": ["authorization.k8s.io"],
    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    "verbs": ["create"],
}


class ScriptedHttp:
    """Answers as an RBAC-only API server would for a token bound to `rules` in `namespace` by
    a RoleBinding, with the self-reviews every ServiceAccount has cluster-wide."""

    def __init__(self, subject: str, namespace: str, rules: list[RuleDict], **kw: Any) -> None:
        self.subject, self.namespace, self.rules = subject, namespace, rules
        self.incomplete: bool = kw.get("incomplete", False)
        self.read_code: int | None = kw.get("read_code")
        self.sent: Counter[str] = Counter()

    def _allowed(self, req: Request) -> bool:
        in_binding = req.namespace == self.namespace and covered(self.rules, req)
        return in_binding or covered([SELF_REVIEWS], req)

    def whoami(self) -> str:
        self.sent["SelfSubjectReview"] += 1
        return self.subject

    def rules_review(self, namespace: str) -> tuple[list[RuleDict], bool]:
        self.sent["SelfSubjectRulesReview"] += 1
        return (list(self.rules) if namespace == self.namespace else []), self.incomplete

    def access_review(self, req: Request) -> tuple[bool, str]:
        self.sent["SelfSubjectAccessReview"] += 1
        return self._allowed(req), ""

    def preferred_versions(self) -> dict[str, str]:
        return {"": "v1"}

    def try_read(self, req: Request, group_version: str) -> int:
        self.sent["request"] += 1
        if self.read_code is not None:
            return self.read_code
        return 404 if self._allowed(req) else 403


def no_baseline(namespace: str, max_age: float = 0.0) -> list[RuleDict]:
    return []


def prove(make_identity: IdentityFactory, http: ScriptedHttp) -> Any:
    identity = make_identity({"rules": [PODS_GET_LIST]}, name="app", namespace="team-a")
    plan = build_plan(identity, set(), {})
    return check_access(http, identity, plan, no_baseline, ClusterFacts())  # type: ignore[arg-type]


SUBJECT = "system:serviceaccount:team-a:app"


def test_a_complete_rules_review_leaves_no_access_review(make_identity: IdentityFactory) -> None:
    http = ScriptedHttp(SUBJECT, "team-a", [PODS_GET_LIST, SELF_REVIEWS])
    ver = prove(make_identity, http)
    assert ver.failed == [] and not ver.incomplete
    # The real read and the real refusal in the ungranted namespace; nothing else to ask.
    assert http.sent == {"SelfSubjectReview": 1, "SelfSubjectRulesReview": 1, "request": 2}
    vias = {r.request.describe(): r.via for r in ver.results}
    assert vias["list pods in kube-system"] == "request"
    assert vias["list pods cluster-wide"] == "request"  # answered by that refusal
    assert vias["get secrets in team-a"] == "SelfSubjectRulesReview"


def test_an_incomplete_rules_review_asks_every_check(make_identity: IdentityFactory) -> None:
    http = ScriptedHttp(SUBJECT, "team-a", [PODS_GET_LIST, SELF_REVIEWS], incomplete=True)
    ver = prove(make_identity, http)
    assert ver.failed == [] and ver.incomplete
    asked = len(ver.results) - http.sent["request"]
    assert http.sent["SelfSubjectAccessReview"] == asked > 10


def test_a_grant_missing_from_the_effective_rules_fails(make_identity: IdentityFactory) -> None:
    http = ScriptedHttp(SUBJECT, "team-a", [SELF_REVIEWS])
    failed = {r.request.describe() for r in prove(make_identity, http).failed}
    assert {"get pods in team-a", "list pods in team-a"} <= failed


@pytest.mark.parametrize("code", [500, 503, 0])
def test_a_real_request_without_a_verdict_is_no_outcome(
    make_identity: IdentityFactory, code: int
) -> None:
    """A failing authorizer webhook makes a refusal a 500: asked again, never 'allowed'."""
    http = ScriptedHttp(SUBJECT, "team-a", [PODS_GET_LIST, SELF_REVIEWS], read_code=code)
    with pytest.raises(ApiError):
        prove(make_identity, http)
