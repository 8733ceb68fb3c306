"""status.py: kstatus-compatible conditions, carried over between reconciles."""

from __future__ import annotations

from typing import Any

from appidentity.status import (
    ACCESS_VERIFIED,
    PROVISIONED,
    READY,
    TOKEN_ISSUED,
    Condition,
    conditions,
    outcome_of,
    ready_condition,
    without_timestamps,
)

T0 = "2026-12-01T00:00:00Z"
T1 = "2026-12-01T00:10:00Z"

ALL_GOOD = [
    Condition(PROVISIONED, True, "Applied", "all objects applied"),
    Condition(TOKEN_ISSUED, True, "TokenIssued", "Bound token valid"),
    Condition(ACCESS_VERIFIED, True, "AccessVerified", "6 allowed, 14 denied"),
]


def by_type(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


def test_status_text_of_true_false_unknown() -> None:
    assert [Condition("X", s, "r", "m").status_text for s in (True, False, None)] == [
        "True",
        "False",
        "Unknown",
    ]


def test_ready_is_true_with_the_verification_reason_when_all_are_true() -> None:
    assert ready_condition(ALL_GOOD) == Condition(
        READY, True, "AccessVerified", "identity provisioned, token valid and access verified"
    )


def test_ready_mirrors_the_first_condition_that_is_not_true() -> None:
    parts = [
        ALL_GOOD[0],
        Condition(TOKEN_ISSUED, None, "Waiting", "waiting for the token controller"),
        Condition(ACCESS_VERIFIED, False, "ExcessPrivilege", "2 excess rules"),
    ]
    assert ready_condition(parts) == Condition(
        READY, None, "Waiting", "waiting for the token controller"
    )


def test_ready_mirrors_a_false_condition() -> None:
    parts = [*ALL_GOOD[:2], Condition(ACCESS_VERIFIED, False, "ExcessPrivilege", "1 excess rule")]
    assert ready_condition(parts) == Condition(READY, False, "ExcessPrivilege", "1 excess rule")


def test_ready_without_a_verification_condition_says_provisioned() -> None:
    assert ready_condition(ALL_GOOD[:2]).reason == "Provisioned"
    assert ready_condition(ALL_GOOD[:2]).status is True


def test_conditions_end_with_ready_and_carry_every_field() -> None:
    out = conditions(ALL_GOOD, [], generation=3, now=T0)
    assert [c["type"] for c in out] == [PROVISIONED, TOKEN_ISSUED, ACCESS_VERIFIED, READY]
    assert out[0] == {
        "type": PROVISIONED,
        "status": "True",
        "reason": "Applied",
        "message": "all objects applied",
        "observedGeneration": 3,
        "lastTransitionTime": T0,
    }
    assert out[3]["status"] == "True"
    assert out[3]["reason"] == "AccessVerified"


def test_unchanged_status_keeps_the_last_transition_time() -> None:
    first = conditions(ALL_GOOD, [], generation=3, now=T0)
    reworded = [*ALL_GOOD[:2], Condition(ACCESS_VERIFIED, True, "AccessVerified", "7 allowed")]
    second = conditions(reworded, first, generation=4, now=T1)
    assert [c["lastTransitionTime"] for c in second] == [T0, T0, T0, T0]
    assert by_type(second)[ACCESS_VERIFIED]["message"] == "7 allowed"
    assert {c["observedGeneration"] for c in second} == {4}


def test_changed_status_sets_a_new_transition_time() -> None:
    first = conditions(ALL_GOOD, [], generation=3, now=T0)
    broken = [*ALL_GOOD[:2], Condition(ACCESS_VERIFIED, False, "ExcessPrivilege", "excess")]
    second = by_type(conditions(broken, first, generation=3, now=T1))
    assert second[PROVISIONED]["lastTransitionTime"] == T0
    assert second[TOKEN_ISSUED]["lastTransitionTime"] == T0
    assert second[ACCESS_VERIFIED]["lastTransitionTime"] == T1
    assert second[READY]["lastTransitionTime"] == T1
    assert (second[READY]["status"], second[READY]["reason"]) == ("False", "ExcessPrivilege")


def test_reason_change_alone_is_not_a_transition() -> None:
    first = conditions([Condition(PROVISIONED, False, "Conflict", "x")], [], 1, T0)
    second = conditions([Condition(PROVISIONED, False, "PolicyViolation", "y")], first, 1, T1)
    assert [c["lastTransitionTime"] for c in second] == [T0, T0]


def test_previous_condition_without_a_time_gets_now() -> None:
    previous = [{"type": PROVISIONED, "status": "True"}]
    out = conditions(ALL_GOOD[:1], previous, 1, T1)
    assert out[0]["lastTransitionTime"] == T1


def test_new_condition_type_gets_now() -> None:
    first = conditions(ALL_GOOD[:1], [], 1, T0)
    second = by_type(conditions(ALL_GOOD[:2], first, 1, T1))
    assert second[PROVISIONED]["lastTransitionTime"] == T0
    assert second[TOKEN_ISSUED]["lastTransitionTime"] == T1


# --- outcome_of and without_timestamps ---------------------------------------------------------


def test_outcome_of_reads_the_ready_condition() -> None:
    status = {"conditions": conditions(ALL_GOOD, [], 1, T0)}
    assert outcome_of(status) == ("True", "AccessVerified")


def test_outcome_of_without_ready_is_unknown() -> None:
    assert outcome_of({}) == ("Unknown", "")
    assert outcome_of({"conditions": [{"type": PROVISIONED, "status": "True"}]}) == ("Unknown", "")


def test_outcome_of_tolerates_a_bare_ready_condition() -> None:
    assert outcome_of({"conditions": [{"type": READY}]}) == ("Unknown", "")


def test_without_timestamps_drops_transition_times_and_checked_at() -> None:
    status = {
        "observedGeneration": 2,
        "conditions": [{"type": READY, "status": "True", "lastTransitionTime": T0}],
        "verification": {"checkedAt": T0, "allowedChecks": 6, "rulesHash": "abc"},
    }
    assert without_timestamps(status) == {
        "observedGeneration": 2,
        "conditions": [{"type": READY, "status": "True"}],
        "verification": {"allowedChecks": 6, "rulesHash": "abc"},
    }
    assert status["conditions"][0]["lastTransitionTime"] == T0  # the input is left alone
    assert status["verification"]["checkedAt"] == T0


def test_statuses_differing_only_in_timestamps_compare_equal() -> None:
    a = {"conditions": conditions(ALL_GOOD, [], 1, T0), "verification": {"checkedAt": T0}}
    b = {"conditions": conditions(ALL_GOOD, [], 1, T1), "verification": {"checkedAt": T1}}
    assert without_timestamps(a) == without_timestamps(b)
    c = {"conditions": conditions(ALL_GOOD, [], 2, T1), "verification": {"checkedAt": T1}}
    assert without_timestamps(a) != without_timestamps(c)


def test_without_timestamps_of_an_empty_status() -> None:
    assert without_timestamps({}) == {"conditions": []}
