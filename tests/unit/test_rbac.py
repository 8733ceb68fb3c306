"""rbac.py: RBAC rule matching as the API server's authorizer does it, and excess."""

from __future__ import annotations

from typing import Any

import pytest
from appidentity.rbac import (
    Request,
    covered,
    covers,
    excess,
    normalize,
    requests_of,
    rules_hash,
    split_resource,
)

PODS_READ = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}


# --- Request ------------------------------------------------------------------------------------


def test_request_describes_itself() -> None:
    assert Request("get", "", "pods", "log", "team-a", "web-0").describe() == (
        "get pods/log/web-0 in team-a"
    )
    assert Request("list", "apps", "deployments").describe() == "list deployments.apps cluster-wide"
    assert Request("get", url="/healthz").describe() == "get /healthz"


def test_split_resource() -> None:
    assert split_resource("pods/log") == ("pods", "log")
    assert split_resource("pods") == ("pods", "")


# --- covers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "request_", "expected"),
    [
        (PODS_READ, Request("get", "", "pods", namespace="a"), True),
        (PODS_READ, Request("delete", "", "pods"), False),
        (PODS_READ, Request("get", "apps", "pods"), False),
        (PODS_READ, Request("get", "", "services"), False),
        ({**PODS_READ, "verbs": ["*"]}, Request("delete", "", "pods"), True),
        ({**PODS_READ, "apiGroups": ["*"]}, Request("get", "apps", "pods"), True),
        ({**PODS_READ, "resources": ["*"]}, Request("get", "", "services"), True),
    ],
    ids=[
        "match",
        "other-verb",
        "other-group",
        "other-resource",
        "verb-star",
        "group-star",
        "resource-star",
    ],
)
def test_covers_verbs_groups_resources(
    rule: dict[str, Any], request_: Request, expected: bool
) -> None:
    assert covers(rule, request_) is expected


@pytest.mark.parametrize(
    ("resources", "request_", "expected"),
    [
        (["pods"], Request("get", "", "pods", "log"), False),
        (["pods/log"], Request("get", "", "pods", "log"), True),
        (["pods/log"], Request("get", "", "pods"), False),
        (["*/log"], Request("get", "", "pods", "log"), True),
        (["*/log"], Request("get", "", "pods", "exec"), False),
        (["*/log"], Request("get", "", "pods"), False),
        (["*"], Request("get", "", "pods", "log"), True),
        (["pods/*"], Request("get", "", "pods", "log"), False),
    ],
    ids=[
        "base-not-sub",
        "sub-exact",
        "sub-not-base",
        "star-sub",
        "star-sub-other",
        "star-sub-no-sub",
        "star-all",
        "base-star-is-literal",
    ],
)
def test_covers_subresources(resources: list[str], request_: Request, expected: bool) -> None:
    rule = {"apiGroups": [""], "resources": resources, "verbs": ["get"]}
    assert covers(rule, request_) is expected


@pytest.mark.parametrize(("name", "expected"), [("db-creds", True), ("other", False), ("", False)])
def test_resource_names_restrict_to_those_names(name: str, expected: bool) -> None:
    rule = {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get"],
        "resourceNames": ["db-creds"],
    }
    assert covers(rule, Request("get", "", "secrets", name=name)) is expected


def test_no_resource_names_cover_any_name() -> None:
    assert covers(PODS_READ, Request("get", "", "pods", name="anything")) is True


@pytest.mark.parametrize(
    ("urls", "url", "expected"),
    [
        (["/healthz"], "/healthz", True),
        (["/healthz"], "/healthz/ready", False),
        (["/healthz*"], "/healthz/ready", True),
        (["/healthz/*"], "/healthz", False),
        (["/api*"], "/apis/apps", True),
        (["*"], "/anything", True),
        (["/metrics"], "/metric", False),
        # The API server strips every trailing star, not one (strings.TrimRight).
        (["/logs/**"], "/logs/kube-apiserver.log", True),
        (["/logs**"], "/logs", True),
        (["/logs/**"], "/log", False),
    ],
)
def test_non_resource_urls_match_exactly_or_by_star_prefix(
    urls: list[str], url: str, expected: bool
) -> None:
    rule = {"nonResourceURLs": urls, "verbs": ["get"]}
    assert covers(rule, Request("get", url=url)) is expected


def test_non_resource_rule_needs_the_verb() -> None:
    rule = {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}
    assert covers(rule, Request("post", url="/healthz")) is False


def test_resource_and_non_resource_rules_do_not_cross() -> None:
    everything = {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}
    assert covers(everything, Request("get", url="/healthz")) is False
    assert covers({"nonResourceURLs": ["*"], "verbs": ["*"]}, Request("get", "", "pods")) is False


