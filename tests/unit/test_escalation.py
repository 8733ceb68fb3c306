"""escalation.py: what a requester must hold for the operator to grant a spec on its behalf."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from appidentity.escalation import (
    Grant,
    Requester,
    StampError,
    grants,
    parse_stamp,
    questions,
    refusals,
    requester_of,
    unexpanded,
)
from appidentity.model import parse_identity
from appidentity.policy import load_policy
from appidentity.rbac import Request
from appidentity.reconcile import Case, Memory, Stop
from appidentity.reconcile.judge import judge

from .conftest import POD_READER, BodyFactory, IdentityFactory

RBAC = "rbac.authorization.k8s.io"
CREATE_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
VIEW_RULES = [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get"]}]
MINT = Request("create", "", "serviceaccounts", "token", "team-a", "app")
ESCALATE_HERE = Request("escalate", RBAC, "roles", namespace="team-a")


def stamp(user: str, uid: str = "", groups: list[str] | None = None, extra: object = None) -> str:
    doc = {"username": user, "uid": uid, "groups": groups or [], "extra": extra or {}}
    return json.dumps(doc)


# --- the stamp ------------------------------------------------------------------------------


def test_a_stamp_carries_user_uid_groups_and_extra_exactly() -> None:
    extra = {"c": [], "a/b": ["x", 'y";z']}
    got = parse_stamp(stamp('alice "bob"', "u-1", ["dev,ops", "system:authenticated"], extra))
    assert got == Requester(
        'alice "bob"',
        "u-1",
        ("dev,ops", "system:authenticated"),
        (("a/b", ("x", 'y";z')), ("c", ())),
    )
    assert got.review_user() == {
        "user": 'alice "bob"',
        "uid": "u-1",
        "groups": ["dev,ops", "system:authenticated"],
        "extra": {"a/b": ["x", 'y";z'], "c": []},
    }


def test_the_escapes_of_cel_strings_quote_are_read_too() -> None:
    # strings.quote writes a bell as \a and a vertical tab as \v, which JSON lacks; an escaped
    # backslash followed by a v stays a backslash and a v.
    raw = r'{"username":"a\a\\v","uid":"","groups":["\v"],"extra":{}}'
    got = parse_stamp(raw)
    assert got.username == "a\x07\\v"
    assert got.groups == ("\x0b",)


def test_a_user_without_uid_or_extra_is_asked_about_without_them() -> None:
    assert parse_stamp(stamp("bob")).review_user() == {"user": "bob", "groups": []}


@pytest.mark.parametrize(
    "bad",
    [
        "alice",
        "[]",
        stamp(""),
        '{"username": "a", "uid": "", "groups": []}',
        '{"username": "a", "uid": "", "groups": [1], "extra": {}}',
        '{"username": "a", "uid": "", "groups": [], "extra": {"k": "v"}}',
        '{"username": "a", "uid": "", "groups": [], "extra": {}, "more": 1}',
    ],
)
def test_a_malformed_stamp_is_an_error_not_a_guess(bad: str) -> None:
    with pytest.raises(StampError):
        parse_stamp(bad)


def test_no_annotation_is_no_requester() -> None:
    assert requester_of({"other": "x"}) is None
    assert requester_of({"appidentity.dev/requester": stamp("carol")}) == Requester("carol")


# --- the questions --------------------------------------------------------------------------


def test_each_rule_needs_every_permission_it_carries_or_escalate_in_its_namespace(
    make_identity: IdentityFactory,
) -> None:
    rule = {"apiGroups": ["", "apps"], "resources": ["pods", "deployments/scale"], "verbs": ["*"]}
    first = grants(make_identity({"rules": [rule]}))[0]
    assert first.path == "spec.rules[0]"
    assert first.override == ESCALATE_HERE
    assert set(first.needs) == {
        Request("*", g, r, s, "team-a")
        for g in ("", "apps")
        for r, s in (("pods", ""), ("deployments", "scale"))
    }


def test_cluster_rules_are_judged_cluster_wide_with_escalate_on_clusterroles(
    make_identity: IdentityFactory,
) -> None:
    spec = {"clusterRules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, CREATE_PODS]}
    urls, pods = grants(make_identity(spec))[:2]
    assert urls.needs == (Request("get", url="/metrics"),)
    assert pods.needs == (Request("create", "", "pods"),)
    assert pods.override == Request("escalate", RBAC, "clusterroles")


def test_grants_in_other_namespaces_are_judged_there_consent_or_not(
    make_identity: IdentityFactory,
) -> None:
    spec = {"namespaces": [{"name": "team-b", "rules": [CREATE_PODS], "clusterRoles": ["view"]}]}
    rule, role = grants(make_identity(spec))[:2]
    assert rule.path == "spec.namespaces[0].rules[0]"
    assert rule.needs == (Request("create", "", "pods", namespace="team-b"),)
    assert rule.override == Request("escalate", RBAC, "roles", namespace="team-b")
    assert role.path == "spec.namespaces[0].clusterRoles[0]"
    assert role.override == Request("bind", RBAC, "clusterroles", namespace="team-b", name="view")


def test_the_token_needs_what_minting_it_by_hand_needs(make_identity: IdentityFactory) -> None:
    bound = grants(make_identity())[-1]
    assert (bound.path, bound.needs, bound.override) == ("spec.token", (MINT,), None)
    legacy = grants(make_identity({"rules": [CREATE_PODS], "token": {"type": "Legacy"}}))[-1]
    assert legacy.needs == (Request("create", "", "secrets", namespace="team-a"),)


def test_overrides_are_asked_first_and_permissions_only_where_they_are_denied(
    make_identity: IdentityFactory,
) -> None:
    wanted = grants(make_identity({"rules": [CREATE_PODS], "clusterRoles": ["view"]}))
    bind_view = Request("bind", RBAC, "clusterroles", namespace="team-a", name="view")
    first = questions(wanted, {})
    assert first == [ESCALATE_HERE, bind_view, MINT]  # the token has no override
    answers = {ESCALATE_HERE: True, bind_view: True, MINT: True}
    assert questions(wanted, answers) == []
    assert refusals(wanted, answers) == []
    answers[ESCALATE_HERE] = False
    assert questions(wanted, answers) == [Request("create", "", "pods", namespace="team-a")]


def test_a_cluster_role_is_read_only_when_bind_on_it_is_denied(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity({"clusterRoles": ["view"]})
    bind_view = Request("bind", RBAC, "clusterroles", namespace="team-a", name="view")
    assert unexpanded(grants(identity), {bind_view: True, MINT: True}) == set()
    assert unexpanded(grants(identity), {bind_view: False, MINT: True}) == {"view"}
    expanded = grants(identity, {"view": VIEW_RULES})
    answers = {bind_view: False, MINT: True}
    asked = questions(expanded, answers)
    assert set(asked) == {
        Request("get", "", "pods", namespace="team-a"),
        Request("get", "", "configmaps", namespace="team-a"),
    }
    answers |= dict.fromkeys(asked, True)
    assert refusals(expanded, answers) == []  # holding every rule of view is enough


def test_a_refusal_names_the_field_the_requester_and_what_it_lacks(
    make_identity: IdentityFactory,
) -> None:
    spec = {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]}
    wanted = grants(make_identity(spec))
    answers = {ESCALATE_HERE: False, MINT: True, Request("*", "", "pods", "", "team-a"): False}
    (refusal,) = refusals(wanted, answers)
    assert refusal.message("system:serviceaccount:team-a:ci") == (
        "spec.rules[0]: system:serviceaccount:team-a:ci may not * pods in team-a"
    )


def test_a_refused_cluster_role_says_bind_and_the_rules_it_lacks(
    make_identity: IdentityFactory,
) -> None:
    wanted = grants(make_identity({"clusterRoles": ["view"]}), {"view": VIEW_RULES})
    bind_view = Request("bind", RBAC, "clusterroles", namespace="team-a", name="view")
    pods = Request("get", "", "pods", namespace="team-a")
    answers = {bind_view: False, MINT: True, pods: False}
    (refusal,) = refusals(wanted, answers)
    assert refusal.message("bob") == (
        "spec.clusterRoles[0]: bob may not bind ClusterRole view and lacks some of its "
        "permissions: may not get pods in team-a, get configmaps in team-a"
    )


def test_an_unread_cluster_role_is_refused_on_bind_alone() -> None:
    bind = Request("bind", RBAC, "clusterroles", namespace="team-a", name="edit")
    grant = Grant("spec.clusterRoles[0]", (), bind, "edit", expanded=False)
    (refusal,) = refusals([grant], {bind: False})
    assert refusal.message("bob") == (
        "spec.clusterRoles[0]: bob may not bind clusterroles.rbac.authorization.k8s.io/edit "
        "in team-a"
    )


def test_long_lists_of_missing_permissions_are_counted_not_spelled_out(
    make_identity: IdentityFactory,
) -> None:
    rule = {"apiGroups": [""], "resources": ["a", "b", "c", "d", "e"], "verbs": ["get"]}
    wanted = grants(make_identity({"rules": [rule]}))
    (refusal,) = refusals(wanted, {ESCALATE_HERE: False, MINT: True})
    assert refusal.message("bob").endswith("get c in team-a (and 2 more)")


# --- an unstamped spec ----------------------------------------------------------------------


def test_an_unstamped_spec_is_refused_whatever_its_status_says(body: BodyFactory) -> None:
    """Status is writable by others: a forged "provisioned at this generation" must not stand
    in for the requester admission records."""
    doc = body({"rules": [POD_READER]})
    provisioned = {"type": "Provisioned", "status": "True", "reason": "Applied"}
    doc["status"] = {
        "observedGeneration": doc["metadata"]["generation"],
        "conditions": [provisioned],
    }
    identity = parse_identity(doc)
    case = Case(doc, identity, dict(doc["status"]), datetime.now(UTC), True, set(), None)  # type: ignore[arg-type]
    # discovery finds nothing to refuse: the requester is what is judged here
    runtime = SimpleNamespace(
        policy=load_policy(None), discovery=SimpleNamespace(judge=lambda *_: [])
    )
    with pytest.raises(Stop) as stopped:
        judge(runtime, case, Memory())  # type: ignore[arg-type]
    assert stopped.value.reason == "EscalationRefused"
    assert "no requester recorded" in stopped.value.message
