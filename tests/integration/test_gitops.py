"""What GitOps tools make of real AppIdentities (issue 14): kstatus itself (the Go library
Flux's health checks run, compiled from the Go module proxy by hack/build-kstatus.sh) says
Current when Ready, Failed for every terminal outcome, InProgress while the operator is at work;
Argo CD's Lua health check (deploy/argocd/health.lua, in a real Lua 5.1) agrees."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from appidentity.kube import ApiError, Kube
from gitops import argocd_health, kstatus, record_fixture
from support import (
    READ_CONFIGMAPS,
    InClusterOperator,
    Operator,
    Token,
    condition,
    conflicting_identity,
    create,
    identity,
    merge_patch,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("operator")
RBAC = "rbac.authorization.k8s.io"


def judged(case: str, obj: dict[str, Any], want_kstatus: str, want_argocd: str) -> tuple[str, str]:
    """Asserts what kstatus and the Argo CD health check say of the live object; returns
    kstatus' (status, message)."""
    ks = kstatus(obj)
    assert ks[0] == want_kstatus, f"{case}: kstatus says {ks}"
    health = argocd_health(obj)
    assert health[0] == want_argocd, f"{case}: Argo CD health {health}"
    record_fixture(case, obj, *health)
    return ks


def wait_condition(
    kube: Kube, namespace: str, name: str, type_: str, reason: str, timeout: float = 60
) -> dict[str, Any]:
    """The object once condition `type_` is True with `reason` for its current generation."""

    def seen() -> dict[str, Any] | None:
        obj = kube.get("AppIdentity", namespace, name) or {}
        cond = condition(obj, type_)
        current = (obj.get("status") or {}).get("observedGeneration") == obj.get(
            "metadata", {}
        ).get("generation")
        return (
            obj
            if current and (cond.get("status"), cond.get("reason")) == ("True", reason)
            else None
        )

    found: dict[str, Any] = wait_until(seen, timeout, f"{namespace}/{name} {type_}={reason}", 0.1)
    return found


def stalled(kube: Kube, namespace: str, name: str, reason: str) -> dict[str, Any]:
    obj = wait_condition(kube, namespace, name, "Stalled", reason)
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Reconciling") == {}
    return obj


