"""Structurally bad AppIdentities: refused at admission by the CRD's schema and CEL rules, and
refused again by the operator's own parser (for objects that reach it some other way), both
naming the same field. The policy half of the corpus is in test_deploy.py
(test_admission_policy_refuses_what_the_operator_refuses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from appidentity.kube import ApiError, Kube
from appidentity.model import SpecError, parse_identity
from support import create

PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}


@dataclass(frozen=True)
class Case:
    id: str
    spec: dict[str, Any]
    field: str  # the field both the API server and the operator must name
    admission: str  # what the API server must say about it
    name: str = "bad"


def rules(n: int) -> list[dict[str, Any]]:
    return [dict(PODS) for _ in range(n)]


CASES = [
    Case(
        "verbs-missing",
        {"rules": [{"apiGroups": [""], "resources": ["pods"]}]},
        "spec.rules[0].verbs",
        "Required value",
    ),
    Case(
        "verbs-empty",
        {"rules": [{**PODS, "verbs": []}]},
        "spec.rules[0].verbs",
        "should have at least 1 items",
    ),
    Case(
        "resources-empty",
        {"rules": [{**PODS, "resources": []}]},
        "spec.rules[0].resources",
        "should have at least 1 items",
    ),
    Case(
        "api-groups-missing",
        {"rules": [{"resources": ["pods"], "verbs": ["get"]}]},
        "spec.rules[0].apiGroups",
        "Required value",
    ),
    Case(
        "verb-empty-string",
        {"rules": [{**PODS, "verbs": [""]}]},
        "spec.rules[0].verbs[0]",
        "should be at least 1 chars long",
    ),
    Case(
        "non-resource-url-in-rules",
        {"rules": [{**PODS, "nonResourceURLs": ["/healthz"]}]},
        "spec.rules[0].nonResourceURLs",
        "only spec.clusterRules may hold nonResourceURLs",
    ),
    Case(
        "non-resource-url-rule-in-rules",  # written as for clusterRules: no apiGroups, resources
        {"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]},
        "spec.rules[0].nonResourceURLs",
        "only spec.clusterRules may hold nonResourceURLs",
    ),
    Case(
        "non-resource-url-in-namespace-grant",
        {
            "namespaces": [
                {"name": "other", "rules": [{"nonResourceURLs": ["/x"], "verbs": ["get"]}]}
            ]
        },
        "spec.namespaces[0].rules[0].nonResourceURLs",
        "only spec.clusterRules may hold nonResourceURLs",
    ),
    Case(
        "cluster-rule-mixes-urls-and-resources",
        {"clusterRules": [{**PODS, "nonResourceURLs": ["/healthz"]}]},
        "spec.clusterRules[0]",
        "set either nonResourceURLs, or apiGroups and resources",
    ),
    Case(
        "cluster-rule-resources-without-groups",
        {"clusterRules": [{"resources": ["nodes"], "verbs": ["get"]}]},
        "spec.clusterRules[0]",
        "need both apiGroups and resources",
    ),
    Case(
        "token-too-short",
        {"rules": [PODS], "token": {"expirationSeconds": 599}},
        "spec.token.expirationSeconds",
        "should be greater than or equal to 600",
    ),
    Case(
        "token-too-long",
        {"rules": [PODS], "token": {"expirationSeconds": 31536001}},
        "spec.token.expirationSeconds",
        "should be less than or equal to 31536000",
    ),
    Case(
        "token-type-unknown",
        {"rules": [PODS], "token": {"type": "Forever"}},
        "spec.token.type",
        "Unsupported value",
    ),
    Case(
        "legacy-with-lifetime",
        {"rules": [PODS], "token": {"type": "Legacy", "expirationSeconds": 600}},
        "spec.token",
        "apply only to token.type Bound",
    ),
    Case(
        "legacy-with-audiences",
        {"rules": [PODS], "token": {"type": "Legacy", "audiences": ["vault"]}},
        "spec.token",
        "apply only to token.type Bound",
    ),
    Case(
        "schedule-in-the-wrong-order",
        {
            "rules": [PODS],
            "schedule": {"notBefore": "2026-12-31T00:00:00Z", "expiresAt": "2026-12-01T00:00:00Z"},
        },
        "spec.schedule",
        "notBefore must be before",
    ),
    Case(
        "schedule-not-a-time",
        {"rules": [PODS], "schedule": {"notBefore": "tomorrow"}},
        "spec.schedule.notBefore",
        "date-time",
    ),
    Case(
        "unknown-field",
        {"rules": [PODS], "serviceAcount": {"name": "x"}},
        "spec.serviceAcount",
        "unknown field",
    ),
    Case(
        "unknown-field-in-rule",
        {"rules": [{**PODS, "verb": ["get"]}]},
        "spec.rules[0].verb",
        "unknown field",
    ),
    Case(
        "verbs-not-a-list",
        {"rules": [{**PODS, "verbs": "get"}]},
        "spec.rules[0].verbs",
        "must be of type array",
    ),
    Case(
        "automount-not-a-bool",
        {"rules": [PODS], "serviceAccount": {"automountToken": "yes"}},
        "spec.serviceAccount.automountToken",
        "must be of type boolean",
    ),
    Case(
        "interval-not-a-number",
        {"rules": [PODS], "verification": {"intervalSeconds": "hourly"}},
        "spec.verification.intervalSeconds",
        "must be of type integer",
    ),
    Case(
        "interval-too-short",
        {"rules": [PODS], "verification": {"intervalSeconds": 5}},
        "spec.verification.intervalSeconds",
        "should be greater than or equal to 30",
    ),
    Case("name-too-long", {"rules": [PODS]}, "metadata.name", "DNS-1123 label", name="a" * 64),
    Case("name-with-a-dot", {"rules": [PODS]}, "metadata.name", "DNS-1123 label", name="a.b"),
    Case(
        "service-account-name-malformed",
        {"rules": [PODS], "serviceAccount": {"name": "Bad_Name"}},
        "spec.serviceAccount.name",
        "DNS-1123 subdomain",
    ),
    Case(
        "secret-name-malformed",
        {"rules": [PODS], "token": {"secretName": "UPPER"}},
        "spec.token.secretName",
        "DNS-1123 subdomain",
    ),
    Case(
        "namespace-name-malformed",
        {"namespaces": [{"name": "Team_B", "rules": [PODS]}]},
        "spec.namespaces[0].name",
        "namespace name",
    ),
    Case(
        "namespace-grant-empty",
        {"namespaces": [{"name": "other"}]},
        "spec.namespaces[0]",
        "set rules or clusterRoles",
    ),
    Case(
        "namespaces-duplicated",
        {"namespaces": [{"name": "other", "rules": [PODS]}, {"name": "other", "rules": [PODS]}]},
        "spec.namespaces",
        "Duplicate value",
    ),
    Case(
        "cluster-role-name-malformed",
        {"clusterRoles": ["Not Valid"]},
        "spec.clusterRoles[0]",
        "must be a ClusterRole name",
    ),
    Case(
        "namespace-grant-with-empty-lists",
        {"namespaces": [{"name": "other", "rules": [], "clusterRoles": []}]},
        "spec.namespaces[0]",
        "set rules or clusterRoles",
    ),
    Case("too-many-rules", {"rules": rules(33)}, "spec.rules", "must have at most 32 items"),
    Case(
        "too-many-verbs",
        {"rules": [{**PODS, "verbs": [f"v{i}" for i in range(17)]}]},
        "spec.rules[0].verbs",
        "must have at most 16 items",
    ),
    Case(
        "must-deny-without-resource",
        {"rules": [PODS], "verification": {"mustDeny": [{"verb": "delete"}]}},
        "spec.verification.mustDeny[0].resource",
        "Required value",
    ),
]


def body(namespace: str, case: Case) -> dict[str, Any]:
    return {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"name": case.name, "namespace": namespace},
        "spec": case.spec,
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_at_admission_and_by_the_operator_naming_the_field(
    kube: Kube, crd_installed: None, namespace: str, case: Case
) -> None:
    with pytest.raises(ApiError) as refused:
        create(kube, body(namespace, case), strict=True)
    message = refused.value.message
    assert refused.value.status in (400, 422), message  # 400: strict decoding (unknown fields)
    assert case.field in message and case.admission in message, message

    with pytest.raises(SpecError) as parsed:
        parse_identity(body(namespace, case))
    assert any(p.startswith(case.field) for p in parsed.value.problems), parsed.value.problems
