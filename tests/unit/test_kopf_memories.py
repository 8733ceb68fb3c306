"""What kopf is let keep per watched object (handlers.IdentityMemories): a memory for every
AppIdentity, none for the children and bindings it only sends events about."""

from __future__ import annotations

import asyncio
from typing import Any

from appidentity.handlers import IdentityMemories


def remembered(*bodies: dict[str, Any]) -> int:
    async def recall_all() -> int:
        memories = IdentityMemories()
        for body in bodies:
            first = await memories.recall(body)
            again = await memories.recall(body)
            assert (first is again) == (body["kind"] == "AppIdentity")
        return len(list(memories.iter_all_memories()))

    return asyncio.run(recall_all())


def obj(kind: str, uid: str) -> dict[str, Any]:
    meta = {"name": "app", "namespace": "team-a", "uid": uid}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta}


def test_only_appidentities_are_remembered_between_events() -> None:
    children = [obj(k, f"uid-{k}") for k in ("ServiceAccount", "Role", "RoleBinding")]
    assert remembered(*children) == 0
    assert remembered(obj("AppIdentity", "uid-ai"), *children) == 1