def extra_grant(kube: Kube, namespace: str, sa: str, rule: dict[str, Any]) -> None:
    """A Role and RoleBinding made outside the operator, naming the identity's ServiceAccount."""
    meta = {"name": "extra", "namespace": namespace}
    create(kube, {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": meta, "rules": [rule]})
    create(
        kube,
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "extra"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    )


def test_a_verified_identity_is_current_and_healthy(kube: Kube, namespace: str) -> None:
    create(kube, identity("fine", namespace, rules=[READ_CONFIGMAPS]))
    obj = wait_ready(kube, namespace, "fine")
    assert condition(obj, "Stalled") == condition(obj, "Reconciling") == {}
    assert judged("ready", obj, "Current", "Healthy") == ("Current", "Resource is Ready")


def test_an_unobserved_generation_is_in_progress_until_the_operator_reports_it(
    kube: Kube, namespace: str, operator: Operator | InClusterOperator
) -> None:
    """An edit the operator has not seen yet, and a new identity it has not reported on yet
    (whose status the CRD defaults to observedGeneration 0), are InProgress, not Current."""
    create(kube, identity("edited", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "edited")
    operator.stop()
    try:
        merge_patch(kube, "AppIdentity", namespace, "edited", {"spec": {"clusterRoles": ["view"]}})
        obj = kube.get("AppIdentity", namespace, "edited") or {}
        assert (obj["metadata"]["generation"], obj["status"]["observedGeneration"]) == (2, 1)
        assert condition(obj, "Ready")["status"] == "True"  # still the old generation's outcome
        ks = judged("generation-not-observed", obj, "InProgress", "Progressing")
        assert "generation is 2, but latest observed generation is 1" in ks[1]

        fresh = create(kube, identity("fresh", namespace, rules=[READ_CONFIGMAPS]))
        assert fresh["status"] == {"observedGeneration": 0}
        ks = judged("not-yet-reported", fresh, "InProgress", "Progressing")
        assert "generation is 1, but latest observed generation is 0" in ks[1]
    finally:
        operator.start()
    obj = wait_ready(kube, namespace, "edited")
    assert {c["observedGeneration"] for c in obj["status"]["conditions"]} == {2}
    judged("ready-after-edit", obj, "Current", "Healthy")
    judged("ready-when-reported", wait_ready(kube, namespace, "fresh"), "Current", "Healthy")


def test_excess_privilege_is_in_progress_while_rechecked_then_failed(
    kube: Kube, namespace: str
) -> None:
    """A RoleBinding made outside the operator gives the ServiceAccount more than its spec: the
    operator re-checks for RBAC propagation (Reconciling), then reports it (Stalled)."""
    extra_grant(
        kube,
        namespace,
        "widened",
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]},
    )
    create(kube, identity("widened", namespace, rules=[READ_CONFIGMAPS]))
    obj = wait_condition(kube, namespace, "widened", "Reconciling", "Verifying")
    assert condition(obj, "Stalled") == {}
    ks = judged("verifying", obj, "InProgress", "Progressing")
    assert ks[1].startswith("re-checking in ")
    obj = stalled(kube, namespace, "widened", "ExcessPrivilege")
    ks = judged("excess-privilege", obj, "Failed", "Degraded")
    assert ks[1] == condition(obj, "Stalled")["message"]
    assert "the token can do more than granted" in ks[1]

    # allowExcess: the same rights are reported but accepted, so nothing is stalled.
    merge_patch(
        kube, "AppIdentity", namespace, "widened", {"spec": {"verification": {"allowExcess": True}}}
    )
    obj = wait_ready(kube, namespace, "widened", timeout=60)
    assert obj["status"]["verification"]["excess"]
    assert condition(obj, "Stalled") == {}
    judged("excess-allowed", obj, "Current", "Healthy")


TerminalCase = Callable[[Kube, str, Callable[[], str]], None]  # creates the identity "case"


MINIMUM = (
    "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/token/properties"
    "/expirationSeconds/minimum"
)


def _invalid_spec(kube: Kube, ns: str, _: Callable[[], str]) -> None:
    """Admission and the operator judge alike, so a spec the operator refuses is one stored
    before the CRD said no: an identity written under a CRD without the minimum token lifetime,
    which the real CRD (restored here, as an upgrade would) keeps by ratcheting."""
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/appidentities.appidentity.dev"
    kube.request(
        "PATCH",
        crd,
        body=[{"op": "remove", "path": MINIMUM}],
        content_type="application/json-patch+json",
    )
    try:
        bad = identity("case", ns, rules=[READ_CONFIGMAPS], token={"expirationSeconds": 60})

        def stored() -> bool:
            try:
                create(kube, bad)
            except ApiError as exc:
                if exc.status not in (422, 503):  # the relaxed schema is not served yet
                    raise
                return False
            return True

        wait_until(stored, 30, "the relaxed CRD to admit the identity")
    finally:
        kube.request(
            "PATCH",
            crd,
            body=[{"op": "add", "path": MINIMUM, "value": 600}],
            content_type="application/json-patch+json",
        )


def _policy_violation(kube: Kube, ns: str, _: Callable[[], str]) -> None:
    create(kube, identity("case", ns, clusterRoles=["cluster-admin"]))


def _conflict(kube: Kube, ns: str, _: Callable[[], str]) -> None:
    conflicting_identity(kube, ns, "case")


def _consent_missing(kube: Kube, ns: str, make_namespace: Callable[[], str]) -> None:
    other = make_namespace()
    create(
        kube,
        identity(
            "case",
            ns,
            rules=[READ_CONFIGMAPS],
            namespaces=[{"name": other, "rules": [READ_CONFIGMAPS]}],
        ),
    )


def _check_failed(kube: Kube, ns: str, _: Callable[[], str]) -> None:
    # The user's own mustDeny contradicts the grant: no retry can make it pass.
    must_deny = [{"verb": "get", "group": "", "resource": "configmaps"}]
    create(
        kube, identity("case", ns, rules=[READ_CONFIGMAPS], verification={"mustDeny": must_deny})
    )


@pytest.mark.parametrize(
    ("reason", "make", "says"),
    [
        ("InvalidSpec", _invalid_spec, "spec.token.expirationSeconds"),
        ("PolicyViolation", _policy_violation, "spec.clusterRoles[0]"),
        ("Conflict", _conflict, "ServiceAccount"),
        ("ConsentMissing", _consent_missing, "grants refused by namespaces without consent"),
        ("CheckFailed", _check_failed, "expected denied, got allowed"),
    ],
)
def test_each_terminal_outcome_is_failed_with_its_reason(
    kube: Kube,
    namespace: str,
    make_namespace: Callable[[], str],
    reason: str,
    make: TerminalCase,
    says: str,
) -> None:
    make(kube, namespace, make_namespace)
    obj = stalled(kube, namespace, "case", reason)
    assert condition(obj, "Ready")["reason"] == reason
    ks = judged(reason.lower(), obj, "Failed", "Degraded")
    assert says in ks[1]
    assert ks[1] == condition(obj, "Stalled")["message"]


def test_an_identity_outside_its_schedule_is_suspended_not_failed(
    kube: Kube, namespace: str
) -> None:
    """Outside its window the identity is as its spec wants it (no bindings, no token): neither
    stalled nor reconciling. Ready=False keeps kstatus at InProgress; Argo CD says Suspended."""
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    create(
        kube, identity("later", namespace, rules=[READ_CONFIGMAPS], schedule={"notBefore": later})
    )

    def settled() -> dict[str, Any] | None:
        obj = kube.get("AppIdentity", namespace, "later") or {}
        return obj if condition(obj, "Ready").get("reason") == "ScheduleInactive" else None

    obj = wait_until(settled, 60, "ScheduleInactive")
    assert condition(obj, "Stalled") == condition(obj, "Reconciling") == {}
    ks = judged("schedule-inactive", obj, "InProgress", "Suspended")
    assert later in ks[1]
    assert argocd_health(obj)[1].startswith("ScheduleInactive: schedule: not active before")


def test_an_api_error_is_reconciling_until_it_clears(kube: Kube, namespace: str) -> None:
    """A webhook that cannot be reached makes the API server fail the operator's repair of a
    deleted ServiceAccount (HTTP 500): the identity is Reconciling, not Failed, its status still
    describes the same generation, and it is Ready again once the webhook is gone."""
    create(kube, identity("blocked", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "blocked")
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"unreachable-{namespace}"},
        "webhooks": [
            {
                "name": "unreachable.appidentity.dev",
                "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["serviceaccounts"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 2,
            }
        ],
    }
    webhooks = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    kube.request("POST", webhooks, body=webhook)
    try:
        kube.delete("ServiceAccount", namespace, "blocked")
        obj = wait_condition(kube, namespace, "blocked", "Reconciling", "ApiError")
        assert condition(obj, "Stalled") == {}
        ks = judged("api-error", obj, "InProgress", "Progressing")
        assert "failed calling webhook" in ks[1]
    finally:
        kube.request("DELETE", f"{webhooks}/{webhook['metadata']['name']}")

    def recovered() -> dict[str, Any] | None:
        # Ready kept the last outcome meanwhile; Reconciling going away is the recovery.
        obj = kube.get("AppIdentity", namespace, "blocked") or {}
        return obj if condition(obj, "Reconciling") == {} else None

    obj = wait_until(recovered, 60, "Reconciling to go")
    assert condition(obj, "Ready")["status"] == "True"
    assert kube.get("ServiceAccount", namespace, "blocked") is not None
    judged("ready-after-api-error", obj, "Current", "Healthy")


