"""Between full proofs (issue 16): cheap re-checks of the token's effective rules keep proving
an identity, catch what no watch sees, and a change the operator did not make is reported at
once rather than after the retry ladder meant for its own writes. The operator under test
re-checks every 2 s (`--recheck-seconds 2`, tests/support.py)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from appidentity.kube import Kube
from support import (
    ImageOperator,
    InClusterOperator,
    Operator,
    condition,
    create,
    identity,
    merge_patch,
    wait_ready,
    wait_reason,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("operator")
READ_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
LIST_SECRETS = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}
RBAC = "rbac.authorization.k8s.io"


def foreign_role(namespace: str, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }


def foreign_binding(namespace: str, name: str, subject: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": namespace}],
    }


def checks(operator: Operator | InClusterOperator | ImageOperator) -> dict[str, float]:
    found = re.findall(
        r'^appidentity_checks_total\{kind="(\w+)"\} (\S+)$', operator.metrics(), re.M
    )
    return {kind: float(value) for kind, value in found}


def test_a_foreign_binding_is_reported_at_once_not_after_the_retry_ladder(
    kube: Kube, namespace: str
) -> None:
    create(kube, identity("widened", namespace, rules=[READ_PODS]))
    wait_ready(kube, namespace, "widened")
    create(kube, foreign_role(namespace, "widen", [LIST_SECRETS]))
    create(kube, foreign_binding(namespace, "widen", "widened"))
    seen = []

    def reported() -> bool:
        reason = condition(kube.get("AppIdentity", namespace, "widened"), "AccessVerified")
        seen.append(reason.get("reason"))
        return seen[-1] == "ExcessPrivilege"

    wait_until(reported, 45, "ExcessPrivilege", every=0.1)
    # The ladder (1, 2, 4, 8 s) would have shown AccessVerified=Unknown/Verifying for seconds.
    assert "Verifying" not in seen


def test_a_role_edit_no_watch_sees_is_caught_by_the_rules_recheck(
    kube: Kube, namespace: str
) -> None:
    create(kube, identity("quiet", namespace, rules=[READ_PODS]))
    wait_ready(kube, namespace, "quiet")
    # A Role the operator did not create is not watched (its Role watch selects its own label);
    # binding it is seen, but it grants nothing yet.
    create(kube, foreign_role(namespace, "later", []))
    create(kube, foreign_binding(namespace, "later", "quiet"))
    time.sleep(5)  # the binding's event and its settle re-checks are over
    assert condition(wait_ready(kube, namespace, "quiet"), "AccessVerified")["status"] == "True"

    merge_patch(kube, "Role", namespace, "later", {"rules": [LIST_SECRETS]})

    obj = wait_reason(kube, namespace, "quiet", "ExcessPrivilege", "AccessVerified", timeout=45)
    excess = obj["status"]["verification"]["excess"]
    assert any(e.get("resources") == ["secrets"] for e in excess)


def test_a_verified_identity_is_rechecked_cheaply_and_not_proven_again(
    kube: Kube, namespace: str, operator: Operator | InClusterOperator | ImageOperator
) -> None:
    create(kube, identity("steady", namespace, rules=[READ_PODS]))
    checked_at = wait_ready(kube, namespace, "steady")["status"]["verification"]["checkedAt"]

    def quiet() -> dict[str, float] | None:
        first = checks(operator)
        time.sleep(3)
        second = checks(operator)
        return second if first.get("full") == second.get("full") else None

    before = wait_until(quiet, 60, "no full proofs running")
    time.sleep(8)  # four re-check intervals
    after = checks(operator)
    assert after.get("full", 0) == before.get("full", 0)
    assert after.get("rules", 0) >= before.get("rules", 0) + 3
    now = kube.get("AppIdentity", namespace, "steady") or {}
    assert now["status"]["verification"]["checkedAt"] == checked_at  # the last full proof
    assert condition(now, "Ready")["status"] == "True"
