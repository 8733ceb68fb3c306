"""The issuer's keys that cannot be read are not a bad signature: the proof waits for them
(Reconciling, kstatus InProgress) and finishes by itself once they can be read again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from appidentity.kube import Kube
from support import (
    READ_CONFIGMAPS,
    Operator,
    condition,
    create,
    identity,
    wait_ready,
    wait_reason,
)

# Lets every ServiceAccount read the discovery document and the JWKS (bootstrap RBAC).
DISCOVERY = "system:service-account-issuer-discovery"


@pytest.fixture
def discovery_withheld(kube: Kube, operator: Operator) -> Iterator[dict[str, Any]]:
    """The binding gone, and an operator started without the keys in its cache: its reads of
    the keys with the identity's token are refused until the binding is put back."""
    found = kube.get("ClusterRoleBinding", None, DISCOVERY)
    assert found is not None
    kept = {k: found[k] for k in ("apiVersion", "kind", "roleRef", "subjects")}
    kept["metadata"] = {"name": DISCOVERY, "labels": found["metadata"].get("labels") or {}}
    operator.stop()
    kube.delete("ClusterRoleBinding", None, DISCOVERY)
    try:
        operator.start()
        yield kept
    finally:
        if kube.get("ClusterRoleBinding", None, DISCOVERY) is None:
            create(kube, kept)


def test_unreadable_keys_leave_the_identity_reconciling_until_they_can_be_read(
    kube: Kube, namespace: str, discovery_withheld: dict[str, Any]
) -> None:
    create(kube, identity("keyless", namespace, rules=[READ_CONFIGMAPS]))
    obj = wait_reason(kube, namespace, "keyless", "KeysUnavailable", type_="AccessVerified")
    verified = condition(obj, "AccessVerified")
    assert verified["status"] == "Unknown"
    assert "could not read the issuer's keys" in verified["message"]
    assert condition(obj, "Reconciling")["status"] == "True"
    assert "Stalled" not in {c["type"] for c in obj["status"]["conditions"]}

    create(kube, discovery_withheld)
    obj = wait_ready(kube, namespace, "keyless", timeout=60)
    assert condition(obj, "AccessVerified")["reason"] == "AccessVerified"
