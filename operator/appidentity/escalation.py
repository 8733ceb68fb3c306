"""Pure: may the requester ask the operator for this identity? The API server's own rule.

Kubernetes lets a user create a Role only if they already hold every permission in it at the
same scope (or may `escalate` roles there), and bind a ClusterRole only if they may `bind` it
or hold all its rules. An AppIdentity asks the operator to do both on its writer's behalf, so
the same rule is applied to whoever wrote its spec (the *requester*, stamped into the object at
admission, see `deploy/requester-policy.yaml`) before anything is granted. Minting the token
counts too: doing it by hand takes `create serviceaccounts/token` (a Bound token) or `create
secrets` (a Legacy token Secret that the token controller fills).

The questions are asked in two rounds, so that a requester who may `escalate` (or `bind`) costs
one review per scope instead of one per permission: `questions` first returns the overrides,
then, once those are answered, the permissions of every grant whose override was denied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import Identity, Rule
from .rbac import Request, RuleDict, requests_of

RBAC = "rbac.authorization.k8s.io"
# Set by the admission policy from the request's userInfo whenever the spec is written.
REQUESTER_ANNOTATION = "appidentity.dev/requester"
MAX_NAMED = 3  # permissions named in one refusal message; the count says how many more


@dataclass(frozen=True)
class Requester:
    """A user as the API server authenticated them: what a SubjectAccessReview asks about."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def review_user(self) -> dict[str, Any]:
        """The user fields of a SubjectAccessReview spec."""
        out: dict[str, Any] = {"user": self.username, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra}
        return out


class StampError(ValueError):
    pass


_CEL_ONLY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_CEL_TO_JSON = {"a": "\\u0007", "v": "\\u000b"}


def _json_text(stamp: str) -> str:
    """CEL's `strings.quote` escapes like JSON, but for \\a and \\v, which JSON lacks."""
    return _CEL_ONLY_ESCAPE.sub(lambda m: _CEL_TO_JSON.get(m[1], m[0]), stamp)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StampError(f"{what} is not a list of strings")
    return tuple(value)


def parse_stamp(stamp: str) -> Requester:
    """The annotation's value, a JSON object written by the admission policy's CEL:
    `{"username": "...", "uid": "...", "groups": [...], "extra": {"key": [...]}}`."""
    try:
        doc = json.loads(_json_text(stamp), strict=False)
    except ValueError as exc:
        raise StampError("not the JSON object the admission policy writes") from exc
    if not isinstance(doc, dict) or set(doc) != {"username", "uid", "groups", "extra"}:
        raise StampError("expected exactly username, uid, groups and extra")
    username, uid, extra = doc["username"], doc["uid"], doc["extra"]
    if not isinstance(username, str) or not username or not isinstance(uid, str):
        raise StampError("username and uid must be strings, username not empty")
    if not isinstance(extra, dict):
        raise StampError("extra is not an object")
    pairs = tuple((k, _strings(v, f"extra[{k}]")) for k, v in sorted(extra.items()))
    return Requester(username, uid, _strings(doc["groups"], "groups"), pairs)


def requester_of(annotations: Mapping[str, str]) -> Requester | None:
    """The stamped requester, None when there is no stamp; StampError when it is malformed."""
    stamp = annotations.get(REQUESTER_ANNOTATION)
    return None if stamp is None else parse_stamp(stamp)


