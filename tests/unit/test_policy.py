"""policy.py: the operator-wide guardrails, their file format and the check of one identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from appidentity.policy import (
    ClusterRulesPolicy,
    Policy,
    PolicyFileError,
    SecretsPolicy,
    TokenPolicy,
    Violation,
    check,
    load_policy,
)

from .conftest import POD_READER, IdentityFactory

SECRETS = {"apiGroups": [""], "resources": ["secrets"]}


def rules_spec(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"rules": list(rules), **extra}


# --- defaults and the file ----------------------------------------------------------------------


def test_default_policy_is_the_safe_one() -> None:
    policy = Policy()
    assert policy.allow_wildcards is False
    assert policy.forbidden_verbs == ["escalate", "bind", "impersonate"]
    assert policy.forbidden_resources == [
        "serviceaccounts/token",
        "pods/exec",
        "pods/attach",
        "nodes/proxy",
        "certificatesigningrequests/approval",
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
        "persistentvolumes",
    ]
    assert policy.secrets == SecretsPolicy(
        allow_list=False, allow_watch=False, get_requires_resource_names=True
    )
    assert policy.allowed_cluster_roles == ["view"]
    assert policy.cluster_rules.allowed_namespaces == []
    assert policy.token == TokenPolicy(max_expiration_seconds=86_400, allow_legacy=True)


def test_no_policy_file_means_the_defaults() -> None:
    assert load_policy(None) == Policy()


def test_empty_policy_file_means_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("")
    assert load_policy(path) == Policy()


def test_policy_file_only_states_differences(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "secrets: {allowList: true}\n"
        "clusterRules: {allowedNamespaces: [ops]}\n"
        "allowedClusterRoles: [view, edit]\n"
        "token: {maxExpirationSeconds: 7200, allowLegacy: false}\n"
    )
    assert load_policy(path) == Policy(
        secrets=SecretsPolicy(allow_list=True),
        cluster_rules=ClusterRulesPolicy(allowed_namespaces=["ops"]),
        allowed_cluster_roles=["view", "edit"],
        token=TokenPolicy(max_expiration_seconds=7200, allow_legacy=False),
    )


def test_bad_yaml_names_the_file_and_the_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("allowWildcards: [\n")
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(f"policy file {path}: ")
    assert "line 2" in message


def test_missing_policy_file_is_a_policy_file_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"policy file {path}: [Errno 2] No such file or directory")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("allowWildcard: true\n", "allowWildcard: Extra inputs are not permitted"),
        ("secrets: {allowGet: true}\n", "secrets.allowGet: Extra inputs are not permitted"),
        (
            "token: {maxExpirationSeconds: abc}\n",
            "token.maxExpirationSeconds: Input should be a valid integer, "
            "unable to parse string as an integer",
        ),
        (
            "token: {maxExpirationSeconds: 100}\n",
            "token.maxExpirationSeconds: Input should be greater than or equal to 600",
        ),
        ("allowedClusterRoles: view\n", "allowedClusterRoles: Input should be a valid list"),
        (
            "allowWildcards: sometimes\n",
            "allowWildcards: Input should be a valid boolean, unable to interpret input",
        ),
    ],
    ids=["unknown-key", "unknown-nested-key", "not-int", "below-min", "not-list", "not-bool"],
)
def test_invalid_policy_names_the_key(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert str(caught.value) == f"policy file {path}: {problem}"


def test_every_policy_problem_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("bogus: 1\ntoken: {allowLegacy: perhaps}\n")
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert str(caught.value) == (
        f"policy file {path}: "
        "token.allowLegacy: Input should be a valid boolean, unable to interpret input; "
        "bogus: Extra inputs are not permitted"
    )


def test_violation_reads_as_field_message_and_rule() -> None:
    violation = Violation("forbiddenVerbs", "spec.rules[0].verbs", "verb 'bind' is forbidden")
    assert (
        str(violation) == "spec.rules[0].verbs: verb 'bind' is forbidden (policy: forbiddenVerbs)"
    )


# --- check: a clean spec -------------------------------------------------------------------------


def test_clean_spec_has_no_violations(make_identity: IdentityFactory) -> None:
    spec = {
        "rules": [POD_READER, {**SECRETS, "verbs": ["get"], "resourceNames": ["db-creds"]}],
        "clusterRoles": ["view"],
        "namespaces": [{"name": "team-b", "rules": [POD_READER], "clusterRoles": ["view"]}],
        "token": {"expirationSeconds": 86_400},
    }
    assert check(make_identity(spec, namespace="team-a"), Policy()) == []


# --- check: wildcards ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}, "verbs"),
        ({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}, "apiGroups"),
        ({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}, "resources"),
        ({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}, "resources"),
        ({"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["get"]}, "resources"),
    ],
    ids=["verbs", "apiGroups", "resources", "subresource-star", "star-subresource"],
)
def test_wildcards_are_violations_by_default(
    make_identity: IdentityFactory, rule: dict[str, Any], key: str
) -> None:
    identity = make_identity(rules_spec(POD_READER, rule))
    assert check(identity, Policy()) == [
        Violation("allowWildcards", f"spec.rules[1].{key}", "wildcards are not allowed")
    ]


def test_wildcard_non_resource_url_is_a_violation(make_identity: IdentityFactory) -> None:
    identity = make_identity(
        {"clusterRules": [{"nonResourceURLs": ["/metrics*"], "verbs": ["get"]}]}, namespace="ops"
    )
    policy = Policy(cluster_rules=ClusterRulesPolicy(allowed_namespaces=["ops"]))
    assert check(identity, policy) == [
        Violation(
            "allowWildcards", "spec.clusterRules[0].nonResourceURLs", "wildcards are not allowed"
        )
    ]


def test_wildcards_pass_when_the_policy_allows_them(make_identity: IdentityFactory) -> None:
    identity = make_identity(rules_spec({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}))
    assert check(identity, Policy(allow_wildcards=True)) == []


def test_each_wildcard_field_is_reported_separately(make_identity: IdentityFactory) -> None:
    identity = make_identity(rules_spec({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}))
    assert [v.field for v in check(identity, Policy())] == [
        "spec.rules[0].verbs",
        "spec.rules[0].apiGroups",
        "spec.rules[0].resources",
    ]


# --- check: forbidden verbs and resources --------------------------------------------------------


@pytest.mark.parametrize("verb", ["escalate", "bind", "impersonate"])
def test_forbidden_verbs_are_violations(make_identity: IdentityFactory, verb: str) -> None:
    rule = {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles"],
        "verbs": ["get", verb],
    }
    assert check(make_identity(rules_spec(rule)), Policy()) == [
        Violation("forbiddenVerbs", "spec.rules[0].verbs", f"verb {verb!r} is forbidden")
    ]


@pytest.mark.parametrize(
    ("group", "resource"),
    [
        ("", "serviceaccounts/token"),
        ("", "pods/exec"),
        ("", "pods/attach"),
        ("", "nodes/proxy"),
        ("certificates.k8s.io", "certificatesigningrequests/approval"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("", "persistentvolumes"),
    ],
)
def test_forbidden_resources_are_violations(
    make_identity: IdentityFactory, group: str, resource: str
) -> None:
    rule = {"apiGroups": [group], "resources": ["configmaps", resource], "verbs": ["get"]}
    assert check(make_identity(rules_spec(rule)), Policy()) == [
        Violation(
            "forbiddenResources", "spec.rules[0].resources", f"resource {resource!r} is forbidden"
        )
    ]


def test_forbidden_lists_are_configurable(make_identity: IdentityFactory) -> None:
    rule = {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "bind"]}
    policy = Policy(forbidden_verbs=[], forbidden_resources=[])
    assert check(make_identity(rules_spec(rule)), policy) == []


# --- check: secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "violation"),
    [
        (
            "list",
            Violation("secrets.allowList", "spec.rules[0].verbs", "listing secrets is forbidden"),
        ),
        (
            "watch",
            Violation("secrets.allowWatch", "spec.rules[0].verbs", "watching secrets is forbidden"),
        ),
    ],
)
def test_listing_or_watching_secrets_is_a_violation(
    make_identity: IdentityFactory, verb: str, violation: Violation
) -> None:
    rule = {**SECRETS, "verbs": [verb], "resourceNames": ["db-creds"]}
    assert check(make_identity(rules_spec(rule)), Policy()) == [violation]


def test_listing_and_watching_secrets_pass_when_allowed(make_identity: IdentityFactory) -> None:
    rule = {**SECRETS, "verbs": ["list", "watch"]}
    policy = Policy(secrets=SecretsPolicy(allow_list=True, allow_watch=True))
    assert check(make_identity(rules_spec(rule)), policy) == []


def test_get_secrets_without_resource_names_is_a_violation(make_identity: IdentityFactory) -> None:
    rule = {**SECRETS, "verbs": ["get"]}
    assert check(make_identity(rules_spec(rule)), Policy()) == [
        Violation(
            "secrets.getRequiresResourceNames",
            "spec.rules[0].resourceNames",
            "reading secrets requires resourceNames",
        )
    ]


def test_get_secrets_with_resource_names_is_allowed(make_identity: IdentityFactory) -> None:
    rule = {**SECRETS, "verbs": ["get"], "resourceNames": ["db-creds"]}
    assert check(make_identity(rules_spec(rule)), Policy()) == []


def test_get_secrets_without_names_passes_when_not_required(make_identity: IdentityFactory) -> None:
    policy = Policy(secrets=SecretsPolicy(get_requires_resource_names=False))
    assert check(make_identity(rules_spec({**SECRETS, "verbs": ["get"]})), policy) == []


def test_secrets_of_another_api_group_are_not_core_secrets(make_identity: IdentityFactory) -> None:
    rule = {
        "apiGroups": ["example.com"],
        "resources": ["secrets"],
        "verbs": ["get", "list", "watch"],
    }
    assert check(make_identity(rules_spec(rule)), Policy()) == []


def test_get_list_watch_secrets_gives_three_violations(make_identity: IdentityFactory) -> None:
    rule = {**SECRETS, "verbs": ["get", "list", "watch"]}
    assert [v.rule for v in check(make_identity(rules_spec(rule)), Policy())] == [
        "secrets.allowList",
        "secrets.allowWatch",
        "secrets.getRequiresResourceNames",
    ]


# --- check: ClusterRoles and namespaces ----------------------------------------------------------


def test_cluster_role_outside_the_allowlist_is_named_by_index(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity({"clusterRoles": ["view", "edit"]})
    assert check(identity, Policy()) == [
        Violation(
            "allowedClusterRoles",
            "spec.clusterRoles[1]",
            "ClusterRole 'edit' is not in the allowlist ['view']",
        )
    ]


def test_cluster_role_in_namespace_grant_is_named_by_both_indices(
    make_identity: IdentityFactory,
) -> None:
    spec = {
        "namespaces": [
            {"name": "team-b", "clusterRoles": ["view"]},
            {"name": "team-c", "clusterRoles": ["view", "admin", "edit"]},
        ]
    }
    assert [(v.rule, v.field) for v in check(make_identity(spec), Policy())] == [
        ("allowedClusterRoles", "spec.namespaces[1].clusterRoles[1]"),
        ("allowedClusterRoles", "spec.namespaces[1].clusterRoles[2]"),
    ]


def test_allowlist_is_configurable(make_identity: IdentityFactory) -> None:
    identity = make_identity({"clusterRoles": ["edit"]})
    assert check(identity, Policy(allowed_cluster_roles=["edit"])) == []


def test_rules_in_namespace_grants_are_named_by_both_indices(
    make_identity: IdentityFactory,
) -> None:
    spec = {
        "namespaces": [
            {"name": "team-b", "clusterRoles": ["view"]},
            {"name": "team-c", "rules": [POD_READER, {**SECRETS, "verbs": ["list"]}]},
        ]
    }
    assert check(make_identity(spec), Policy()) == [
        Violation(
            "secrets.allowList", "spec.namespaces[1].rules[1].verbs", "listing secrets is forbidden"
        )
    ]


def test_grant_into_own_namespace_is_a_violation(make_identity: IdentityFactory) -> None:
    spec = {
        "namespaces": [
            {"name": "team-b", "clusterRoles": ["view"]},
            {"name": "team-a", "rules": [POD_READER]},
        ]
    }
    assert check(make_identity(spec, namespace="team-a"), Policy()) == [
        Violation("namespaces", "spec.namespaces[1].name", "is the identity's own namespace")
    ]


# --- check: clusterRules -------------------------------------------------------------------------


CLUSTER_NODES = {"clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]}


def test_cluster_rules_from_a_namespace_not_allowed_are_a_violation(
    make_identity: IdentityFactory,
) -> None:
    policy = Policy(cluster_rules=ClusterRulesPolicy(allowed_namespaces=["ops"]))
    assert check(make_identity(CLUSTER_NODES, namespace="team-a"), policy) == [
        Violation(
            "clusterRules.allowedNamespaces",
            "spec.clusterRules",
            "cluster-wide rules are not enabled for namespace 'team-a'",
        )
    ]


def test_cluster_rules_are_off_by_default(make_identity: IdentityFactory) -> None:
    assert [v.rule for v in check(make_identity(CLUSTER_NODES, namespace="ops"), Policy())] == [
        "clusterRules.allowedNamespaces"
    ]


def test_cluster_rules_from_an_allowed_namespace_pass(make_identity: IdentityFactory) -> None:
    policy = Policy(cluster_rules=ClusterRulesPolicy(allowed_namespaces=["ops"]))
    assert check(make_identity(CLUSTER_NODES, namespace="ops"), policy) == []


def test_cluster_rules_are_checked_rule_by_rule(make_identity: IdentityFactory) -> None:
    spec = {
        "clusterRules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]},
        ]
    }
    policy = Policy(cluster_rules=ClusterRulesPolicy(allowed_namespaces=["ops"]))
    assert check(make_identity(spec, namespace="ops"), policy) == [
        Violation("forbiddenVerbs", "spec.clusterRules[1].verbs", "verb 'impersonate' is forbidden")
    ]


# --- check: token -----------------------------------------------------------------------------


def test_legacy_token_is_a_violation_when_turned_off(make_identity: IdentityFactory) -> None:
    identity = make_identity(rules_spec(POD_READER, token={"type": "Legacy"}))
    assert check(identity, Policy(token=TokenPolicy(allow_legacy=False))) == [
        Violation("token.allowLegacy", "spec.token.type", "Legacy tokens are off")
    ]


def test_legacy_token_is_allowed_by_default(make_identity: IdentityFactory) -> None:
    assert check(make_identity(rules_spec(POD_READER, token={"type": "Legacy"})), Policy()) == []


def test_expiration_above_the_cap_is_a_violation(make_identity: IdentityFactory) -> None:
    identity = make_identity(rules_spec(POD_READER, token={"expirationSeconds": 86_401}))
    assert check(identity, Policy()) == [
        Violation(
            "token.maxExpirationSeconds",
            "spec.token.expirationSeconds",
            "86401s exceeds the cap of 86400s",
        )
    ]


def test_expiration_at_the_cap_passes(make_identity: IdentityFactory) -> None:
    identity = make_identity(rules_spec(POD_READER, token={"expirationSeconds": 86_400}))
    assert check(identity, Policy()) == []


def test_default_lifetime_counts_against_a_lower_cap(make_identity: IdentityFactory) -> None:
    policy = Policy(token=TokenPolicy(max_expiration_seconds=1800))
    assert check(make_identity(), policy) == [
        Violation(
            "token.maxExpirationSeconds",
            "spec.token.expirationSeconds",
            "3600s exceeds the cap of 1800s",
        )
    ]


def test_legacy_token_is_not_held_to_the_lifetime_cap(make_identity: IdentityFactory) -> None:
    identity = make_identity(rules_spec(POD_READER, token={"type": "Legacy"}))
    assert check(identity, Policy(token=TokenPolicy(max_expiration_seconds=600))) == []


def test_violations_come_in_spec_order(make_identity: IdentityFactory) -> None:
    spec = {
        "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}],
        "clusterRoles": ["admin"],
        "namespaces": [{"name": "team-a", "clusterRoles": ["view"]}],
        "clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["*"]}],
        "token": {"type": "Legacy"},
    }
    policy = Policy(token=TokenPolicy(allow_legacy=False))
    assert [v.field for v in check(make_identity(spec, namespace="team-a"), policy)] == [
        "spec.rules[0].resources",
        "spec.clusterRoles[0]",
        "spec.namespaces[0].name",
        "spec.clusterRules",
        "spec.clusterRules[0].verbs",
        "spec.token.type",
    ]


# --- the verbs admission can judge without the cluster ---------------------------------------


def test_the_policy_refuses_a_verb_kubernetes_does_not_know(make_identity: IdentityFactory) -> None:
    identity = make_identity(
        {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "gett"]}]}
    )
    (violation,) = check(identity, Policy())
    assert str(violation) == (
        "spec.rules[0].verbs[1]: 'gett' is neither a Kubernetes verb (get, list, watch, create, "
        "update, patch, delete, deletecollection, use, bind, escalate, impersonate, approve, "
        "sign, attest) nor one of extraVerbs (policy: extraVerbs)"
    )
    assert check(identity, Policy(extra_verbs=["gett"])) == []


def test_the_policy_leaves_http_verbs_of_url_rules_alone(make_identity: IdentityFactory) -> None:
    identity = make_identity(
        {"clusterRules": [{"nonResourceURLs": ["/healthz"], "verbs": ["post", "head"]}]},
        namespace="ops",
    )
    policy = Policy.model_validate({"clusterRules": {"allowedNamespaces": ["ops"]}})
    assert check(identity, policy) == []
