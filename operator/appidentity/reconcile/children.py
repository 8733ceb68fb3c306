"""The identity's children as objects: what exists under each wanted name, creating what is
missing, applying what differs, undoing a half-done create, pruning what is no longer wanted.
Objects of the same name that were not created for this identity are never touched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import desired as build
from .. import status as st
from ..kube import ApiError
from ..model import IDENTITY_LABEL, Identity
from .state import MATCHED, Runtime
from .stop import ApplyRefused, Conflict

Key = tuple[str, str, str]
PRUNE_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def is_ours(identity: Identity, obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata", {}).get("labels") or {}).get(IDENTITY_LABEL) == identity.key)


def _foreign(identity: Identity, found: Mapping[Key, Any]) -> Conflict | None:
    names = [
        f"{k[0]} {k[1] + '/' if k[1] else ''}{k[2]}"
        for k, obj in found.items()
        if obj is not None and not is_ours(identity, obj)
    ]
    if not names:
        return None
    return Conflict(
        "these objects exist and were not created for this identity, so they are left "
        "untouched: " + ", ".join(names)
    )


def live(
    rt: Runtime,
    identity: Identity,
    keys: list[Key],
    want: Mapping[Key, dict[str, Any]],
    new: bool,
) -> dict[Key, dict[str, Any] | None]:
    """What exists now under each name: the watch cache where it has the object (one that
    matched an older desired state does not count); else, for a new identity, presumably
    nothing (its creates will tell, see `create`); else a GET. Refuses (Conflict) when an
    object of the same name was not created for this identity."""
    found = {}
    for key in keys:
        kind, ns, name = key
        cached = rt.children.get(key)
        if cached is not None and MATCHED in cached and cached[MATCHED] != want.get(key):
            cached = None
        if cached is None and not new:
            cached = rt.kube.get(kind, ns or None, name)
        found[key] = cached
    conflict = _foreign(identity, found)
    if conflict:
        raise conflict
    return found


def create(
    rt: Runtime, identity: Identity, obj: dict[str, Any], created: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, bool]:
    """Creates an object believed absent: (it, True), also recorded in `created`. If it exists
    after all: Conflict when it is not this identity's, else (what exists or None, False)."""
    try:
        out = rt.kube.create(obj)
        created.append(out)
        return out, True
    except ApiError as exc:
        if exc.status != 409:
            raise
    key = build.object_key(obj)
    found = rt.kube.get(key[0], key[1] or None, key[2])
    conflict = _foreign(identity, {key: found})
    if conflict:
        raise conflict
    return found, False


def undo(rt: Runtime, created: list[dict[str, Any]]) -> None:
    """Removes what this reconcile created before it met a conflict: nothing half-applied."""
    for obj in reversed(created):
        meta = obj["metadata"]
        rt.kube.delete(obj["kind"], meta.get("namespace"), meta["name"], meta.get("uid"))


def _apply_object(rt: Runtime, obj: dict[str, Any]) -> dict[str, Any]:
    try:
        return rt.kube.apply(obj)
    except ApiError as exc:
        # roleRef is immutable: a binding that must point elsewhere is replaced.
        if (
            exc.status == 422
            and obj["kind"] in ("RoleBinding", "ClusterRoleBinding")
            and "roleRef" in exc.message
        ):
            meta = obj["metadata"]
            rt.kube.delete(obj["kind"], meta.get("namespace"), meta["name"])
            return rt.kube.apply(obj)
        raise


def write(
    rt: Runtime,
    identity: Identity,
    objects: list[dict[str, Any]],
    found: Mapping[Key, dict[str, Any] | None],
    created: list[dict[str, Any]],
) -> tuple[dict[Key, dict[str, Any]], bool]:
    """Creates what is missing and applies what differs; what is already as desired costs no
    request at all. Returns the objects and whether anything was written."""
    applied = {}
    wrote = False
    for obj in objects:
        key = build.object_key(obj)
        current = found[key]
        try:
            made = False
            if current is None:
                current, made = create(rt, identity, obj, created)
            wrote |= made
            if current is not None and (
                made or MATCHED in current or build.is_subset(obj, current)
            ):
                if not made and MATCHED not in current:
                    rt.child_matched(key, current, obj)
                applied[key] = current
                continue
            applied[key] = _apply_object(rt, obj)
            wrote = True
        except ApiError as exc:
            if exc.status not in (403, 422):
                raise
            # e.g. RBAC escalation prevention: the operator does not hold what it would grant.
            kind, ns, name = key
            where = f"{kind} {ns + '/' if ns else ''}{name}"
            raise ApplyRefused(f"the API server refused {where}: {exc.message}") from exc
    return applied, wrote


def already_pruned(identity: Identity, previous: Mapping[str, Any]) -> tuple[int, bool] | None:
    """After a restart: the status proves the last process pruned for this generation and
    schedule state, so nothing needs listing. A brand-new identity has nothing to prune."""
    if not st.reported(previous):
        return (1, True) if identity.generation == 1 else None
    conditions = {c.get("type"): c for c in previous.get("conditions", [])}
    provisioned = conditions.get(st.PROVISIONED, {}).get("status") == "True"
    if previous.get("observedGeneration") != identity.generation or not provisioned:
        return None
    was_active = conditions.get(st.READY, {}).get("reason") != "ScheduleInactive"
    return (identity.generation, was_active)


def prune(
    rt: Runtime, identity: Identity, keep: set[Key], previous: Mapping[str, Any]
) -> list[str]:
    """Deletes what this identity created and no longer wants: RBAC objects found by label, and
    a ServiceAccount or Secret left behind by a rename (named in the previous status)."""
    removed = []
    selector = f"{IDENTITY_LABEL}={identity.key}"
    for kind in PRUNE_KINDS:
        for obj in rt.kube.list_objects(kind, None, selector):
            key = build.object_key({"kind": kind, "metadata": obj["metadata"]})
            if key not in keep and rt.kube.delete(
                kind, key[1] or None, key[2], obj["metadata"].get("uid")
            ):
                removed.append(f"{kind} {key[1] + '/' if key[1] else ''}{key[2]}")
    for kind, field_name in (("ServiceAccount", "serviceAccountName"), ("Secret", "secretName")):
        old = previous.get(field_name)
        if old and (kind, identity.namespace, old) not in keep:
            found = rt.kube.get(kind, identity.namespace, old)
            if (
                found
                and is_ours(identity, found)
                and rt.kube.delete(kind, identity.namespace, old, found["metadata"]["uid"])
            ):
                removed.append(f"{kind} {identity.namespace}/{old}")
    return removed