def test_covered_means_any_rule_covers() -> None:
    rules = [PODS_READ, {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]
    assert covered(rules, Request("get", "apps", "deployments")) is True
    assert covered(rules, Request("delete", "apps", "deployments")) is False
    assert covered([], Request("get", "", "pods")) is False


# --- requests_of -------------------------------------------------------------------------------


def test_requests_of_expands_every_combination() -> None:
    rule = {
        "apiGroups": ["", "apps"],
        "resources": ["pods/log"],
        "verbs": ["get", "list"],
        "resourceNames": ["a", "b"],
    }
    assert requests_of(rule, "team-a") == [
        Request("get", "", "pods", "log", "team-a", "a"),
        Request("get", "", "pods", "log", "team-a", "b"),
        Request("list", "", "pods", "log", "team-a", "a"),
        Request("list", "", "pods", "log", "team-a", "b"),
        Request("get", "apps", "pods", "log", "team-a", "a"),
        Request("get", "apps", "pods", "log", "team-a", "b"),
        Request("list", "apps", "pods", "log", "team-a", "a"),
        Request("list", "apps", "pods", "log", "team-a", "b"),
    ]


def test_requests_of_keeps_wildcards_literal() -> None:
    assert requests_of({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}) == [
        Request("*", "*", "*")
    ]


def test_requests_of_non_resource_rule() -> None:
    rule = {"nonResourceURLs": ["/healthz", "/version"], "verbs": ["get"]}
    assert requests_of(rule, "ignored") == [
        Request("get", url="/healthz"),
        Request("get", url="/version"),
    ]


def test_requests_of_empty_rule_is_empty() -> None:
    assert requests_of({"verbs": ["get"]}) == []


# --- excess ------------------------------------------------------------------------------------


def test_effective_rules_within_the_grant_are_not_excess() -> None:
    effective = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "get"]}]
    assert excess(effective, [PODS_READ], "team-a") == []


def test_get_pods_grant_does_not_cover_an_effective_star_verb() -> None:
    effective = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]
    grant = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    assert excess(effective, grant, "team-a") == [
        {"namespace": "team-a", "verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}
    ]


def test_only_the_uncovered_part_of_a_rule_is_excess() -> None:
    effective = [
        {
            "apiGroups": ["", "apps"],
            "resources": ["pods", "deployments"],
            "verbs": ["get", "delete"],
        }
    ]
    assert excess(effective, [PODS_READ], "team-a") == [
        {
            "namespace": "team-a",
            "verbs": ["delete", "get"],
            "apiGroups": ["", "apps"],
            "resources": ["deployments", "pods"],
        }
    ]


def test_baseline_rules_are_subtracted() -> None:
    baseline = [
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["selfsubjectaccessreviews"],
            "verbs": ["create"],
        },
        {"nonResourceURLs": ["/api", "/api/*", "/healthz"], "verbs": ["get"]},
    ]
    effective = [
        *baseline,
        PODS_READ,
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    ]
    assert excess(effective, [PODS_READ, *baseline], "team-a") == [
        {"namespace": "team-a", "verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}
    ]


def test_uncovered_non_resource_urls_are_excess() -> None:
    effective = [{"nonResourceURLs": ["/healthz", "/metrics", "/debug/*"], "verbs": ["get"]}]
    allowed = [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]
    assert excess(effective, allowed, "team-a") == [
        {"namespace": "team-a", "verbs": ["get"], "nonResourceURLs": ["/debug/*", "/metrics"]}
    ]


def test_prefix_grant_covers_narrower_effective_prefix() -> None:
    effective = [{"nonResourceURLs": ["/api/*"], "verbs": ["get"]}]
    allowed = [{"nonResourceURLs": ["/api*"], "verbs": ["get"]}]
    assert excess(effective, allowed, "team-a") == []


def test_a_double_star_grant_covers_what_the_api_server_says_it_covers() -> None:
    effective = [{"nonResourceURLs": ["/logs/kube.log", "/logs/*", "/logs/**"], "verbs": ["get"]}]
    allowed = [{"nonResourceURLs": ["/logs/**"], "verbs": ["get"]}]
    assert excess(effective, allowed, "team-a") == []


def test_effective_rule_wider_than_named_grant_is_excess_with_names_kept() -> None:
    grant = [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["a"]}
    ]
    wider = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    named = [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["a", "b"]}
    ]
    assert excess(wider, grant, "ns") == [
        {"namespace": "ns", "verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}
    ]
    assert excess(named, grant, "ns") == [
        {
            "namespace": "ns",
            "verbs": ["get"],
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["b"],
        }
    ]


def test_effective_subresources_need_their_own_grant() -> None:
    effective = [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]}]
    assert excess(effective, [PODS_READ], "ns") == [
        {"namespace": "ns", "verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}
    ]


# --- normalize and rules_hash -------------------------------------------------------------------


def test_normalize_sorts_and_drops_empty_keys() -> None:
    rule = {
        "verbs": ["list", "get"],
        "apiGroups": [""],
        "resources": ["b", "a"],
        "resourceNames": [],
    }
    assert normalize(rule) == {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["a", "b"]}


def test_rules_hash_is_stable_under_ordering() -> None:
    r1 = {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list"]}
    r1_shuffled = {"verbs": ["list", "get"], "resources": ["services", "pods"], "apiGroups": [""]}
    r2 = {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}
    one = rules_hash({"a": [r1, r2], "b": [r2]})
    two = rules_hash({"b": [r2], "a": [r2, r1_shuffled]})
    assert one == two
    assert len(one) == 16


def test_rules_hash_changes_when_rights_grow() -> None:
    before = {"a": [PODS_READ]}
    after = {"a": [{**PODS_READ, "verbs": ["get", "list", "watch", "delete"]}]}
    assert rules_hash(before) != rules_hash(after)


def test_rules_hash_tells_namespaces_apart() -> None:
    assert rules_hash({"a": [PODS_READ]}) != rules_hash({"b": [PODS_READ]})
