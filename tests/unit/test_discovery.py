"""discovery.py: a spec's rules judged against what the cluster serves, so that a misspelt verb,
resource or subresource (which RBAC stores and which grants nothing) is refused, while
wildcards, custom resources and RBAC's special verbs stay valid."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from appidentity.discovery import Discovery, DiscoveryCache, Finding, judge
from appidentity.model import parse_identity
from appidentity.policy import Policy
from appidentity.reconcile import Case, Memory, Stop
from appidentity.reconcile.judge import UNKNOWN_RULE_AGAIN
from appidentity.reconcile.judge import judge as judge_phase
from appidentity.status import STALLED_REASONS

from .conftest import BodyFactory, IdentityFactory

CRUD = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def resource(name: str, verbs: list[str], scope: str = "Namespaced", **subs: list[str]) -> Any:
    out: dict[str, Any] = {"resource": name, "scope": scope, "verbs": verbs}
    if subs:
        out["subresources"] = [{"subresource": s, "verbs": v} for s, v in subs.items()]
    return out


def group(name: str, *resources: Any, version: str = "v1", freshness: str = "Current") -> Any:
    return {
        "metadata": {"name": name},
        "versions": [{"version": version, "resources": list(resources), "freshness": freshness}],
    }


CORE = {
    "kind": "APIGroupDiscoveryList",
    "items": [
        group(
            "",
            resource("pods", CRUD, log=["get"], exec=["create", "get"], status=["get", "patch"]),
            resource("configmaps", CRUD),
            resource("serviceaccounts", CRUD, token=["create"]),
            resource("namespaces", CRUD[:2] + CRUD[3:], "Cluster", finalize=["update"]),
            resource("nodes", CRUD, "Cluster", proxy=["get", "create"]),
        )
    ],
}


def apis(*extra: Any) -> Any:
    return {
        "kind": "APIGroupDiscoveryList",
        "items": [
            group("apps", resource("deployments", CRUD, scale=["get", "patch", "update"])),
            group("rbac.authorization.k8s.io", resource("roles", CRUD)),
            group("authentication.k8s.io", resource("tokenreviews", ["create"], "Cluster")),
            group("certificates.k8s.io", resource("certificatesigningrequests", CRUD, "Cluster")),
            *extra,
        ],
    }


WIDGETS = group("example.com", resource("widgets", CRUD), version="v1beta1")
CLUSTER = Discovery.from_aggregated(CORE, apis())


def findings(
    make_identity: IdentityFactory, *rules: dict[str, Any], disc: Discovery = CLUSTER, **spec: Any
) -> list[str]:
    return [str(f) for f in judge(disc, make_identity({"rules": list(rules), **spec}))]


def rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def test_a_rule_of_things_the_cluster_serves_is_fine(make_identity: IdentityFactory) -> None:
    ok = [
        rule([""], ["pods", "pods/log"], ["get", "list", "watch"]),
        rule(["apps"], ["deployments", "deployments/scale"], ["get", "patch"]),
        rule([""], ["configmaps"], ["deletecollection"]),
    ]
    assert findings(make_identity, *ok) == []


def test_a_misspelt_verb_is_named_with_what_the_resource_serves(
    make_identity: IdentityFactory,
) -> None:
    assert findings(make_identity, rule([""], ["pods"], ["list", "gett"])) == [
        'spec.rules[0].verbs[1]: "gett" is not a verb pods serves (get, list, watch, create, '
        'update, patch, delete, deletecollection); did you mean "get"?'
    ]


def test_a_verb_the_resource_does_not_serve_is_refused(make_identity: IdentityFactory) -> None:
    assert findings(make_identity, rule([""], ["pods/log"], ["get", "watch"])) == [
        'spec.rules[0].verbs[1]: "watch" is not a verb pods/log serves (get)'
    ]
    assert findings(make_identity, rule([""], ["namespaces"], ["deletecollection"])) == [
        'spec.rules[0].verbs[0]: "deletecollection" is not a verb namespaces serves (get, list, '
        "watch, create, update, patch, delete)"
    ]


def test_a_verb_is_fine_when_any_resource_of_the_rule_serves_it(
    make_identity: IdentityFactory,
) -> None:
    """RBAC grants the cross product; a verb dead on one resource but live on another is the
    usual way to write `pods` and `pods/log` together."""
    assert findings(make_identity, rule([""], ["pods", "pods/log"], ["watch"])) == []


def test_a_misspelt_resource_gets_a_suggestion(make_identity: IdentityFactory) -> None:
    assert findings(make_identity, rule([""], ["pod"], ["get"])) == [
        'spec.rules[0].resources[0]: "pod" is not a resource of the API group "" (core); '
        'did you mean "pods"?'
    ]


def test_the_groups_searched_are_named(make_identity: IdentityFactory) -> None:
    assert findings(make_identity, rule(["", "apps"], ["widgets"], ["get"])) == [
        'spec.rules[0].resources[0]: "widgets" is not a resource of the API groups "" (core), '
        '"apps"'
    ]
    assert findings(make_identity, rule(["aps", "*"], ["podz"], ["get"])) == [
        'spec.rules[0].apiGroups[0]: "aps" is not an API group this cluster serves; '
        'did you mean "apps"?',
        'spec.rules[0].resources[0]: "podz" is not a resource of any API group; '
        'did you mean "pods"?',
    ]


def test_a_resource_of_another_group_says_which(make_identity: IdentityFactory) -> None:
    assert findings(make_identity, rule([""], ["deployments"], ["get"])) == [
        'spec.rules[0].resources[0]: "deployments" is not a resource of the API group "" (core); '
        'it is in "apps"'
    ]


def test_an_unknown_subresource_is_refused(make_identity: IdentityFactory) -> None:
    assert findings(make_identity, rule([""], ["pods/logg"], ["get"])) == [
        'spec.rules[0].resources[0]: pods has no subresource "logg" (exec, log, status); '
        'did you mean "pods/log"?'
    ]


def test_an_unknown_group_is_refused_and_its_resources_are_not_judged(
    make_identity: IdentityFactory,
) -> None:
    assert findings(make_identity, rule(["aps"], ["deployments"], ["gett"])) == [
        'spec.rules[0].apiGroups[0]: "aps" is not an API group this cluster serves; '
        'did you mean "apps"?'
    ]


def test_verbs_are_not_judged_while_a_resource_is_unknown(make_identity: IdentityFactory) -> None:
    found = findings(make_identity, rule([""], ["pod", "pods/log"], ["list"]))
    assert found == [
        'spec.rules[0].resources[0]: "pod" is not a resource of the API group "" (core); '
        'did you mean "pods"?'
    ]


def test_wildcards_stay_allowed(make_identity: IdentityFactory) -> None:
    wild = [
        rule(["*"], ["*"], ["*"]),
        rule(["*"], ["deployments"], ["get"]),
        rule(["apps"], ["*/scale"], ["get"]),
        rule([""], ["pods"], ["*"]),
    ]
    assert findings(make_identity, *wild) == []


def test_a_wildcard_rbac_does_not_match_is_refused(make_identity: IdentityFactory) -> None:
    found = findings(
        make_identity, rule([""], ["pods/*"], ["get"]), rule(["apps"], ["*/logs"], ["get"])
    )
    assert found == [
        'spec.rules[0].resources[0]: "pods/*" matches nothing: RBAC takes "*" only as a whole '
        'resource or as "*/<subresource>"',
        'spec.rules[1].resources[0]: no resource of the API group "apps" has a subresource "logs"',
    ]


def test_special_verbs_and_virtual_resources_stay_valid(make_identity: IdentityFactory) -> None:
    special = [
        rule([""], ["users", "groups", "serviceaccounts"], ["impersonate"]),
        rule(["authentication.k8s.io"], ["uids", "userextras/scopes"], ["impersonate"]),
        rule(["rbac.authorization.k8s.io"], ["roles"], ["bind", "escalate"]),
        rule(["certificates.k8s.io"], ["signers"], ["approve", "sign", "attest"]),
        rule([""], ["pods"], ["use"]),
        rule([""], ["nodes/stats", "nodes/metrics", "nodes/proxy"], ["get"]),
    ]
    assert findings(make_identity, *special) == []
    assert findings(make_identity, rule([""], ["users"], ["get"])) == [
        'spec.rules[0].verbs[0]: "get" is not a verb users serves (impersonate)'
    ]


def test_extra_verbs_of_the_policy_are_taken(make_identity: IdentityFactory) -> None:
    identity = make_identity({"rules": [rule([""], ["pods"], ["frobnicate"])]})
    assert judge(CLUSTER, identity, ["frobnicate"]) == []
    assert judge(CLUSTER, identity) != []


def test_custom_resources_count_once_discovery_lists_them(make_identity: IdentityFactory) -> None:
    widgets = rule(["example.com"], ["widgets"], ["get", "list"])
    assert findings(make_identity, widgets) == [
        'spec.rules[0].apiGroups[0]: "example.com" is not an API group this cluster serves'
    ]
    with_crd = Discovery.from_aggregated(CORE, apis(WIDGETS))
    assert findings(make_identity, widgets, disc=with_crd) == []


def test_a_stale_aggregated_api_is_not_judged(make_identity: IdentityFactory) -> None:
    metrics = group("metrics.k8s.io", freshness="Stale")
    disc = Discovery.from_aggregated(CORE, apis(metrics))
    assert findings(make_identity, rule(["metrics.k8s.io"], ["pods"], ["get"]), disc=disc) == []


def test_resources_are_merged_over_versions() -> None:
    two = {
        "metadata": {"name": "example.com"},
        "versions": [
            {"version": "v1", "resources": [resource("widgets", ["get"])]},
            {"version": "v1beta1", "resources": [resource("widgets", ["list"], extra=["get"])]},
        ],
    }
    disc = Discovery.from_aggregated(CORE, apis(two))
    widgets = disc.resource("example.com", "widgets")
    assert widgets is not None
    assert widgets.verbs == {"get", "list"} and set(widgets.subresources) == {"extra"}
    assert widgets.versions == ("v1", "v1beta1")


def test_every_place_rules_live_is_judged(make_identity: IdentityFactory) -> None:
    bad = rule([""], ["pod"], ["get"])
    spec = {
        "namespaces": [{"name": "team-b", "rules": [bad]}],
        "clusterRules": [bad, {"nonResourceURLs": ["/healthz"], "verbs": ["post"]}],
    }
    fields = [f.split(":")[0] for f in findings(make_identity, bad, **spec)]
    assert fields == [
        "spec.rules[0].resources[0]",
        "spec.namespaces[0].rules[0].resources[0]",
        "spec.clusterRules[0].resources[0]",
    ]


# --- the cache ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_reads_again_for_an_unknown_name_at_most_every_min_age(
    make_identity: IdentityFactory,
) -> None:
    answers = [CLUSTER, Discovery.from_aggregated(CORE, apis(WIDGETS))]
    reads: list[int] = []

    def read() -> Discovery:
        reads.append(1)
        return answers[min(len(reads) - 1, 1)]

    clock = Clock()
    cache = DiscoveryCache(read, min_age=30, max_age=600, clock=clock)
    widgets = make_identity({"rules": [rule(["example.com"], ["widgets"], ["get"])]})
    assert cache.judge(widgets) != [] and len(reads) == 1  # just read: not again
    clock.now += 31
    assert cache.judge(widgets) == [] and len(reads) == 2  # the CRD arrived meanwhile
    pods = make_identity({"rules": [rule([""], ["pods"], ["get"])]})
    clock.now += 31
    assert cache.judge(pods) == [] and len(reads) == 2  # nothing unknown, nothing read
    clock.now += 600
    cache.judge(pods)
    assert len(reads) == 3  # too old


def test_the_cache_keeps_its_snapshot_when_a_read_fails(make_identity: IdentityFactory) -> None:
    calls: list[int] = []

    def read() -> Discovery:
        calls.append(1)
        if len(calls) > 1:
            raise OSError("API server away")
        return CLUSTER

    clock = Clock()
    cache = DiscoveryCache(read, clock=clock)
    assert cache.snapshot() is CLUSTER
    clock.now += 10_000
    assert cache.snapshot() is CLUSTER
    with pytest.raises(OSError):
        DiscoveryCache(lambda: (_ for _ in ()).throw(OSError("no")), clock=clock).snapshot()


def test_finding_text() -> None:
    assert str(Finding("spec.rules[0].verbs[0]", "x")) == "spec.rules[0].verbs[0]: x"


# --- the operator's judge phase ---------------------------------------------------------------


def test_the_judge_phase_stops_a_dead_grant_before_the_requester_is_asked(
    body: BodyFactory,
) -> None:
    """Refused before any write or review, Stalled for a human (or a CRD), asked again later."""
    doc = body({"rules": [rule([""], ["pod"], ["get"])]})
    case = Case(doc, parse_identity(doc), {}, datetime.now(UTC), True, set(), None)  # type: ignore[arg-type]
    runtime = SimpleNamespace(policy=Policy(), discovery=DiscoveryCache(lambda: CLUSTER))
    with pytest.raises(Stop) as stopped:
        judge_phase(runtime, case, Memory())  # type: ignore[arg-type]
    assert stopped.value.reason == "UnknownRule"
    assert "UnknownRule" in STALLED_REASONS
    assert stopped.value.message.startswith('spec.rules[0].resources[0]: "pod" is not')
    assert stopped.value.retry_in == UNKNOWN_RULE_AGAIN
