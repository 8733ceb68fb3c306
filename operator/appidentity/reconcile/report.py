"""Report: the phases' outcomes as one status (the conditions kstatus and GitOps tools read, the
token, the grants, the verification) and an Event when the outcome changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import status as st
from ..model import rfc3339
from .prove import VERIFYING
from .state import Applied, Case, Event, Proof, Result, TokenState


def report(case: Case, done: Applied, proof: Proof) -> Result:
    identity, previous = case.identity, case.previous
    token = _token_status(identity.spec.token.type, done.token, previous, proof.token_extra)
    parts = [done.provisioned, done.token.condition, proof.condition]
    status: dict[str, Any] = {
        "observedGeneration": identity.generation,
        "conditions": st.conditions(
            parts, previous.get("conditions", []), identity.generation, rfc3339(case.now)
        ),
        "subject": identity.subject,
        "serviceAccountName": identity.service_account,
        "secretName": identity.secret_name,
        "grants": done.grants,
        "token": token,
    }
    if proof.verification is not None:
        status["verification"] = dict(proof.verification)
    events = case.events
    before, after = st.outcome_of(previous), st.outcome_of(status)
    if before != after and after[1] != VERIFYING:
        ready = next(c for c in status["conditions"] if c["type"] == st.READY)
        kind = "Normal" if after[0] == "True" else "Warning"
        events.append(Event(kind, after[1] or "Unknown", ready["message"]))
    return Result(status, events, max(0.5, min(done.wake, proof.wake)), proof.check)


def _token_status(
    kind: str,
    token: TokenState,
    previous: Mapping[str, Any],
    token_extra: Mapping[str, str] | None,
) -> dict[str, Any]:
    """status.token: never the token, only when it expires and who vouches for it."""
    out: dict[str, Any] = {"type": kind}
    if token.expires_at:
        out["expiresAt"] = token.expires_at
    if token.refresh_at:
        out["refreshAt"] = rfc3339(token.refresh_at)
    if token.audiences:
        out["audiences"] = token.audiences
    old_token = previous.get("token") or {}
    extra = token_extra or {k: old_token[k] for k in ("issuer", "keyID") if k in old_token}
    out.update(extra)
    rotation = token.rotation or old_token.get("rotation")
    if rotation:
        out["rotation"] = rotation
    return out
