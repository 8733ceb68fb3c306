"""A tighter spec from what was used, never broader than the current one, and for each denied
request the spec change that would allow it with the operator policy's verdict on that change.

The proposal keeps the spec's structure: each rule becomes the rules made of what it was used
for (its own groups, resources, verbs and names, never others), an unused rule or ClusterRole
is left out, a namespace grant left with nothing is left out, and every other field is kept.
Each proposed rule is then checked against the rule it came from with `rbac`'s arithmetic, the
same the excess check uses; a failure there is a bug, and raised as one."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ..model import SpecError, parse_identity
from ..policy import Policy, check
from ..rbac import Request, covered, requests_of
from .entries import NAMELESS_VERBS, Entry, Use

GRANT_KEYS = ("rules", "clusterRoles", "namespaces", "clusterRules")


def _ordered(verbs: set[str], like: Sequence[str]) -> list[str]:
    """In the order the current rule lists them, so the diff shows only what went away."""
    return sorted(verbs, key=lambda v: (like.index(v) if v in like else len(like), v))


def narrowed(entry: Entry) -> list[dict[str, Any]]:
    """The rules one used rule entry shrinks to."""
    rule = entry.spec
    verbs_like = list(rule.get("verbs") or [])
    if rule.get("nonResourceURLs"):
        urls = sorted({r.url for r in entry.shapes})
        return [
            {"nonResourceURLs": urls, "verbs": _ordered({r.verb for r in entry.shapes}, verbs_like)}
        ]
    named = bool(rule.get("resourceNames"))
    per_resource: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for req in entry.shapes:
        verbs, names = per_resource.setdefault((req.group, req.combined_resource), (set(), set()))
        verbs.add(req.verb)
        if named and req.name:
            names.add(req.name)
    merged: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for (group, resource), (verbs, names) in sorted(per_resource.items()):
        key = (group, tuple(_ordered(verbs, verbs_like)), tuple(sorted(names)))
        merged.setdefault(key, []).append(resource)
    out = []
    for (group, verbs_t, names_t), resources in merged.items():
        proposed: dict[str, Any] = {"apiGroups": [group], "resources": resources}
        proposed["verbs"] = list(verbs_t)
        if names_t:
            proposed["resourceNames"] = list(names_t)
        out.append(proposed)
    return out


def assert_covered(proposed: Sequence[Mapping[str, Any]], entry: Entry) -> None:
    for rule in proposed:
        for req in requests_of(rule, entry.namespace):
            if not covered(entry.rules or [], req):
                raise AssertionError(f"{entry.path}: proposal {rule} exceeds {entry.spec}")


def _narrow_all(
    target: list[dict[str, Any]], base: str, by_field: Mapping[str, Entry]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, _rule in enumerate(target):
        entry = by_field[f"{base}[{i}]"]
        if entry.use.count:
            new = narrowed(entry)
            assert_covered(new, entry)
            out += new
    return out


def _set_or_drop(target: dict[str, Any], key: str, value: list[Any]) -> None:
    if value:
        target[key] = value
    else:
        target.pop(key, None)


def proposal(spec: Mapping[str, Any], entries: Sequence[Entry]) -> dict[str, Any]:
    """The spec tightened to what was used. Only for a window long enough to judge: a verb
    unused for a day may be needed at the end of the month."""
    by_field = {e.path: e for e in entries}
    out = copy.deepcopy(dict(spec))

    def block(base: str, target: dict[str, Any]) -> None:
        _set_or_drop(
            target, "rules", _narrow_all(target.get("rules") or [], f"{base}rules", by_field)
        )
        roles = [
            role
            for i, role in enumerate(target.get("clusterRoles") or [])
            if (e := by_field[f"{base}clusterRoles[{i}]"]).use.count or e.rules is None
        ]
        _set_or_drop(target, "clusterRoles", roles)

    block("spec.", out)
    grants = []
    for n, grant in enumerate(out.get("namespaces") or []):
        block(f"spec.namespaces[{n}].", grant)
        if grant.get("rules") or grant.get("clusterRoles"):
            grants.append(grant)
    _set_or_drop(out, "namespaces", grants)
    cluster = _narrow_all(out.get("clusterRules") or [], "spec.clusterRules", by_field)
    _set_or_drop(out, "clusterRules", cluster)
    return out


def diff(current: Mapping[str, Any], proposed: Mapping[str, Any]) -> str:
    """A unified diff of the grant part of the two specs (the rest is never changed)."""

    def text(spec: Mapping[str, Any]) -> list[str]:
        part = {k: spec[k] for k in GRANT_KEYS if k in spec}
        return yaml.safe_dump({"spec": part}, sort_keys=False).splitlines(keepends=True)

    return "".join(difflib.unified_diff(text(current), text(proposed), "current", "proposed"))


def _rule_for(req: Request) -> dict[str, Any]:
    if req.url:
        return {"nonResourceURLs": [req.url], "verbs": [req.verb]}
    rule: dict[str, Any] = {
        "apiGroups": [req.group],
        "resources": [req.combined_resource],
        "verbs": [req.verb],
    }
    if req.name and req.verb not in NAMELESS_VERBS:
        rule["resourceNames"] = [req.name]
    return rule


def suggestion(
    identity: Mapping[str, Any], req: Request, use: Use, entries: Sequence[Entry], policy: Policy
) -> dict[str, Any]:
    """The spec change that would allow one denied request, and what the policy says of it."""
    meta = identity.get("metadata") or {}
    namespace, spec = str(meta.get("namespace", "")), identity.get("spec") or {}
    rule = _rule_for(req)
    placed: dict[str, Any]
    note = ""
    if req.url or not req.namespace:
        where, placed = "spec.clusterRules", {"clusterRules": [rule]}
    elif req.namespace == namespace:
        where, placed = "spec.rules", {"rules": [rule]}
    else:
        names = [str(g.get("name")) for g in spec.get("namespaces") or []]
        where = (
            f"spec.namespaces[{names.index(req.namespace)}].rules"
            if req.namespace in names
            else "spec.namespaces"
        )
        placed = {"namespaces": [{"name": req.namespace, "rules": [rule]}]}
        if req.namespace not in names:
            note = (
                f"namespace {req.namespace} must consent "
                f"(annotation appidentity.dev/accept-grants-from: {namespace})"
            )
    granted = [e.path for e in entries if e.allows(req)]
    if granted:
        note = f"the spec grants this already ({', '.join(granted)}): the grant was not in effect"
    return {
        "request": req.describe(),
        "count": use.count,
        "firstSeen": use.first,
        "lastSeen": use.last,
        "add": {"field": where, "rule": rule, "append": placed[next(iter(placed))][0]},
        "policy": _verdict(meta, placed, policy),
        "note": note,
    }


def _verdict(meta: Mapping[str, Any], placed: dict[str, Any], policy: Policy) -> str:
    body = {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": placed,
    }
    try:
        found = check(parse_identity(body), policy)
    except SpecError as exc:
        return f"invalid: {exc}"
    return "accepted" if not found else "refused: " + "; ".join(str(v) for v in found)
