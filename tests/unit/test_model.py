"""model.py: the AppIdentity spec as types; every refusal names the field it is about."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from appidentity.model import (
    ClusterRule,
    NamespacedRule,
    Schedule,
    SpecError,
    identity_key,
    parse_identity,
    rfc3339,
)

from .conftest import POD_READER, BodyFactory, IdentityFactory

NB = datetime(2026, 12, 1, tzinfo=UTC)
EXP = datetime(2026, 12, 31, tzinfo=UTC)
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def problems_of(body: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_identity(body)
    return caught.value.problems


# --- rules -------------------------------------------------------------------------------------


def test_missing_verbs_names_the_rule_index(body: BodyFactory) -> None:
    no_verbs = {"apiGroups": [""], "resources": ["configmaps"]}
    assert problems_of(body({"rules": [POD_READER, no_verbs]})) == [
        "spec.rules[1].verbs: Field required"
    ]


def test_empty_verbs_list_is_refused(body: BodyFactory) -> None:
    rule = {"apiGroups": [""], "resources": ["pods"], "verbs": []}
    assert problems_of(body({"rules": [rule]})) == [
        "spec.rules[0].verbs: Tuple should have at least 1 item after validation, not 0"
    ]


def test_non_resource_urls_refused_in_spec_rules(body: BodyFactory) -> None:
    rule = {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    assert problems_of(body({"rules": [rule]})) == [
        "spec.rules[0].nonResourceURLs: only spec.clusterRules may hold nonResourceURLs; "
        "a namespaced rule names apiGroups and resources"
    ]


def test_non_resource_urls_refused_in_namespace_grant_rules(body: BodyFactory) -> None:
    spec = {
        "namespaces": [
            {"name": "team-b", "clusterRoles": ["view"]},
            {
                "name": "team-c",
                "rules": [POD_READER, {"nonResourceURLs": ["/x"], "verbs": ["get"]}],
            },
        ]
    }
    assert problems_of(body(spec)) == [
        "spec.namespaces[1].rules[1].nonResourceURLs: only spec.clusterRules may hold "
        "nonResourceURLs; a namespaced rule names apiGroups and resources"
    ]


def test_namespaced_rule_needs_api_groups_and_resources(body: BodyFactory) -> None:
    rule = {"resources": ["pods"], "verbs": ["get"]}
    assert problems_of(body({"rules": [rule]})) == ["spec.rules[0].apiGroups: Field required"]


def test_cluster_rule_mixing_non_resource_urls_and_resources_is_refused(
    body: BodyFactory,
) -> None:
    rule = {
        "nonResourceURLs": ["/healthz"],
        "apiGroups": [""],
        "resources": ["nodes"],
        "verbs": ["get"],
    }
    assert problems_of(body({"clusterRules": [rule]})) == [
        "spec.clusterRules[0]: set either nonResourceURLs, or apiGroups and resources"
    ]


def test_cluster_rule_with_neither_urls_nor_resources_is_refused(body: BodyFactory) -> None:
    assert problems_of(body({"clusterRules": [{"apiGroups": [""], "verbs": ["get"]}]})) == [
        "spec.clusterRules[0]: resource rules need both apiGroups and resources"
    ]


def test_cluster_rule_with_only_non_resource_urls_is_accepted(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity(
        {"clusterRules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}
    )
    assert identity.spec.cluster_rules[0].to_k8s() == {
        "verbs": ["get"],
        "nonResourceURLs": ["/metrics"],
    }


def test_rule_to_k8s_adds_resource_names_only_when_set() -> None:
    plain = NamespacedRule.model_validate(POD_READER)
    named = NamespacedRule.model_validate({**POD_READER, "resourceNames": ["web-0"]})
    assert plain.to_k8s() == {
        "verbs": ["get", "list", "watch"],
        "apiGroups": [""],
        "resources": ["pods"],
    }
    assert named.to_k8s() == {
        "verbs": ["get", "list", "watch"],
        "apiGroups": [""],
        "resources": ["pods"],
        "resourceNames": ["web-0"],
    }


def test_cluster_rule_resource_form_round_trips() -> None:
    rule = ClusterRule.model_validate(
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}
    )
    assert rule.to_k8s() == {"verbs": ["list"], "apiGroups": [""], "resources": ["nodes"]}


# --- token ------------------------------------------------------------------------------------


def test_expiration_below_600_seconds_is_refused(body: BodyFactory) -> None:
    spec = {"rules": [POD_READER], "token": {"expirationSeconds": 599}}
    assert problems_of(body(spec)) == [
        "spec.token.expirationSeconds: Input should be greater than or equal to 600"
    ]


def test_expiration_of_exactly_600_seconds_is_accepted(make_identity: IdentityFactory) -> None:
    identity = make_identity({"rules": [POD_READER], "token": {"expirationSeconds": 600}})
    assert identity.spec.token.lifetime_seconds == 600


@pytest.mark.parametrize(
    "token",
    [
        {"type": "Legacy", "expirationSeconds": 3600},
        {"type": "Legacy", "audiences": ["vault"]},
    ],
    ids=["expirationSeconds", "audiences"],
)
def test_legacy_token_refuses_bound_only_settings(body: BodyFactory, token: dict[str, Any]) -> None:
    assert problems_of(body({"rules": [POD_READER], "token": token})) == [
        "spec.token: expirationSeconds and audiences apply only to type Bound"
    ]


def test_unknown_token_type_is_refused(body: BodyFactory) -> None:
    assert problems_of(body({"rules": [POD_READER], "token": {"type": "Forever"}})) == [
        "spec.token.type: Input should be 'Bound' or 'Legacy'"
    ]


# --- schedule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("not_before", "expires_at"),
    [
        ("2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("2026-12-31T00:00:00Z", "2026-12-01T00:00:00Z"),
    ],
    ids=["equal", "reversed"],
)
def test_schedule_not_before_must_precede_expires_at(
    body: BodyFactory, not_before: str, expires_at: str
) -> None:
    spec = {"rules": [POD_READER], "schedule": {"notBefore": not_before, "expiresAt": expires_at}}
    assert problems_of(body(spec)) == ["spec.schedule: notBefore must be before expiresAt"]


def test_schedule_is_parsed_as_utc_instants(make_identity: IdentityFactory) -> None:
    spec = {
        "rules": [POD_READER],
        "schedule": {"notBefore": "2026-12-01T00:00:00Z", "expiresAt": "2026-12-31T00:00:00Z"},
    }
    schedule = make_identity(spec).spec.schedule
    assert (schedule.not_before, schedule.expires_at) == (NB, EXP)


@pytest.mark.parametrize(
    ("now", "active"),
    [
        (NB - timedelta(seconds=1), False),
        (NB, True),
        (NB + timedelta(days=10), True),
        (EXP - timedelta(seconds=1), True),
        (EXP, False),
        (EXP + timedelta(days=1), False),
    ],
    ids=["before", "at-notBefore", "inside", "just-before-expiry", "at-expiresAt", "after"],
)
def test_schedule_active_window_is_half_open(now: datetime, active: bool) -> None:
    assert Schedule(not_before=NB, expires_at=EXP).active_at(now) is active


def test_empty_schedule_is_always_active() -> None:
    assert Schedule().active_at(datetime(1999, 1, 1, tzinfo=UTC)) is True
    assert Schedule().next_change_after(datetime(1999, 1, 1, tzinfo=UTC)) is None


def test_schedule_with_only_expiry_is_active_until_then() -> None:
    schedule = Schedule(expires_at=EXP)
    assert schedule.active_at(EXP - timedelta(seconds=1)) is True
    assert schedule.active_at(EXP) is False


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NB - timedelta(days=1), NB),
        (NB, EXP),
        (NB + timedelta(days=1), EXP),
        (EXP, None),
        (EXP + timedelta(days=1), None),
    ],
    ids=["before", "at-notBefore", "inside", "at-expiresAt", "after"],
)
def test_next_change_after_is_the_next_flip(now: datetime, expected: datetime | None) -> None:
    assert Schedule(not_before=NB, expires_at=EXP).next_change_after(now) == expected


def test_schedule_without_timezone_is_refused_or_read_as_utc(body: BodyFactory) -> None:
    spec = {
        "rules": [POD_READER],
        "schedule": {"notBefore": "2026-12-01T00:00:00", "expiresAt": "2026-12-31T00:00:00Z"},
    }
    try:
        identity = parse_identity(body(spec))
    except SpecError as exc:
        assert exc.problems[0].startswith("spec.schedule.notBefore: ")
        return
    schedule = identity.spec.schedule
    assert schedule.not_before == NB
    assert schedule.active_at(NB) is True


def test_lone_naive_not_before_does_not_crash_active_at(body: BodyFactory) -> None:
    spec = {"rules": [POD_READER], "schedule": {"notBefore": "2026-12-01T00:00:00"}}
    try:
        identity = parse_identity(body(spec))
    except SpecError as exc:
        assert exc.problems[0].startswith("spec.schedule.notBefore: ")
        return
    assert identity.spec.schedule.active_at(NB - timedelta(seconds=1)) is False


# --- unknown fields and wrong types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"rules": [POD_READER], "bogus": 1}, "spec.bogus: Extra inputs are not permitted"),
        (
            {"rules": [{**POD_READER, "resourceName": ["x"]}]},
            "spec.rules[0].resourceName: Extra inputs are not permitted",
        ),
        (
            {"rules": [POD_READER], "token": {"lifetime": 600}},
            "spec.token.lifetime: Extra inputs are not permitted",
        ),
        (
            {"rules": [POD_READER], "serviceAccount": {"automount": True}},
            "spec.serviceAccount.automount: Extra inputs are not permitted",
        ),
    ],
    ids=["top-level", "in-rule", "in-token", "in-serviceAccount"],
)
def test_unknown_fields_are_refused_by_path(
    body: BodyFactory, spec: dict[str, Any], problem: str
) -> None:
    assert problems_of(body(spec)) == [problem]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"rules": "pods"}, "spec.rules: Input should be a valid tuple"),
        (
            {"rules": [POD_READER], "token": {"kubeconfig": "maybe"}},
            "spec.token.kubeconfig: Input should be a valid boolean",
        ),
        (
            {"rules": [POD_READER], "token": {"expirationSeconds": "soon"}},
            "spec.token.expirationSeconds: Input should be a valid integer",
        ),
        (
            {"rules": [POD_READER], "verification": {"intervalSeconds": 10}},
            "spec.verification.intervalSeconds: Input should be greater than or equal to 30",
        ),
        (
            {"rules": [POD_READER], "verification": {"mustDeny": [{"verb": "delete"}]}},
            "spec.verification.mustDeny[0].resource: Field required",
        ),
    ],
    ids=[
        "rules-not-list",
        "kubeconfig-not-bool",
        "seconds-not-int",
        "interval-too-short",
        "mustDeny",
    ],
)
def test_wrong_types_are_refused_by_path(
    body: BodyFactory, spec: dict[str, Any], problem: str
) -> None:
    assert problems_of(body(spec)) == [problem]


# --- names ------------------------------------------------------------------------------------


def test_name_longer_than_63_characters_is_refused(body: BodyFactory) -> None:
    assert problems_of(body({"rules": [POD_READER]}, name="a" * 64, namespace="ns")) == [
        "metadata.name: must be a DNS-1123 label of at most 63 characters"
    ]


def test_name_of_exactly_63_characters_is_accepted(make_identity: IdentityFactory) -> None:
    assert make_identity(name="a" * 63, namespace="ns").name == "a" * 63


@pytest.mark.parametrize("name", ["Billing", "bad_name", "-lead", "trail-", "a.b", ""])
def test_name_that_is_not_a_dns_label_is_refused(body: BodyFactory, name: str) -> None:
    assert problems_of(body({"rules": [POD_READER]}, name=name)) == [
        "metadata.name: must be a DNS-1123 label of at most 63 characters"
    ]


def test_identity_key_is_namespace_dot_name_when_it_fits_a_label() -> None:
    assert identity_key("team-a", "billing-reader") == "team-a.billing-reader"
    exactly = identity_key("s" * 30, "n" * 32)
    assert exactly == "s" * 30 + "." + "n" * 32
    assert len(exactly) == 63


def test_identity_key_too_long_for_a_label_is_prefix_and_hash() -> None:
    namespace, name = "s" * 30, "n" * 33  # 64 characters joined
    key = identity_key(namespace, name)
    digest = hashlib.sha256(f"{namespace}.{name}".encode()).hexdigest()[:12]
    assert key == f"{'s' * 30}.{'n' * 19}-{digest}"
    assert len(key) == 63
    assert LABEL_VALUE.match(key)


def test_identity_key_hash_tells_long_names_with_a_shared_prefix_apart() -> None:
    one = identity_key("team-a", "x" * 60 + "one")
    two = identity_key("team-a", "x" * 60 + "two")
    assert one[:50] == two[:50]
    assert one != two
    assert identity_key("team-a", "x" * 60 + "one") == one


def test_identity_key_prefix_never_ends_in_a_separator() -> None:
    # the cut lands right after the '.', which must not be left before the '-<hash>'
    key = identity_key("s" * 49, "n" * 20)
    assert key.startswith("s" * 49 + "-")
    assert LABEL_VALUE.match(key)


def test_long_identity_gets_the_hashed_key_in_its_labels(make_identity: IdentityFactory) -> None:
    identity = make_identity(name="n" * 63, namespace="s" * 63)
    assert identity.key == identity_key("s" * 63, "n" * 63)
    assert identity.labels["appidentity.dev/identity"] == identity.key
    assert len(identity.key) == 63


def test_namespace_grant_name_longer_than_63_is_refused(body: BodyFactory) -> None:
    spec = {"namespaces": [{"name": "b" * 64, "clusterRoles": ["view"]}]}
    assert problems_of(body(spec)) == [
        "spec.namespaces[0].name: String should have at most 63 characters"
    ]


def test_namespace_grant_name_of_63_is_accepted(make_identity: IdentityFactory) -> None:
    identity = make_identity({"namespaces": [{"name": "b" * 63, "clusterRoles": ["view"]}]})
    assert identity.grant_namespaces == ("b" * 63,)


def test_namespace_grant_name_must_be_a_dns_label(body: BodyFactory) -> None:
    spec = {"namespaces": [{"name": "Team_B", "clusterRoles": ["view"]}]}
    (problem,) = problems_of(body(spec))
    assert problem.startswith("spec.namespaces[0].name: String should match pattern ")


def test_metadata_and_spec_problems_are_reported_together(body: BodyFactory) -> None:
    with pytest.raises(SpecError) as caught:
        parse_identity(body({"rules": [POD_READER], "bogus": True}, name="A"))
    assert caught.value.problems == [
        "metadata.name: must be a DNS-1123 label of at most 63 characters",
        "spec.bogus: Extra inputs are not permitted",
    ]
    assert str(caught.value) == "; ".join(caught.value.problems)


# --- what the spec grants -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [{}, {"rules": []}, {"rules": [], "clusterRoles": [], "namespaces": [], "clusterRules": []}],
    ids=["empty", "empty-rules", "every-grant-empty"],
)
def test_spec_without_any_grant_is_valid(body: BodyFactory, spec: dict[str, Any]) -> None:
    """An identity that only authenticates elsewhere: a ServiceAccount and token, no grant."""
    identity = parse_identity(body(spec))
    assert identity.spec.rules == () and identity.spec.cluster_rules == ()


def test_absent_spec_is_refused_as_the_crd_requires_it(body: BodyFactory) -> None:
    assert problems_of(body(None)) == ["spec: Required value"]


def test_duplicate_namespace_grants_are_refused(body: BodyFactory) -> None:
    spec = {
        "namespaces": [
            {"name": "team-b", "clusterRoles": ["view"]},
            {"name": "team-b", "rules": [POD_READER]},
        ]
    }
    assert problems_of(body(spec)) == ["spec.namespaces[1]: Duplicate value: 'team-b'"]


@pytest.mark.parametrize(
    "grant", [{"name": "team-b"}, {"name": "team-b", "rules": [], "clusterRoles": []}]
)
def test_namespace_grant_that_grants_nothing_is_refused(
    body: BodyFactory, grant: dict[str, Any]
) -> None:
    assert problems_of(body({"namespaces": [grant]})) == [
        "spec.namespaces[0]: set rules or clusterRoles"
    ]


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        (["View!"], "spec.clusterRoles[0]: 'View!' is not a ClusterRole name"),
        (["view", "Admin"], "spec.clusterRoles[1]: 'Admin' is not a ClusterRole name"),
        (["view", "view"], "spec.clusterRoles[1]: Duplicate value: 'view'"),
        ([":view"], "spec.clusterRoles[0]: ':view' is not a ClusterRole name"),
    ],
)
def test_bad_cluster_role_names_are_refused(
    body: BodyFactory, roles: list[str], problem: str
) -> None:
    assert problems_of(body({"clusterRoles": roles})) == [problem]


def test_bad_cluster_role_name_in_namespace_grant_is_refused(body: BodyFactory) -> None:
    spec = {"namespaces": [{"name": "team-b", "clusterRoles": ["Bad"]}]}
    assert problems_of(body(spec)) == [
        "spec.namespaces[0].clusterRoles[0]: 'Bad' is not a ClusterRole name"
    ]


def test_cluster_role_names_with_colons_and_dots_are_accepted(
    make_identity: IdentityFactory,
) -> None:
    roles = ["system:auth-delegator", "example.com:reader", "view"]
    assert make_identity({"clusterRoles": roles}).spec.cluster_roles == tuple(roles)


# --- defaults and derived names -----------------------------------------------------------------


def test_defaults_follow_the_spec(make_identity: IdentityFactory) -> None:
    identity = make_identity(name="billing-reader", namespace="team-a", uid="u-1", generation=7)
    spec = identity.spec
    assert identity.service_account == "billing-reader"
    assert identity.secret_name == "billing-reader-token"
    assert spec.token.type == "Bound"
    assert spec.token.expiration_seconds is None
    assert spec.token.lifetime_seconds == 3600
    assert spec.token.audiences == ()
    assert spec.token.kubeconfig is True
    assert spec.service_account.automount_token is False
    assert spec.service_account.labels == {}
    assert spec.verification.interval_seconds == 600
    assert spec.verification.allow_excess is False
    assert spec.verification.must_deny == ()
    assert (identity.uid, identity.generation) == ("u-1", 7)


def test_identity_names_subject_key_and_labels(make_identity: IdentityFactory) -> None:
    identity = make_identity(name="billing-reader", namespace="team-a")
    assert identity.subject == "system:serviceaccount:team-a:billing-reader"
    assert identity.key == "team-a.billing-reader"
    assert identity.labels == {
        "app.kubernetes.io/managed-by": "appidentity-operator",
        "appidentity.dev/identity": "team-a.billing-reader",
    }


def test_explicit_service_account_and_secret_names_win(make_identity: IdentityFactory) -> None:
    spec = {
        "rules": [POD_READER],
        "serviceAccount": {"name": "reader-sa"},
        "token": {"secretName": "reader-creds"},
    }
    identity = make_identity(spec, namespace="team-a")
    assert identity.service_account == "reader-sa"
    assert identity.secret_name == "reader-creds"
    assert identity.subject == "system:serviceaccount:team-a:reader-sa"


def test_grant_namespaces_keep_spec_order(make_identity: IdentityFactory) -> None:
    spec = {
        "namespaces": [
            {"name": "team-c", "clusterRoles": ["view"]},
            {"name": "team-b", "clusterRoles": ["view"]},
        ]
    }
    assert make_identity(spec).grant_namespaces == ("team-c", "team-b")


def test_rfc3339_converts_to_utc_with_z_suffix() -> None:
    moment = datetime(2026, 12, 1, 2, 30, 15, 999, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(moment) == "2026-12-01T00:30:15Z"
