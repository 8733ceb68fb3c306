"""The pure parts of the reconcile phases, one group per module of reconcile/: what a stop
writes, what the report shows of a token, when pruning can be skipped after a restart, what the
apply phase says of consent. The parts that call the API server are proven against a real one
in tests/integration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from appidentity import desired as build
from appidentity import status as st
from appidentity.reconcile.apply import _grants, _provisioned
from appidentity.reconcile.children import already_pruned
from appidentity.reconcile.recheck import previous_verified
from appidentity.reconcile.report import report
from appidentity.reconcile.state import Applied, Case, Proof, TokenState
from appidentity.reconcile.stop import Stop, stopped
from appidentity.reconcile.token import schedule_message

from .conftest import POD_READER, IdentityFactory, identity_body

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def case_of(
    make_identity: IdentityFactory,
    spec: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
    consenting: frozenset[str] = frozenset(),
) -> Case:
    identity = make_identity(spec)
    want = build.desired_state(identity, set(consenting), True)
    body = identity_body(spec or {"rules": [POD_READER]})
    return Case(body, identity, dict(previous or {}), NOW, True, set(consenting), want)


# --- stop ------------------------------------------------------------------------------------


def test_a_stop_writes_its_reason_and_posts_an_event_only_when_the_outcome_is_new() -> None:
    body = identity_body({"rules": [POD_READER]})
    first = stopped(body, NOW, Stop("spec.rules[0].verbs[0]: bad", "InvalidSpec"))
    provisioned = next(c for c in first.status["conditions"] if c["type"] == st.PROVISIONED)
    assert (provisioned["status"], provisioned["reason"]) == ("False", "InvalidSpec")
    assert [e.reason for e in first.events] == ["InvalidSpec"]
    again = stopped(
        {**body, "status": first.status}, NOW, Stop("spec.rules[0].verbs[0]: bad", "InvalidSpec")
    )
    assert again.events == []
    assert first.wake_in == Stop.retry_in


# --- report ----------------------------------------------------------------------------------


def test_the_report_shows_when_the_token_expires_never_the_token(
    make_identity: IdentityFactory,
) -> None:
    case = case_of(make_identity, previous={"token": {"rotation": "r1", "issuer": "https://i"}})
    token = TokenState(
        st.Condition(st.TOKEN_ISSUED, True, "TokenValid", "ok"),
        token="eyJhbGciOi.secret.part",
        expires_at="2026-12-05T13:00:00Z",
        refresh_at=NOW + timedelta(minutes=48),
    )
    done = Applied(
        st.Condition(st.PROVISIONED, True, "Applied", "2 objects applied"), [], token, 600.0, False
    )
    proof = Proof(
        st.Condition(st.ACCESS_VERIFIED, True, "AccessVerified", "ok"), {"checkedAt": "x"}, 30.0
    )
    result = report(case, done, proof)
    assert "secret.part" not in repr(result.status)
    assert result.status["token"] == {
        "type": "Bound",
        "expiresAt": "2026-12-05T13:00:00Z",
        "refreshAt": "2026-12-05T12:48:00Z",
        "issuer": "https://i",
        "rotation": "r1",  # the last rotation done is kept
    }
    assert result.wake_in == 30.0
    assert [e.reason for e in result.events] == ["AccessVerified"]  # a new outcome


# --- children --------------------------------------------------------------------------------


def test_pruning_after_a_restart_is_skipped_only_when_the_status_proves_it_was_done(
    make_identity: IdentityFactory,
) -> None:
    identity = make_identity()  # generation 3
    provisioned = {"type": st.PROVISIONED, "status": "True", "reason": "Applied"}
    ready = {"type": st.READY, "status": "True", "reason": "AccessVerified"}
    done = {"observedGeneration": 3, "conditions": [provisioned, ready]}
    assert already_pruned(identity, done) == (3, True)
    assert already_pruned(identity, {**done, "observedGeneration": 2}) is None
    assert already_pruned(identity, {}) is None  # generation 3 without a status: list them


# --- apply and token -------------------------------------------------------------------------


def test_grants_in_namespaces_without_consent_are_refused_and_said_so(
    make_identity: IdentityFactory,
) -> None:
    spec = {"rules": [POD_READER], "namespaces": [{"name": "b", "rules": [POD_READER]}]}
    refused = case_of(make_identity, spec)
    assert [g["state"] for g in _grants(refused)] == ["Applied", "Refused"]
    assert _provisioned(refused).reason == "ConsentMissing"
    given = case_of(make_identity, spec, consenting=frozenset({"b"}))
    assert [g["state"] for g in _grants(given)] == ["Applied", "Applied"]
    assert _provisioned(given).reason == "Applied"


def test_outside_the_schedule_the_message_says_which_edge(make_identity: IdentityFactory) -> None:
    later = NOW + timedelta(days=1)
    identity = make_identity({"rules": [POD_READER], "schedule": {"notBefore": later.isoformat()}})
    assert schedule_message(identity, NOW).startswith("schedule: not active before 2026-12-06")


# --- recheck ---------------------------------------------------------------------------------


def test_the_last_verified_condition_is_read_back_from_the_status() -> None:
    verified = {"type": st.ACCESS_VERIFIED, "status": "True", "reason": "AccessVerified"}
    assert previous_verified({"conditions": [verified]}).status is True
    assert previous_verified({}).status is None
