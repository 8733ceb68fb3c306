"""Pure RBAC arithmetic: does a rule cover a request, which effective rules exceed a grant.

Matching follows the API server's RBAC authorizer: `*` matches any verb, group or resource,
`*/sub` any resource's subresource `sub`, an empty resourceNames list any name, and a
nonResourceURL ending in `*` a prefix (with every trailing `*` stripped: `/logs/**` covers
`/logs/x`, as the API server's own matching does).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RuleDict = Mapping[str, Any]


@dataclass(frozen=True, order=True)
class Request:
    """One authorization question: a resource request, or a non-resource URL when `url` is set."""

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    url: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def describe(self) -> str:
        if self.url:
            return f"{self.verb} {self.url}"
        what = self.combined_resource + (f".{self.group}" if self.group else "")
        where = f" in {self.namespace}" if self.namespace else " cluster-wide"
        return f"{self.verb} {what}{'/' + self.name if self.name else ''}{where}"


def split_resource(resource: str) -> tuple[str, str]:
    base, _, sub = resource.partition("/")
    return base, sub


def _resource_matches(rule_resources: Sequence[str], req: Request) -> bool:
    combined = req.combined_resource
    for r in rule_resources:
        if r in ("*", combined):
            return True
        if req.subresource and r == f"*/{req.subresource}":
            return True
    return False


def covers(rule: RuleDict, req: Request) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and req.verb not in verbs:
        return False
    if req.url:
        return any(
            u == "*" or u == req.url or (u.endswith("*") and req.url.startswith(u.rstrip("*")))
            for u in rule.get("nonResourceURLs") or []
        )
    groups = rule.get("apiGroups") or []
    if "*" not in groups and req.group not in groups:
        return False
    if not _resource_matches(rule.get("resources") or [], req):
        return False
    names = rule.get("resourceNames") or []
    return not names or req.name in names


def covered(rules: Iterable[RuleDict], req: Request) -> bool:
    return any(covers(r, req) for r in rules)


def requests_of(rule: RuleDict, namespace: str = "") -> list[Request]:
    """Every concrete request a rule grants (wildcards stay literal `*`)."""
    verbs = rule.get("verbs") or []
    if rule.get("nonResourceURLs"):
        return [Request(verb=v, url=u) for v in verbs for u in rule["nonResourceURLs"]]
    out = []
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            base, sub = split_resource(resource)
            for verb in verbs:
                for name in rule.get("resourceNames") or [""]:
                    out.append(Request(verb, group, base, sub, namespace, name))
    return out


def normalize(rule: RuleDict) -> dict[str, list[str]]:
    """A SelfSubjectRulesReview rule in a canonical, comparable form."""
    out = {}
    for key in ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"):
        values = rule.get(key) or []
        if values:
            out[key] = sorted(values)
    return out


def excess(
    effective: Iterable[RuleDict], allowed: Sequence[RuleDict], namespace: str
) -> list[dict[str, Any]]:
    """The parts of the effective rules that neither the grant nor the baseline covers.

    A wildcard in an effective rule is treated literally: a grant of `get pods` does not cover an
    effective `*` on pods, which is exactly the kind of growth worth reporting."""
    found: list[dict[str, Any]] = []
    for rule in effective:
        uncovered = [r for r in requests_of(rule) if not covered(allowed, r)]
        if not uncovered:
            continue
        item: dict[str, Any] = {
            "namespace": namespace,
            "verbs": sorted({r.verb for r in uncovered}),
        }
        if rule.get("nonResourceURLs"):
            item["nonResourceURLs"] = sorted({r.url for r in uncovered})
        else:
            item["apiGroups"] = sorted({r.group for r in uncovered})
            item["resources"] = sorted({r.combined_resource for r in uncovered})
            names = sorted({r.name for r in uncovered if r.name})
            if names:
                item["resourceNames"] = names
        found.append(item)
    return found


def rules_hash(effective_by_namespace: Mapping[str, Iterable[RuleDict]]) -> str:
    canonical = {
        ns: sorted(json.dumps(normalize(r), sort_keys=True) for r in rules)
        for ns, rules in sorted(effective_by_namespace.items())
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]
