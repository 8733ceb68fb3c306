"""One identity's turn around its reconcile (turns.cycle): what it asks of the scheduler next.
The reconcile is stood in for; what runs against the API server is in tests/integration."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from appidentity import turns
from appidentity.reconcile import Memory, Result, Runtime
from appidentity.registry import Registry, Tracked

from .conftest import POD_READER, identity_body

SPEC = {"rules": [POD_READER], "namespaces": [{"name": "team-b", "rules": [POD_READER]}]}


def turn_while(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[Runtime], None]
) -> tuple[float, Tracked]:
    """One cycle whose reconcile sees `meanwhile` happen (a watch event) while it runs."""
    rt = Runtime(kube=None, policy=None, baseline=None)  # type: ignore[arg-type]

    def reconcile(rt: Runtime, body: object, mem: Memory, now: object) -> Result:
        meanwhile(rt)
        mem.grant_namespaces = {"team-b"}  # as the apply phase records the spec's grants
        return Result({}, [], wake_in=30.0)

    monkeypatch.setattr(turns, "reconcile", reconcile)
    monkeypatch.setattr(turns, "_publish", lambda *_: None)
    tracked = Tracked()
    tracked.memory.poked = False
    wait = turns.cycle(rt, Registry(wake=lambda _: None), identity_body(SPEC), tracked)
    return wait, tracked


def consent_changed(namespace: str) -> Callable[[Runtime], None]:
    def event(rt: Runtime) -> None:
        rt.namespace_event(namespace, {"appidentity.dev/accept-grants-from": "team-a"})

    return event


def test_a_granted_namespace_that_changed_during_the_reconcile_is_read_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The reconcile may have read team-b's consent just before it was given; the event found
    # no identity to wake, since this one was indexed for team-b only after its reconcile.
    wait, tracked = turn_while(monkeypatch, consent_changed("team-b"))
    assert wait == 0.0 and tracked.memory.poked


def test_another_namespace_changing_meanwhile_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wait, tracked = turn_while(monkeypatch, consent_changed("team-c"))
    assert wait == 30.0 and not tracked.memory.poked
