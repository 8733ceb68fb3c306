"""How a proof's outcome reads: a token refused or a signature that fails is a verdict (Stalled
until something changes), keys that could not be read are not (Reconciling, asked again)."""

from __future__ import annotations

import pytest
from appidentity import status as st
from appidentity.reconcile.prove import KEYS_UNAVAILABLE, verified_condition
from appidentity.verify.jwt import JwtResult
from appidentity.verify.run import Verification

from .conftest import IdentityFactory


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
