"""The self-check against an authorizer that is not RBAC: a Webhook authorizer before RBAC
(tests/authz_webhook.py) that allows what RBAC does not grant, or denies what it grants. Rules
reviews cannot see either (a webhook lists no rules, so they say `incomplete`); only the access
reviews and the real request made with the token can."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from appidentity.kube import Kube
from authz_webhook import NAMESPACE_PREFIX, AuthzWebhook
from kubernetes import client
from support import (
    READ_CONFIGMAPS,
    TEST_STATE_DIR,
    Cluster,
    Token,
    condition,
    create,
    identity,
    merge_patch,
    secret_token,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("operator")
NAME = "gated"


@pytest.fixture
def authz_webhook(cluster: Cluster) -> Iterator[AuthzWebhook]:
    """The webhook served and in the API server's chain for this test alone: the rest of the
    suite runs on RBAC alone, whose rules reviews are complete."""
    if cluster.external:
        pytest.skip("the webhook is put into the chain by hack/cluster.sh, on its own cluster")
    webhook = AuthzWebhook(TEST_STATE_DIR)
    webhook.start()
    try:
        webhook.switch("on")
        yield webhook
    finally:
        try:
            webhook.switch("off")
        finally:
            webhook.stop()


@pytest.fixture
def gated_namespace(make_namespace: Callable[[str], str]) -> str:
    """A namespace whose ServiceAccounts the webhook is asked about."""
    return make_namespace(NAMESPACE_PREFIX)


def user_of(namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{NAME}"


def ready_identity(kube: Kube, namespace: str) -> dict[str, Any]:
    create(kube, identity(NAME, namespace, rules=[READ_CONFIGMAPS]))
    obj = wait_ready(kube, namespace, NAME, timeout=90)
    assert condition(obj, "AccessVerified")["status"] == "True", condition(obj, "AccessVerified")
    return obj


def prove_again(kube: Kube, namespace: str, seconds: int) -> None:
    """A new generation: a full proof at once (a webhook's change moves no rules hash)."""
    patch = {"spec": {"verification": {"intervalSeconds": seconds}}}
    merge_patch(kube, "AppIdentity", namespace, NAME, patch)


def wait_failed(kube: Kube, namespace: str, reasons: set[str]) -> dict[str, Any]:
    """The identity once its latest generation's proof failed with one of `reasons`."""

    def failed() -> dict[str, Any] | None:
        obj = kube.get("AppIdentity", namespace, NAME) or {}
        verified = condition(obj, "AccessVerified")
        current = obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]
        done = current and verified.get("status") == "False" and verified["reason"] in reasons
        return obj if done else None

    found: dict[str, Any] = wait_until(failed, 90, f"{namespace}/{NAME} failing: {reasons}")
    return found


def failed_check(obj: dict[str, Any], verb: str, resource: str) -> dict[str, Any]:
    namespace = obj["metadata"]["namespace"]
    for check in obj["status"]["verification"]["failed"]:
        if (check["verb"], check["resource"], check["namespace"]) == (verb, resource, namespace):
            return dict(check)
    raise AssertionError(f"no failed check {verb} {resource}: {obj['status']['verification']}")


def test_no_opinion_changes_nothing_but_rules_reviews_say_incomplete(
    kube: Kube,
    authz_webhook: AuthzWebhook,
    gated_namespace: str,
    token_api: Callable[[Token], client.ApiClient],
) -> None:
    obj = ready_identity(kube, gated_namespace)
    # The operator saw the rules review was incomplete, so each check was an access review
    # (verify/decide.py), and it says so.
    assert "rules review incomplete" in condition(obj, "AccessVerified")["message"]
    assert user_of(gated_namespace) in authz_webhook.users_asked_about()
    strangers = {
        u
        for u in authz_webhook.users_asked_about()
        if not u.startswith(f"system:serviceaccount:{NAMESPACE_PREFIX}")
    }
    assert strangers == set(), "the chain's matchConditions let other users through"

    token = secret_token(kube, gated_namespace, f"{NAME}-token")
    assert token is not None
    review = client.V1SelfSubjectRulesReview(
        spec=client.V1SelfSubjectRulesReviewSpec(namespace=gated_namespace)
    )
    answer = client.AuthorizationV1Api(token_api(token)).create_self_subject_rules_review(review)
    assert answer.status is not None and answer.status.incomplete is True


# (b) a boundary action RBAC does not grant, allowed by the webhook: nothing in the rules moved
# (RBAC's are the same), so no excess rule is seen, only the check; (c) an action RBAC grants,
# denied by the webhook (`denied: true` ends the chain before RBAC is asked).
@pytest.mark.parametrize(
    ("verdict", "verb", "resource", "expected", "got", "reasons"),
    [
        ("allow", "get", "secrets", "denied", "allowed", {"CheckFailed", "ExcessPrivilege"}),
        ("deny", "list", "configmaps", "allowed", "denied", {"CheckFailed"}),
    ],
    ids=["allowed-beyond-rbac", "denied-within-the-grant"],
)
def test_the_webhooks_verdict_against_rbacs_fails_the_proof(
    kube: Kube,
    authz_webhook: AuthzWebhook,
    gated_namespace: str,
    verdict: str,
    verb: str,
    resource: str,
    expected: str,
    got: str,
    reasons: set[str],
) -> None:
    ready_identity(kube, gated_namespace)
    action = (verb, "", resource, "", gated_namespace)
    authz_webhook.decide(user_of(gated_namespace), **{verdict: [action]})
    prove_again(kube, gated_namespace, 900)

    obj = wait_failed(kube, gated_namespace, reasons)
    check = failed_check(obj, verb, resource)
    assert (check["expected"], check["got"]) == (expected, got), check
    assert f"{verb} {resource} in {gated_namespace}" in condition(obj, "AccessVerified")["message"]
    assert (user_of(gated_namespace), action, verdict) in authz_webhook.asked


def test_a_repair_whose_proof_fails_at_first_is_proven_again_until_it_passes(
    kube: Kube, authz_webhook: AuthzWebhook, gated_namespace: str
) -> None:
    # A failure right after the operator's own RBAC writes is asked again (RBAC lag), with the
    # identity Verifying meanwhile. Here the webhook's denial stands in for the lag, and lifts
    # while the retries run: the next retry must prove in full and find the identity Ready,
    # not re-check the rules (unchanged by the repair) and stay Verifying.
    ready_identity(kube, gated_namespace)
    user = user_of(gated_namespace)
    authz_webhook.decide(user, deny=[("list", "", "configmaps", "", gated_namespace)])
    someone_else = {"kind": "ServiceAccount", "name": "someone-else", "namespace": gated_namespace}
    merge_patch(kube, "RoleBinding", gated_namespace, NAME, {"subjects": [someone_else]})

    def verifying() -> bool:
        obj = kube.get("AppIdentity", gated_namespace, NAME) or {}
        return condition(obj, "AccessVerified").get("reason") == "Verifying"

    wait_until(verifying, 30, "the repaired identity's failing proof to be asked again")
    authz_webhook.decide(user)
    obj = wait_ready(kube, gated_namespace, NAME, timeout=30)
    assert condition(obj, "AccessVerified")["status"] == "True", condition(obj, "AccessVerified")
