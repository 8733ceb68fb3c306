"""The spec's entries (each rule, each bound ClusterRole, in each namespace, and each
cluster-wide rule) and the requests attributed to them.

A request that two entries allow counts for the first of them in spec order (rules, then
clusterRoles, then other namespaces, then clusterRules): the narrower grant is usually written
first, and counting it twice would keep a redundant entry alive in the proposal."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..rbac import Request, RuleDict, covers

# Verbs RBAC authorizes without a name: a rule with resourceNames never allows them (create's
# name is not known yet; list, watch and deletecollection name a collection).
NAMELESS_VERBS = frozenset({"create", "list", "watch", "deletecollection"})


@dataclass
class Use:
    """How often one request shape was made, and when first and last."""

    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, at: str) -> None:
        self.count += 1
        if at and (not self.first or at < self.first):
            self.first = at
        if at > self.last:
            self.last = at


@dataclass
class Entry:
    """One grant of the spec: `path` names it as a path into the spec."""

    path: str
    kind: str  # rule | clusterRole | clusterRule
    namespace: str  # "" for clusterRules: any namespace, and cluster scope
    rules: Sequence[RuleDict] | None  # None: a ClusterRole whose rules could not be read
    spec: Any  # the rule as written (a dict) or the ClusterRole's name
    use: Use = field(default_factory=Use)
    shapes: dict[Request, Use] = field(default_factory=dict)

    def allows(self, req: Request) -> bool:
        if self.rules is None:
            return False
        if self.namespace and req.namespace != self.namespace:
            return False
        return any(covers(rule, req) for rule in self.rules)

    def record(self, req: Request, at: str) -> None:
        self.use.add(at)
        self.shapes.setdefault(req, Use()).add(at)


def _rules(raw: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(r) for r in raw]


def entries_of(
    namespace: str, spec: Mapping[str, Any], cluster_roles: Mapping[str, Sequence[RuleDict]]
) -> list[Entry]:
    """Every entry of the spec, in spec order; `cluster_roles` holds the rules of the
    ClusterRoles the spec binds, as far as they could be read."""
    out: list[Entry] = []

    def grant(base: str, ns: str, block: Mapping[str, Any]) -> None:
        for i, rule in enumerate(_rules(block.get("rules") or [])):
            out.append(Entry(f"{base}rules[{i}]", "rule", ns, [rule], rule))
        for i, role in enumerate(block.get("clusterRoles") or []):
            rules = cluster_roles.get(role)
            out.append(Entry(f"{base}clusterRoles[{i}]", "clusterRole", ns, rules, role))

    grant("spec.", namespace, spec)
    for n, other in enumerate(spec.get("namespaces") or []):
        grant(f"spec.namespaces[{n}].", str(other.get("name", "")), other)
    for i, rule in enumerate(_rules(spec.get("clusterRules") or [])):
        out.append(Entry(f"spec.clusterRules[{i}]", "clusterRule", "", [rule], rule))
    return out


def attribute(entries: Sequence[Entry], req: Request, at: str) -> Entry | None:
    """Counts an allowed request for the first entry that allows it; None: no entry does (the
    default rights of every ServiceAccount, or a grant outside the spec)."""
    for entry in entries:
        if entry.allows(req):
            entry.record(req, at)
            return entry
    return None


def unused_parts(entry: Entry) -> list[str]:
    """What a rule entry grants that no request used, per resource (or URL): `configmaps:
    watch, create`. Wildcards are reported as written; a ClusterRole entry has no parts."""
    if entry.kind == "clusterRole" or not entry.rules:
        return []
    rule = entry.rules[0]
    used = {(r.group, r.combined_resource, r.url, r.verb) for r in entry.shapes}
    used_verbs = {r.verb for r in entry.shapes}
    out = []
    if rule.get("nonResourceURLs"):
        for url in rule["nonResourceURLs"]:
            idle = [v for v in rule["verbs"] if v not in used_verbs]
            if idle:
                out.append(f"{url}: {', '.join(idle)}")
        return out
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            idle = [
                v
                for v in rule.get("verbs") or []
                if v != "*" and (group, resource, "", v) not in used
            ]
            if "*" in (group, resource) or "*" in rule.get("verbs", []):
                idle = [] if any(s.verb for s in entry.shapes) else ["*"]
            if idle:
                what = resource + (f".{group}" if group else "")
                out.append(f"{what}: {', '.join(idle)}")
    return out