def test_a_requester_asking_for_more_than_it_holds_is_failed(
    kube: Kube, namespace: str, service_account_token: Callable[[str, str], Token]
) -> None:
    """EscalationRefused: a ServiceAccount that may write AppIdentities but not read ConfigMaps
    asks for an identity that reads them."""
    writes = {"apiGroups": ["appidentity.dev"], "resources": ["appidentities"], "verbs": ["create"]}
    meta = {"name": "writer", "namespace": namespace}
    create(kube, {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": meta, "rules": [writes]})
    subjects = [{"kind": "ServiceAccount", "name": "writer", "namespace": namespace}]
    ref = {"apiGroup": RBAC, "kind": "Role", "name": "writer"}
    binding = {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding", "metadata": meta}
    create(kube, {**binding, "roleRef": ref, "subjects": subjects})
    writer = kube.token_client(service_account_token(namespace, "writer").value)

    def written() -> bool:
        try:
            create(writer, identity("case", namespace, rules=[READ_CONFIGMAPS]))
        except ApiError as exc:
            if exc.status != 403:  # the writer's RBAC may not be in effect yet
                raise
            return False
        return True

    wait_until(written, 30, "the writer's Role to take effect")
    obj = stalled(kube, namespace, "case", "EscalationRefused")
    ks = judged("escalationrefused", obj, "Failed", "Degraded")
    assert f"system:serviceaccount:{namespace}:writer may not get configmaps" in ks[1]


@pytest.mark.usefixtures("own_sa_operator")
def test_a_grant_the_api_server_refuses_the_operator_is_failed(kube: Kube, namespace: str) -> None:
    """The operator with its own RBAC cannot grant beyond its ceiling: ApplyRefused. (Last in
    this module: the operator runs with its own ServiceAccount from here on.)"""
    rules = [
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get"]}
    ]
    create(kube, identity("beyond", namespace, rules=rules))
    obj = stalled(kube, namespace, "beyond", "ApplyRefused")
    ks = judged("applyrefused", obj, "Failed", "Degraded")
    assert "the API server refused Role" in ks[1]
