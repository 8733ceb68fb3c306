"""Who an RBAC or namespace event wakes: looked up in the registry's index, not by a scan."""

from __future__ import annotations

import pytest
from appidentity import handlers
from appidentity.handlers import Registry, _subject_keys
from appidentity.reconcile import Memory


def memory(namespace: str, sa: str, roles: set[str], grants: set[str]) -> Memory:
    mem = Memory()
    mem.namespace, mem.service_account = namespace, sa
    mem.cluster_roles, mem.grant_namespaces = roles, grants
    return mem


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    reg = Registry(wake=lambda key: None)
    for key, mem in (
        ("a.reader", memory("a", "reader", {"view"}, {"b"})),
        ("a.writer", memory("a", "writer", set(), set())),
        ("c.other", memory("c", "other", {"edit"}, set())),
    ):
        reg.get(key)
        reg.index(key, mem)
    monkeypatch.setattr(handlers, "REGISTRY", reg)
    return reg


def test_a_binding_wakes_the_service_account_it_names(registry: Registry) -> None:
    subjects = [{"kind": "ServiceAccount", "namespace": "a", "name": "writer"}]
    assert _subject_keys(subjects) == {"a.writer"}


def test_a_namespace_group_wakes_that_namespace_and_everyone_wakes_all(registry: Registry) -> None:
    assert _subject_keys([{"kind": "Group", "name": "system:serviceaccounts:a"}]) == {
        "a.reader",
        "a.writer",
    }
    everyone = [{"kind": "Group", "name": "system:authenticated"}]
    assert _subject_keys(everyone) == {"a.reader", "a.writer", "c.other"}
    assert _subject_keys([{"kind": "User", "name": "alice"}]) == set()


def test_cluster_roles_and_granted_namespaces_are_indexed(registry: Registry) -> None:
    assert registry.keys_for(("clusterrole", "view")) == {"a.reader"}
    assert registry.keys_for(("grant", "b")) == {"a.reader"}


def test_a_changed_or_forgotten_identity_leaves_the_index(registry: Registry) -> None:
    registry.index("a.reader", memory("a", "reader", {"edit"}, set()))
    assert registry.keys_for(("clusterrole", "view")) == set()
    assert registry.keys_for(("clusterrole", "edit")) == {"a.reader", "c.other"}
    registry.forget("c.other")
    assert registry.keys_for(("clusterrole", "edit")) == {"a.reader"}
    assert _subject_keys([{"kind": "ServiceAccount", "namespace": "c", "name": "other"}]) == set()
