"""Pure: from an identity's spec (and the rules of the ClusterRoles it names) to the exact list
of questions the self-check asks with the minted token.

The boundary ("must be denied") is derived from the grant so that it never contradicts it: a
boundary question that the grant answers with "allowed" is dropped, except the user's own
`verification.mustDeny`, which is a claim to test, not a default to adjust.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..model import Identity
from ..rbac import Request, RuleDict, covered, requests_of, split_resource

MAX_ALLOWED_CHECKS = 128
MAX_REAL_READS = 8


@dataclass(frozen=True)
class Check:
    request: Request
    allowed: bool  # what the answer must be
    source: str  # where the expectation comes from, shown in failures and `check`


@dataclass(frozen=True)
class Plan:
    allowed: list[Check]
    denied: list[Check]
    # namespace -> rules granted there; "" holds the cluster-wide rules
    grants: dict[str, list[RuleDict]]
    real_reads: list[Request] = field(default_factory=list)
    real_denied: Check | None = None  # a boundary check, tried for real: its 403 answers it
    truncated: int = 0  # allowed checks not asked because of MAX_ALLOWED_CHECKS

    @property
    def namespaces(self) -> list[str]:
        return [ns for ns in self.grants if ns]


def _granted_rules(
    identity: Identity, consenting: set[str], cluster_roles: Mapping[str, Sequence[RuleDict]]
) -> dict[str, list[tuple[str, RuleDict]]]:
    """namespace -> [(source, rule)], rules of ClusterRoles bound in that namespace included
    (their nonResourceURLs carry no meaning in a RoleBinding, so they are left out)."""
    spec = identity.spec
    sources = [(identity.namespace, spec.rules, spec.cluster_roles, "spec")]
    sources += [
        (g.name, g.rules, g.cluster_roles, f"spec.namespaces[{i}]")
        for i, g in enumerate(spec.namespaces)
        if g.name in consenting
    ]
    granted: dict[str, list[tuple[str, RuleDict]]] = {}
    for ns, rules, roles, where in sources:
        items: list[tuple[str, RuleDict]] = [
            (f"{where}.rules[{i}]", r.to_k8s()) for i, r in enumerate(rules)
        ]
        for role in roles:
            items += [
                (f"ClusterRole {role}", r)
                for r in cluster_roles.get(role, [])
                if not r.get("nonResourceURLs")
            ]
        granted[ns] = items
    granted[""] = [
        (f"spec.clusterRules[{i}]", r.to_k8s()) for i, r in enumerate(spec.cluster_rules)
    ]
    return granted


def proven_namespaces(identity: Identity, consenting: set[str]) -> list[str]:
    """The namespaces a full proof reads the token's effective rules in (`Plan.namespaces`),
    known without reading any ClusterRole."""
    others = [g.name for g in identity.spec.namespaces if g.name in consenting]
    return list(dict.fromkeys([identity.namespace, *others]))


def _is_concrete(req: Request) -> bool:
    return "*" not in (req.verb, req.group, req.resource)


def _allowed_checks(granted: dict[str, list[tuple[str, RuleDict]]]) -> list[Check]:
    checks: list[Check] = []
    for ns, items in granted.items():
        for source, rule in items:
            reqs = [r for r in requests_of(rule, ns) if _is_concrete(r)]
            if source.startswith("ClusterRole"):
                reqs = reqs[:1]  # the whole role is proven by the rules review; one sample here
            checks += [Check(r, True, source) for r in reqs]
    return checks


def _outside_namespace(identity: Identity, granted: Mapping[str, object]) -> str:
    for candidate in ("kube-system", "default", "kube-public"):
        if candidate not in granted:
            return candidate
    return f"{identity.namespace}-not-granted"


def _boundary(identity: Identity, granted: dict[str, list[tuple[str, RuleDict]]]) -> list[Check]:
    ns = identity.namespace
    outside = _outside_namespace(identity, granted)
    rbac = "rbac.authorization.k8s.io"
    fixed = [
        Request("get", "", "secrets", "", ns),
        Request("list", "", "secrets", "", ns),
        Request("watch", "", "secrets", "", ns),
        Request("create", "", "pods", "", ns),
        Request("create", "", "pods", "exec", ns),
        Request("create", rbac, "rolebindings", "", ns),
        Request("escalate", rbac, "roles", "", ns),
        Request("bind", rbac, "clusterroles"),
        Request("impersonate", "", "users"),
        Request("impersonate", "", "serviceaccounts", "", ns),
        Request("create", "", "serviceaccounts", "token", ns),
        Request("get", "", "nodes", "proxy"),
    ]
    checks = [Check(r, False, "boundary") for r in fixed]
    elsewhere = _grants_in(granted, outside)
    seen: set[tuple[str, str, str, str]] = set()
    for granted_ns, items in granted.items():
        if not granted_ns:
            continue
        for _, rule in items:
            reqs = [_in(r, outside) for r in requests_of(rule, granted_ns) if _is_concrete(r)]
            # A list first, as the cluster-wide check is: refused for real, it proves that one too.
            ordered = [r for r in reqs if r.verb == "list"] + reqs
            req = next((r for r in ordered if not covered(elsewhere, r)), None)
            if req is None or (key := (req.verb, req.group, req.resource, req.subresource)) in seen:
                continue
            seen.add(key)
            checks.append(Check(req, False, "boundary: ungranted namespace"))
            listing = Request("list", req.group, req.resource, req.subresource)
            checks.append(Check(listing, False, "boundary: cluster-wide"))
    return checks


def _in(req: Request, namespace: str) -> Request:
    return Request(req.verb, req.group, req.resource, req.subresource, namespace, req.name)


def _grants_in(granted: dict[str, list[tuple[str, RuleDict]]], namespace: str) -> list[RuleDict]:
    rules = [r for _, r in granted[""]]
    if namespace:
        rules += [r for _, r in granted.get(namespace, [])]
    return rules


def _user_must_deny(identity: Identity) -> list[Check]:
    out = []
    for i, c in enumerate(identity.spec.verification.must_deny):
        resource, sub = split_resource(c.resource)
        req = Request(
            c.verb,
            c.group,
            resource,
            c.subresource or sub,
            c.namespace or identity.namespace,
            c.name,
        )
        out.append(Check(req, False, f"spec.verification.mustDeny[{i}]"))
    return out


def _real_reads(granted: dict[str, list[tuple[str, RuleDict]]]) -> list[Request]:
    reads: list[Request] = []
    for ns, items in granted.items():
        for _, rule in items:
            verbs = rule.get("verbs") or []
            names = rule.get("resourceNames") or []
            # A get first: one object looked up (a name the rule gives, else kube/rest's probe
            # name, 404 being allowed) costs the API server less than a consistent list.
            verb = "get" if "get" in verbs else "list" if "list" in verbs and not names else ""
            if not verb or rule.get("nonResourceURLs"):
                continue
            for req in requests_of({**rule, "verbs": [verb]}, ns):
                if _is_concrete(req) and not req.subresource:
                    reads.append(req)
                    break
    unique = list(dict.fromkeys(reads))
    return unique[:MAX_REAL_READS]


def build_plan(
    identity: Identity, consenting: set[str], cluster_roles: Mapping[str, Sequence[RuleDict]]
) -> Plan:
    granted = _granted_rules(identity, consenting, cluster_roles)
    allowed = list(dict.fromkeys(_allowed_checks(granted)))
    truncated = max(0, len(allowed) - MAX_ALLOWED_CHECKS)
    boundary = [
        c
        for c in _boundary(identity, granted)
        if not covered(_grants_in(granted, c.request.namespace), c.request)
    ]
    denied = list(dict.fromkeys(boundary)) + _user_must_deny(identity)
    # A denial tried for real, which then answers its check: preferably one in a namespace
    # that no rules review covers (it would need an access review of its own), a list first.
    readable = [
        c
        for c in boundary
        if c.request.verb in ("list", "get") and not c.request.subresource and c.request.namespace
    ]
    reviewed = set(proven_namespaces(identity, consenting))
    real_denied = min(
        readable,
        key=lambda c: (c.request.namespace in reviewed, c.request.verb != "list"),
        default=None,
    )
    return Plan(
        allowed=allowed[:MAX_ALLOWED_CHECKS],
        denied=denied,
        grants={ns: [r for _, r in items] for ns, items in granted.items()},
        real_reads=_real_reads(granted),
        real_denied=real_denied,
        truncated=truncated,
    )
