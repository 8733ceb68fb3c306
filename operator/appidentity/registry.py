"""The tracked identities, and who to wake for an RBAC or namespace event."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .reconcile import Memory


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(slots=True)
class Tracked:
    memory: Memory = field(default_factory=Memory)
    # The AppIdentity as last delivered by the watch, and the status last written while the
    # watch has not delivered it yet: compact JSON, a fifth of the memory of parsed dicts.
    body: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # a reconcile or the cleanup
    drift: list[str] = field(default_factory=list)
    last_written: bytes | None = None
    generation: int | None = None  # the AppIdentity generation last reconciled or poked for


class Registry:
    """Indexed by what an event names (a ServiceAccount, a namespace's ServiceAccounts, a
    ClusterRole, a namespace granted into), so an event costs the identities it concerns, not a
    scan of all of them. `wake` makes an identity's next turn due now."""

    def __init__(self, wake: Callable[[str], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._items: dict[str, Tracked] = {}
        self._index: dict[tuple[str, str], set[str]] = {}
        self._terms: dict[str, set[tuple[str, str]]] = {}

    def get(self, key: str) -> Tracked:
        with self._lock:
            tracked = self._items.get(key)
            if tracked is None:
                tracked = self._items[key] = Tracked()
            return tracked

    def find(self, key: str) -> Tracked | None:
        with self._lock:
            return self._items.get(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._unindex(key)

    def index(self, key: str, memory: Memory) -> None:
        """Records what an identity's rights depend on, as its last reconcile found it."""
        terms = {("sa", f"{memory.namespace}/{memory.service_account}"), ("ns", memory.namespace)}
        terms |= {("clusterrole", name) for name in memory.cluster_roles}
        terms |= {("grant", ns) for ns in memory.grant_namespaces}
        if not memory.namespace:  # not provisioned yet: nothing to be woken for
            return
        with self._lock:
            if self._terms.get(key) == terms or key not in self._items:
                return
            self._unindex(key)
            self._terms[key] = terms
            for term in terms:
                self._index.setdefault(term, set()).add(key)

    def _unindex(self, key: str) -> None:
        for term in self._terms.pop(key, set()):
            keys = self._index.get(term, set())
            keys.discard(key)
            if not keys:
                self._index.pop(term, None)

    def keys_for(self, *terms: tuple[str, str]) -> set[str]:
        with self._lock:
            return set().union(*(self._index.get(t, set()) for t in terms))

    def items(self) -> list[tuple[str, Tracked]]:
        with self._lock:
            return list(self._items.items())

    def poke(self, key: str, why: str | None = None, verify: bool = False) -> None:
        tracked = self.find(key)
        if tracked is None:
            return
        if why:
            tracked.drift.append(why)
        if verify:
            tracked.memory.verify_soon = True
        tracked.memory.poked = True
        self._wake(key)
