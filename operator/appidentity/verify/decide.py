"""Pure: which of a plan's checks the token's rules reviews already answer, and which need an
access review of their own.

A SelfSubjectRulesReview lists, for one namespace, the rules every authorizer in the chain
allows the token, and says when it cannot: `incomplete` when an authorizer cannot list rules (a
webhook authorizer never can), `evaluationError` when RBAC could not read a role a binding names.
Only a complete answer without error decides anything:

- A request **in a reviewed namespace** is allowed exactly when one of the listed rules covers
  it, the question an access review would put to the same authorizers (RBAC: the namespace's
  RoleBindings and every ClusterRoleBinding).
- A request **outside any namespace** (cluster-scoped, across all namespaces, a non-resource
  URL) is authorized by ClusterRoleBindings alone. Their rules are in every namespace's review,
  together with what that namespace's RoleBindings grant. So a namespace's review proves it
  denied when no listed rule covers it; when one does, only an access review can tell, or a
  real request: the same request made for real in some namespace and refused (403) shows that
  no ClusterRoleBinding allows it, since one would allow it in every namespace.
- A request in **any other namespace** is always asked: RoleBindings there are in no review.

Both rules for requests outside a namespace rely on what every authorizer that lists rules does
(RBAC, Node, AlwaysAllow, AlwaysDeny): a rule that applies outside namespaces applies in every
namespace too. ABAC, which structured authorization configuration cannot even name, is the
exception: a policy without a namespace applies only outside them and is in no review.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from ..rbac import Request, RuleDict, covered
from .plan import Check


@dataclass(frozen=True)
class Answer:
    """A check answered without an access review of its own."""

    allowed: bool
    refused_in: str = ""  # the namespace the same request was refused in for real; "": the review


@dataclass(frozen=True)
class RulesAnswer:
    """A SelfSubjectRulesReview's answer in one namespace."""

    rules: Sequence[RuleDict]
    complete: bool  # not `incomplete` and no `evaluationError`


def answered(
    req: Request, reviews: Mapping[str, RulesAnswer], refused: Collection[Request] = ()
) -> Answer | None:
    """How `req` is answered by the rules reviews (and the requests `refused` for real, each in
    a namespace); None when only an access review can tell."""
    if req.namespace:
        found = reviews.get(req.namespace)
        if found is None or not found.complete:
            return None
        return Answer(covered(found.rules, req))
    complete = [found for found in reviews.values() if found.complete]
    if any(not covered(found.rules, req) for found in complete):
        return Answer(False)
    if complete:
        for r in refused:
            if r.namespace and replace(r, namespace="") == req:
                return Answer(False, r.namespace)
    return None


def split(
    checks: Sequence[Check], reviews: Mapping[str, RulesAnswer], refused: Collection[Request] = ()
) -> tuple[list[tuple[Check, Answer]], list[Check]]:
    """([(check, its answer) from the rules reviews and refusals], [checks that need an access
    review])."""
    settled: list[tuple[Check, Answer]] = []
    asked: list[Check] = []
    for check in checks:
        got = answered(check.request, reviews, refused)
        if got is None:
            asked.append(check)
        else:
            settled.append((check, got))
    return settled, asked
