"""Gather: the inputs of one reconcile in one value (the parsed spec, the schedule's state, the
namespaces that consent to grants, the objects the spec wants), and the ClusterRoles the
spec names, read when a phase needs their rules."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .. import desired as build
from ..model import Identity, SpecError, parse_identity
from ..rbac import RuleDict
from .state import Case, Runtime
from .stop import Stop


def gather(rt: Runtime, body: Mapping[str, Any], now: datetime) -> Case:
    try:
        identity = parse_identity(dict(body))
    except SpecError as exc:
        raise Stop(str(exc), "InvalidSpec") from exc
    active = identity.spec.schedule.active_at(now)
    consenting = consenting_namespaces(rt, identity)
    want = build.desired_state(identity, consenting, active)
    return Case(body, identity, dict(body.get("status") or {}), now, active, consenting, want)


def consenting_namespaces(rt: Runtime, identity: Identity) -> set[str]:
    """Namespaces that accept this identity's grants: from the namespace watch, with a GET only
    for a namespace the watch has not delivered yet."""
    out = set()
    for ns in identity.grant_namespaces:
        annotations = rt.namespaces.get(ns)
        if annotations is None:
            found = rt.kube.get("Namespace", None, ns)
            if found is None:
                continue
            annotations = found.get("metadata", {}).get("annotations") or {}
        if build.consents(annotations, identity.namespace):
            out.add(ns)
    return out


def cluster_role_rules(rt: Runtime, names: set[str]) -> dict[str, list[RuleDict]]:
    rules = {}
    for name in sorted(names):
        found = rt.kube.get("ClusterRole", None, name)
        rules[name] = list((found or {}).get("rules") or [])
    return rules
