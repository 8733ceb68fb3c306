"""What the cluster serves, and whether a spec's rules name it.

RBAC stores any string: a Role granting `gett` on `pods`, or `get` on `pod`, is accepted by the
API server and grants nothing, and a self-check of that grant would "verify" it (the access
review asks the authorizer about the very same strings). So every resource rule of a spec is
judged against a snapshot of the API server's discovery: the group is served, the resource
exists in it, the subresource exists, and a standard verb is one the resource serves. Custom
resources count once their CRD is established (they are in discovery then); RBAC's special
verbs, which discovery never lists, and the policy's `extraVerbs` are taken on any resource.

Pure: `Discovery.from_aggregated` parses what the API server returned and `judge` decides; the
reading lives in kube/rest.py and `DiscoveryCache` only holds a snapshot and asks for a new one.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import Identity, Rule

# The verbs of API requests to resources, as the API server names them to the authorizer.
STANDARD_VERBS = (
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
)
# Verbs that authorizers are asked about but discovery never lists: `use` (policy objects such
# as OpenShift's SecurityContextConstraints, once PodSecurityPolicy), `bind` and `escalate`
# (roles and clusterroles), `impersonate` (users, groups, serviceaccounts, uids, userextras),
# `approve`, `sign` and `attest` (certificate signers).
SPECIAL_VERBS = ("use", "bind", "escalate", "impersonate", "approve", "sign", "attest")
KNOWN_VERBS = STANDARD_VERBS + SPECIAL_VERBS

ANY = None  # a resource whose verbs are not listed: any verb may be meant


@dataclass(frozen=True)
class Resource:
    name: str
    verbs: frozenset[str] | None  # None: discovery lists none, so none is refused
    namespaced: bool = True
    subresources: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    name: str
    resources: Mapping[str, Resource]
    versions: tuple[str, ...] = ()
    # An aggregated API whose server did not answer lately: its resources may be missing from
    # the list, so nothing in it is refused.
    stale: bool = False


def _verbs(names: Iterable[str] | None) -> frozenset[str] | None:
    found = frozenset(names or ())
    return found or ANY


# Resources that authorizers are asked about but no API serves (so discovery lacks them).
_IMPERSONATE = frozenset({"impersonate"})
_SIGNERS = frozenset({"approve", "sign", "attest"})
VIRTUAL: dict[str, dict[str, Resource]] = {
    "": {
        "users": Resource("users", _IMPERSONATE, namespaced=False),
        "groups": Resource("groups", _IMPERSONATE, namespaced=False),
    },
    "authentication.k8s.io": {
        "uids": Resource("uids", _IMPERSONATE, namespaced=False),
        # userextras/<key>: any key
        "userextras": Resource("userextras", _IMPERSONATE, namespaced=False),
    },
    "certificates.k8s.io": {"signers": Resource("signers", _SIGNERS, namespaced=False)},
}
# The kubelet's own authorization asks about these subresources of nodes (KubeletAuthz).
KUBELET_SUBRESOURCES = (
    "stats",
    "metrics",
    "log",
    "spec",
    "checkpoint",
    "configz",
    "healthz",
    "pods",
)
ANY_SUBRESOURCE = {("authentication.k8s.io", "userextras")}


@dataclass(frozen=True)
class Discovery:
    """The API groups a cluster serves, by name ("" is the core group)."""

    groups: Mapping[str, Group]

    @classmethod
    def from_aggregated(cls, core: Mapping[str, Any], apis: Mapping[str, Any]) -> Discovery:
        """From the APIGroupDiscoveryList answers of GET /api and GET /apis (aggregated
        discovery, apidiscovery.k8s.io/v2), with the resources no API serves added."""
        groups: dict[str, Group] = {}
        for item in [*core.get("items", []), *apis.get("items", [])]:
            name = str((item.get("metadata") or {}).get("name", ""))
            merged: dict[str, Resource] = {}
            versions, stale = [], False
            for version in item.get("versions") or []:
                versions.append(str(version.get("version", "")))
                stale |= version.get("freshness") == "Stale"
                for raw in version.get("resources") or []:
                    merged[raw["resource"]] = _merge(
                        merged.get(raw["resource"]), _resource(raw, versions[-1])
                    )
            groups[name] = Group(name, merged, tuple(versions), stale)
        return cls(_with_virtual(groups))

    def resource(self, group: str, name: str) -> Resource | None:
        found = self.groups.get(group)
        return found.resources.get(name) if found else None

    def groups_with(self, resource: str) -> list[str]:
        return sorted(g.name for g in self.groups.values() if resource in g.resources)


def _resource(raw: Mapping[str, Any], version: str) -> Resource:
    subresources = {
        str(s["subresource"]): _verbs(s.get("verbs")) for s in raw.get("subresources") or []
    }
    return Resource(
        str(raw["resource"]),
        _verbs(raw.get("verbs")),
        raw.get("scope") != "Cluster",
        subresources,
        (version,),
    )


def _union(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return ANY if a is ANY or b is ANY else a | b


def _merge(old: Resource | None, new: Resource) -> Resource:
    """One resource served in several versions: what any of them serves."""
    if old is None:
        return new
    subs = dict(old.subresources)
    for name, verbs in new.subresources.items():
        subs[name] = _union(subs[name], verbs) if name in subs else verbs
    return Resource(
        old.name,
        _union(old.verbs, new.verbs),
        old.namespaced,
        subs,
        old.versions + new.versions,
    )


def _with_virtual(groups: dict[str, Group]) -> dict[str, Group]:
    out = dict(groups)
    for name, extra in VIRTUAL.items():
        group = out.get(name, Group(name, {}))
        out[name] = Group(name, {**extra, **group.resources}, group.versions, group.stale)
    core = out[""]
    nodes = core.resources.get("nodes")
    if nodes is not None:
        subs = {sub: ANY for sub in KUBELET_SUBRESOURCES} | dict(nodes.subresources)
        nodes = Resource(nodes.name, nodes.verbs, nodes.namespaced, subs, nodes.versions)
        out[""] = Group("", {**core.resources, "nodes": nodes}, core.versions, core.stale)
    return out


# --- the judge -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A rule item that can grant nothing on this cluster, named by its field."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _group_text(group: str) -> str:
    return '"" (core)' if group == "" else f'"{group}"'


def _suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f'; did you mean "{prefix}{close[0]}"?' if close else ""


def _verb_order(verbs: Iterable[str]) -> list[str]:
    rank = {v: i for i, v in enumerate(STANDARD_VERBS)}
    return sorted(set(verbs), key=lambda v: (rank.get(v, len(rank)), v))


@dataclass(frozen=True)
class _Served:
    """A (group, resource[/subresource]) of the rule that exists, and its verbs."""

    what: str
    verbs: frozenset[str] | None


def _groups_text(groups: list[Group], every: bool) -> str:
    if every:
        return "any API group"
    names = ", ".join(_group_text(g.name) for g in groups)
    return f"the API group{'s' if len(groups) > 1 else ''} {names}"


def _judge_resource(
    disc: Discovery, groups: list[Group], every: bool, resource: str, field_name: str
) -> tuple[list[_Served], Finding | None]:
    base, slash, sub = resource.partition("/")
    if resource == "*":
        return [], None
    if base == "*" and slash and "*" not in sub:
        # RBAC's */subresource: that subresource of every resource
        found = [
            _Served(f"{r.name}/{sub}", r.subresources[sub])
            for g in groups
            for r in g.resources.values()
            if sub in r.subresources
        ]
        if found or any(g.stale for g in groups):
            return found, None
        where = _groups_text(groups, every)
        return [], Finding(field_name, f'no resource of {where} has a subresource "{sub}"')
    if "*" in resource:
        return [], Finding(
            field_name,
            f'"{resource}" matches nothing: RBAC takes "*" only as a whole resource '
            'or as "*/<subresource>"',
        )
    owners = [g for g in groups if base in g.resources]
    if not owners:
        if any(g.stale for g in groups):
            return [], None
        message = f'"{base}" is not a resource of {_groups_text(groups, every)}'
        elsewhere = [n for n in disc.groups_with(base) if n not in {g.name for g in groups}]
        if elsewhere:
            message += f"; it is in {', '.join(_group_text(n) for n in elsewhere)}"
        else:
            names = [r for g in groups for r in g.resources]
            message += _suggest(base, names)
        return [], Finding(field_name, message)
    if not slash:
        return [_Served(base, r.verbs) for r in (g.resources[base] for g in owners)], None
    served: list[_Served] = []
    for g in owners:
        subs = g.resources[base].subresources
        if sub in subs:
            served.append(_Served(resource, subs[sub]))
        elif sub and (g.name, base) in ANY_SUBRESOURCE:
            served.append(_Served(resource, g.resources[base].verbs))
    if served or any(g.stale for g in owners):
        return served, None
    names = sorted({s for g in owners for s in g.resources[base].subresources})
    known = f" ({', '.join(names)})" if names else ""
    message = f'{base} has no subresource "{sub}"{known}'
    return [], Finding(field_name, message + _suggest(sub, names, prefix=f"{base}/"))


def _judge_rule(
    disc: Discovery, rule: Rule, where: str, extra_verbs: frozenset[str]
) -> Iterator[Finding]:
    if rule.non_resource_urls:
        return  # URLs are not in discovery
    groups: list[Group] = []
    every = "*" in rule.api_groups
    for i, name in enumerate(rule.api_groups):
        if name in disc.groups:
            groups.append(disc.groups[name])
        elif name != "*":
            message = f'"{name}" is not an API group this cluster serves'
            yield Finding(f"{where}.apiGroups[{i}]", message + _suggest(name, disc.groups))
    if every:
        groups = list(disc.groups.values())
    if not groups:
        return  # nothing to look resources up in: said above
    served: list[_Served] = []
    unsure = False
    for i, resource in enumerate(rule.resources):
        found, finding = _judge_resource(disc, groups, every, resource, f"{where}.resources[{i}]")
        unsure |= not found  # a wildcard, a stale group, or a finding of its own
        served += found
        if finding:
            yield finding
    if unsure:
        return  # verbs are judged against resources that all exist: one finding at a time
    if any(s.verbs is ANY for s in served):
        return
    offered = frozenset().union(*(s.verbs or frozenset() for s in served))
    for i, verb in enumerate(rule.verbs):
        if verb == "*" or verb in SPECIAL_VERBS or verb in extra_verbs or verb in offered:
            continue
        names = ", ".join(dict.fromkeys(s.what for s in served))
        listed = ", ".join(_verb_order(offered))
        message = f'"{verb}" is not a verb {names} serves ({listed})'
        yield Finding(f"{where}.verbs[{i}]", message + _suggest(verb, [*offered, *SPECIAL_VERBS]))


def rule_places(identity: Identity) -> Iterator[tuple[str, Rule]]:
    """Every RBAC rule of the spec, with the field that holds it."""
    spec = identity.spec
    for i, rule in enumerate(spec.rules):
        yield f"spec.rules[{i}]", rule
    for n, grant in enumerate(spec.namespaces):
        for i, rule in enumerate(grant.rules):
            yield f"spec.namespaces[{n}].rules[{i}]", rule
    for i, cluster_rule in enumerate(spec.cluster_rules):
        yield f"spec.clusterRules[{i}]", cluster_rule


def judge(disc: Discovery, identity: Identity, extra_verbs: Iterable[str] = ()) -> list[Finding]:
    """Every group, resource, subresource and verb of the spec's rules that this cluster does
    not serve; empty means each can grant something."""
    extra = frozenset(extra_verbs)
    return [
        f for where, rule in rule_places(identity) for f in _judge_rule(disc, rule, where, extra)
    ]


# --- the process's snapshot ---------------------------------------------------------------


class DiscoveryCache:
    """One snapshot for the process, read on first use. A spec that names something the
    snapshot lacks (a CRD installed since) is judged again on a fresh one, at most once per
    `min_age` seconds; a snapshot older than `max_age` is replaced at its next use (a removed
    CRD). A failed read keeps the old snapshot; with none yet, the error is the caller's."""

    def __init__(
        self,
        read: Callable[[], Discovery],
        min_age: float = 30.0,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._min_age = min_age
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: Discovery | None = None
        self._read_at = 0.0

    def _refresh(self, force: bool) -> Discovery:
        with self._lock:
            age = self._clock() - self._read_at
            stale = self._snapshot is None or age >= self._max_age
            if stale or (force and age >= self._min_age):
                try:
                    self._snapshot = self._read()
                except Exception:
                    if self._snapshot is None:
                        raise
                self._read_at = self._clock()
            assert self._snapshot is not None
            return self._snapshot

    def snapshot(self) -> Discovery:
        return self._refresh(force=False)

    def judge(self, identity: Identity, extra_verbs: Iterable[str] = ()) -> list[Finding]:
        found = judge(self._refresh(force=False), identity, extra_verbs)
        if found:
            found = judge(self._refresh(force=True), identity, extra_verbs)
        return found
