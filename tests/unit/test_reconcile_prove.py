"""How a proof's outcome reads: a token refused or a signature that fails is a verdict (Stalled
until something changes), keys that could not be read are not (Reconciling, asked again); and a
failure asked again after the operator's own RBAC writes is asked again in full."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from appidentity import desired as build
from appidentity import status as st
from appidentity.reconcile.prove import KEYS_UNAVAILABLE, VERIFYING, ask_again, verified_condition
from appidentity.reconcile.recheck import recheck
from appidentity.reconcile.state import Case, Memory
from appidentity.schedule import Timetable
from appidentity.verify.jwt import JwtResult
from appidentity.verify.run import Verification

from .conftest import POD_READER, IdentityFactory, identity_body

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ver", "status", "reason", "abnormal"),
    [
        (
            Verification(error="the token was refused: HTTP 401 Unauthorized"),
            False,
            "TokenRejected",
            st.STALLED,
        ),
        (
            Verification(jwt=JwtResult(False, "bad signature: it does not verify")),
            False,
            "TokenSignatureInvalid",
            st.STALLED,
        ),
        (
            Verification(
                jwt=JwtResult(
                    False, "could not read the issuer's keys: 0 Unreachable", unavailable=True
                )
            ),
            None,
            KEYS_UNAVAILABLE,
            st.RECONCILING,
        ),
        (
            Verification(jwt=JwtResult(True, "signature and claims verified")),
            True,
            "AccessVerified",
            None,
        ),
    ],
)
def test_a_verdict_stalls_and_unreadable_keys_are_asked_again(
    make_identity: IdentityFactory,
    ver: Verification,
    status: bool | None,
    reason: str,
    abnormal: str | None,
) -> None:
    cond = verified_condition(make_identity(), ver)
    assert (cond.status, cond.reason) == (status, reason)
    found = st.abnormal_condition([cond])
    assert (found.type if found else None) == abnormal


def test_a_failure_asked_again_is_proven_in_full_not_answered_by_the_last_proofs_recheck(
    make_identity: IdentityFactory,
) -> None:
    # The last proof passed: its timetable and token answer wake-ups with a re-check of the
    # rules. A drift repaired, the proof failing under RBAC lag: the retry's wake-up must be a
    # full reconcile, or the unchanged rules would keep the identity Verifying for a day.
    identity = make_identity()
    body = identity_body({"rules": [POD_READER]})
    case = Case(body, identity, {}, NOW, True, set(), build.desired_state(identity, set(), True))
    later = NOW + timedelta(hours=1)
    mem = Memory(poked=False, token="kept-in-memory", rules_hash="h1")
    mem.timetable = Timetable(identity.generation, 2.0, NOW, later)
    failed = st.Condition(st.ACCESS_VERIFIED, False, "CheckFailed", "1 check(s) failed")

    proof = ask_again(case, mem, failed)

    assert (proof.condition.status, proof.condition.reason) == (None, VERIFYING)
    assert proof.wake == 1.0 and mem.retries == 1
    # recheck() answers before touching the API (no runtime needed) when a full one is due
    assert recheck(None, body, mem, NOW + timedelta(seconds=1)) is None  # type: ignore[arg-type]
