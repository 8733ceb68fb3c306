"""Judge: the operator-wide policy, then the requester's own rights (escalation.py), before
anything is written. Nobody gets through the operator what they could not grant themselves."""

from __future__ import annotations

from .. import escalation as esc
from ..model import Identity
from ..policy import check
from ..rbac import Request
from ..verify.run import REVIEWS
from .gather import cluster_role_rules
from .state import Case, Memory, Runtime
from .stop import Stop

ESCALATION_REFUSED = "EscalationRefused"
JUDGING = "VerifyingRequester"  # a refusal being asked again once before it is reported
JUDGE_FIRST_RETRY = 2.0
JUDGE_AGAIN = 15.0  # seconds until a refused requester is asked about again
UNKNOWN_RULE_AGAIN = 60.0  # a rule naming what the cluster lacks: its CRD may be on its way


def judge(rt: Runtime, case: Case, mem: Memory) -> None:
    """Stops (PolicyViolation; UnknownRule, a rule naming what the cluster's discovery does not
    serve; EscalationRefused) when the spec may not be applied; a verdict for this generation
    and requester is remembered, so it is asked once."""
    violations = check(case.identity, rt.policy)
    if violations:
        raise Stop("; ".join(str(v) for v in violations), "PolicyViolation")
    unknown = rt.discovery.judge(case.identity, rt.policy.extra_verbs)
    if unknown:
        raise Stop("; ".join(map(str, unknown)), "UnknownRule", retry_in=UNKNOWN_RULE_AGAIN)
    annotations = case.body.get("metadata", {}).get("annotations") or {}
    stamp = annotations.get(esc.REQUESTER_ANNOTATION)
    verdict = (case.identity.generation, stamp)
    if mem.judged == verdict:
        return
    requester = _requester(case.identity, stamp)
    refused = _refusals(rt, case.identity, requester)
    if refused:
        message = "; ".join(r.message(requester.username) for r in refused)
        if mem.refused != verdict:
            # A GitOps apply writes the requester's RBAC together with the identity, and
            # RBAC reaches the authorizer a moment later: one more look before refusing.
            mem.refused = verdict
            pending = f"re-checking in {JUDGE_FIRST_RETRY:.0f}s: {message}"
            raise Stop(pending, JUDGING, retry_in=JUDGE_FIRST_RETRY, event=False)
        # Asked again from time to time: rights granted after the refusal take effect.
        raise Stop(message, ESCALATION_REFUSED, retry_in=JUDGE_AGAIN)
    mem.judged = verdict


def _requester(identity: Identity, stamp: str | None) -> esc.Requester:
    """Who wrote this generation, as admission recorded it."""
    where = f"metadata.annotations[{esc.REQUESTER_ANNOTATION}]"
    # No exemption for an unstamped spec, whatever its status says: status is written by more
    # than this operator, and admission records a requester on every supported version.
    if stamp is None:
        raise Stop(
            f"{where}: no requester recorded for generation {identity.generation}; "
            "the requester recording appidentity-requester (README, Install) must be "
            "installed when the spec is written: change the spec once it is",
            ESCALATION_REFUSED,
        )
    try:
        return esc.parse_stamp(stamp)
    except esc.StampError as exc:
        raise Stop(f"{where}: malformed ({exc})", ESCALATION_REFUSED) from exc


def _refusals(rt: Runtime, identity: Identity, requester: esc.Requester) -> list[esc.Refusal]:
    """Asks SubjectAccessReviews for the requester: the overrides first, then the permissions
    of the grants they do not cover (reading a ClusterRole only when `bind` on it is denied)."""
    user = requester.review_user()

    def ask(questions: list[Request]) -> dict[Request, bool]:
        allowed = REVIEWS.map(lambda r: rt.kube.subject_access_review(user, r), questions)
        return dict(zip(questions, allowed, strict=True))

    wanted = esc.grants(identity)
    answers = ask(esc.questions(wanted, {}))
    roles = esc.unexpanded(wanted, answers)
    if roles:
        wanted = esc.grants(identity, cluster_role_rules(rt, roles))
    answers |= ask(esc.questions(wanted, answers))
    return esc.refusals(wanted, answers)
