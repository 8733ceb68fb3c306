"""Deletion: everything an identity created goes with it, found by label and by the names the
status and spec give; the token dies with its Secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..kube import Kube
from ..model import IDENTITY_LABEL, MANAGED_BY, identity_key
from .children import PRUNE_KINDS


def cleanup(kube: Kube, body: Mapping[str, Any]) -> list[str]:
    """Removes everything an identity created, in every namespace and at cluster scope. Works
    from labels and status alone, so it also runs for an identity whose spec has become
    invalid."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    key = identity_key(ns, name)
    selector = f"{MANAGED_BY}=appidentity-operator,{IDENTITY_LABEL}={key}"
    removed = []
    for kind in PRUNE_KINDS:
        for obj in kube.list_objects(kind, None, selector):
            m = obj["metadata"]
            if kube.delete(kind, m.get("namespace"), m["name"], m.get("uid")):
                removed.append(f"{kind} {m.get('namespace', '')}/{m['name']}")
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    secret_names = {
        status.get("secretName"),
        (spec.get("token") or {}).get("secretName") or f"{name}-token",
    }
    sa_names = {
        status.get("serviceAccountName"),
        (spec.get("serviceAccount") or {}).get("name") or name,
    }
    for kind, names in (("Secret", secret_names), ("ServiceAccount", sa_names)):
        for obj_name in sorted(n for n in names if n):
            found = kube.get(kind, ns, obj_name)
            labels = (found or {}).get("metadata", {}).get("labels") or {}
            if (
                found
                and labels.get(IDENTITY_LABEL) == key
                and kube.delete(kind, ns, obj_name, found["metadata"]["uid"])
            ):
                removed.append(f"{kind} {ns}/{obj_name}")
    return removed