# --- what the spec asks for ---------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One entry of the spec, with what RBAC would demand of its requester: every permission
    in `needs`, unless `override` (escalate, or bind for a ClusterRole) is allowed."""

    path: str  # the spec field, e.g. spec.rules[0]
    needs: tuple[Request, ...]
    override: Request | None = None
    cluster_role: str = ""  # for a ClusterRole: its name; `needs` filled once its rules are read
    expanded: bool = True


def _rule_grants(path: str, rules: Sequence[Rule], namespace: str) -> list[Grant]:
    kind = "roles" if namespace else "clusterroles"
    override = Request("escalate", RBAC, kind, namespace=namespace)
    return [
        Grant(f"{path}[{i}]", tuple(requests_of(rule.to_k8s(), namespace)), override)
        for i, rule in enumerate(rules)
    ]


def _role_grants(
    path: str, roles: Sequence[str], namespace: str, rules: Mapping[str, Sequence[RuleDict]]
) -> list[Grant]:
    out = []
    for i, role in enumerate(roles):
        bind = Request("bind", RBAC, "clusterroles", namespace=namespace, name=role)
        needs = [r for rule in rules.get(role, ()) for r in requests_of(rule, namespace)]
        out.append(Grant(f"{path}[{i}]", tuple(needs), bind, role, expanded=role in rules))
    return out


def grants(
    identity: Identity, role_rules: Mapping[str, Sequence[RuleDict]] | None = None
) -> list[Grant]:
    """Everything the spec asks for, consenting namespaces or not (consent may come later,
    without a new generation to judge). `role_rules` holds the rules of the ClusterRoles read so
    far; a ClusterRole not in it is judged on `bind` alone until `unexpanded` asks for it."""
    spec, ns, rules = identity.spec, identity.namespace, role_rules or {}
    out = _rule_grants("spec.rules", spec.rules, ns)
    out += _role_grants("spec.clusterRoles", spec.cluster_roles, ns, rules)
    for j, grant in enumerate(spec.namespaces):
        path = f"spec.namespaces[{j}]"
        out += _rule_grants(f"{path}.rules", grant.rules, grant.name)
        out += _role_grants(f"{path}.clusterRoles", grant.cluster_roles, grant.name, rules)
    out += _rule_grants("spec.clusterRules", spec.cluster_rules, "")
    if spec.token.type == "Bound":
        mint = Request("create", "", "serviceaccounts", "token", ns, identity.service_account)
    else:
        mint = Request("create", "", "secrets", namespace=ns)
    out.append(Grant("spec.token", (mint,)))
    return out


def questions(grants: Sequence[Grant], answers: Mapping[Request, bool]) -> list[Request]:
    """What to ask next, each once: overrides not yet answered; the permissions of grants that
    have no override or whose override was denied."""
    out: dict[Request, None] = {}
    for g in grants:
        if g.override is not None and g.override not in answers:
            out[g.override] = None
        elif g.override is None or not answers[g.override]:
            out.update((r, None) for r in g.needs if r not in answers)
    return list(out)


def unexpanded(grants: Sequence[Grant], answers: Mapping[Request, bool]) -> set[str]:
    """ClusterRoles whose `bind` was denied and whose rules must therefore be read."""
    return {
        g.cluster_role
        for g in grants
        if not g.expanded and g.override is not None and answers.get(g.override) is False
    }


@dataclass
class Refusal:
    path: str
    missing: list[Request] = field(default_factory=list)
    override: Request | None = None

    def message(self, who: str) -> str:
        named = ", ".join(r.describe() for r in self.missing[:MAX_NAMED])
        more = len(self.missing) - MAX_NAMED
        if more > 0:
            named += f" (and {more} more)"
        if (
            self.override is not None
            and self.override.verb == "bind"
            and self.missing != [self.override]
        ):
            role = self.override.name
            return (
                f"{self.path}: {who} may not bind ClusterRole {role} and lacks some of its "
                f"permissions: may not {named}"
            )
        return f"{self.path}: {who} may not {named}"


def refusals(grants: Sequence[Grant], answers: Mapping[Request, bool]) -> list[Refusal]:
    """The grants the requester could not make by hand, with the permissions they lack."""
    out = []
    for g in grants:
        if g.override is not None and answers.get(g.override, False):
            continue
        # A ClusterRole whose rules were never read is judged on `bind` alone.
        needs = g.needs if g.expanded else (g.override,) if g.override else ()
        missing = [r for r in needs if not answers.get(r, False)]
        if missing:
            out.append(Refusal(g.path, missing, g.override))
    return out
