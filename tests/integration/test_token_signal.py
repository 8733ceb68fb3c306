"""A deleted token Secret is noticed within seconds on the operator's default schedule (no
--recheck-seconds): the garbage collector deletes the Secret's sentinel Role with it, and the
operator watches Roles. So the status never goes on saying Verified about a revoked token."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from appidentity.kube import Kube
from support import (
    READ_CONFIGMAPS,
    Cluster,
    Operator,
    Token,
    condition,
    create,
    events_for,
    identity,
    secret_token,
    wait_ready,
    wait_until,
    whoami_status,
)

SIGNAL_SECONDS = 30  # the "about 30 s", with the default intervalSeconds of 600


@pytest.fixture
def default_schedule(cluster: Cluster, operator: Operator, tmp_path: Path) -> Iterator[Operator]:
    """The suite's operator (re-checks every 2 s) replaced by one on the default schedule."""
    operator.stop()
    plain = Operator(cluster, tmp_path, tmp_path / "operator.log", recheck_seconds=None)
    plain.start()
    try:
        yield plain
    finally:
        plain.stop()
        operator.start()


def test_a_deleted_token_secret_is_replaced_and_proven_within_seconds_by_default(
    kube: Kube,
    namespace: str,
    default_schedule: Operator,
    token_api: Callable[[Token], Any],
) -> None:
    name = "signalled"
    create(kube, identity(name, namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, name)
    sentinel = kube.get("Role", namespace, f"{name}-token:sentinel")
    assert sentinel is not None and not sentinel.get("rules")  # it grants nothing
    old = secret_token(kube, namespace, f"{name}-token")
    assert old is not None

    deleted = time.monotonic()
    kube.delete("Secret", namespace, f"{name}-token")

    def reissued() -> str:
        events = {e["reason"]: e["message"] for e in events_for(kube, namespace, name)}
        return events.get("TokenIssued", "")

    message = wait_until(reissued, SIGNAL_SECONDS, "a new token after the deletion")
    took = time.monotonic() - deleted
    assert "the token Secret was deleted or emptied" in message
    # The same reconcile proved the new token before it wrote the status.
    obj = wait_ready(kube, namespace, name, timeout=10)
    assert condition(obj, "AccessVerified")["status"] == "True"
    new = secret_token(kube, namespace, f"{name}-token")
    assert new is not None and new != old
    assert whoami_status(token_api, new) == 200
    events = {e["reason"]: e["message"] for e in events_for(kube, namespace, name)}
    assert f"Secret {namespace}/{name}-token (and the token bound to it)" in events["DriftRepaired"]
    print(f"deleted token Secret replaced and proven in {took:.1f}s")
