"""status.py: kstatus-compatible conditions, carried over between reconciles."""

from __future__ import annotations

from typing import Any

import pytest
from appidentity.status import (
    ACCESS_VERIFIED,
    PROVISIONED,
    READY,
    RECONCILING,
    RECONCILING_REASONS,
    SETTLED_REASONS,
    STALLED,
    STALLED_REASONS,
    TOKEN_ISSUED,
    Condition,
    conditions,
    interrupted,
    outcome_of,
    ready_condition,
    reported,
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
    assert [c["lastTransitionTime"] for c in second] == [T0, T0, T0]  # Provisioned, Ready, Stalled


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


# --- kstatus: Reconciling and Stalled ----------------------------------------------------------


def abnormal(parts: list[Condition]) -> dict[str, dict[str, Any]]:
    out = by_type(conditions(parts, [], 2, T0))
    return {t: out[t] for t in (RECONCILING, STALLED) if t in out}


def test_a_verified_identity_has_neither_reconciling_nor_stalled() -> None:
    assert abnormal(ALL_GOOD) == {}


@pytest.mark.parametrize("reason", sorted(STALLED_REASONS))
def test_each_terminal_reason_stalls_with_its_reason_and_message(reason: str) -> None:
    parts = [Condition(PROVISIONED, False, reason, f"why: {reason}")]
    assert abnormal(parts) == {
        STALLED: {
            "type": STALLED,
            "status": "True",
            "reason": reason,
            "message": f"why: {reason}",
            "observedGeneration": 2,
            "lastTransitionTime": T0,
        }
    }


def test_excess_privilege_found_by_the_check_stalls() -> None:
    parts = [*ALL_GOOD[:2], Condition(ACCESS_VERIFIED, False, "ExcessPrivilege", "1 excess rule")]
    found = abnormal(parts)
    assert list(found) == [STALLED]
    assert (found[STALLED]["reason"], found[STALLED]["message"]) == (
        "ExcessPrivilege",
        "1 excess rule",
    )


@pytest.mark.parametrize(
    ("cond", "reason"),
    [
        (Condition(ACCESS_VERIFIED, None, "Verifying", "re-checking in 2s: x"), "Verifying"),
        (Condition(ACCESS_VERIFIED, None, "WaitingForToken", "no token yet"), "WaitingForToken"),
        (
            Condition(TOKEN_ISSUED, False, "WaitingForTokenController", "waiting"),
            "WaitingForTokenController",
        ),
        (Condition(ACCESS_VERIFIED, False, "SomethingNew", "unclassified"), "SomethingNew"),
    ],
)
def test_work_under_way_is_reconciling_not_stalled(cond: Condition, reason: str) -> None:
    found = abnormal([ALL_GOOD[0], cond])
    assert list(found) == [RECONCILING]
    assert found[RECONCILING]["status"] == "True"
    assert found[RECONCILING]["reason"] == reason


def test_a_stall_beside_work_under_way_waits_for_that_work() -> None:
    parts = [
        Condition(PROVISIONED, False, "ConsentMissing", "team-b refused"),
        ALL_GOOD[1],
        Condition(ACCESS_VERIFIED, None, "Verifying", "re-checking in 1s"),
    ]
    found = abnormal(parts)
    assert list(found) == [RECONCILING]
    assert found[RECONCILING]["reason"] == "Verifying"
    # Ready still names the first thing that is wrong.
    assert by_type(conditions(parts, [], 2, T0))[READY]["reason"] == "ConsentMissing"


def test_an_inactive_schedule_is_settled_neither_reconciling_nor_stalled() -> None:
    parts = [
        ALL_GOOD[0],
        Condition(TOKEN_ISSUED, False, "ScheduleInactive", "not active before ..."),
        Condition(ACCESS_VERIFIED, False, "ScheduleInactive", "not active before ..."),
    ]
    assert abnormal(parts) == {}
    assert by_type(conditions(parts, [], 2, T0))[READY]["status"] == "False"


def test_reason_sets_do_not_overlap() -> None:
    assert not STALLED_REASONS & RECONCILING_REASONS
    assert not STALLED_REASONS & SETTLED_REASONS
    assert not RECONCILING_REASONS & SETTLED_REASONS


def test_stalled_goes_away_when_the_identity_recovers() -> None:
    broken = [Condition(PROVISIONED, False, "Conflict", "ServiceAccount x exists")]
    first = conditions(broken, [], 1, T0)
    assert STALLED in by_type(first)
    second = conditions(ALL_GOOD, first, 2, T1)
    assert [c["type"] for c in second] == [PROVISIONED, TOKEN_ISSUED, ACCESS_VERIFIED, READY]


def test_a_lasting_stall_keeps_its_transition_time() -> None:
    broken = [Condition(PROVISIONED, False, "PolicyViolation", "a")]
    first = conditions(broken, [], 1, T0)
    second = conditions([Condition(PROVISIONED, False, "PolicyViolation", "b")], first, 2, T1)
    assert by_type(second)[STALLED]["lastTransitionTime"] == T0
    assert by_type(second)[STALLED]["observedGeneration"] == 2


def _text(arg: Any, constants: dict[str, str]) -> str | None:
    """A string literal, or the value of the module-level string constant it names."""
    import ast

    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return constants.get(arg.id) if isinstance(arg, ast.Name) else None


def operator_reasons() -> set[str]:
    """Every reason the operator's modules give a condition: the third argument of a Condition,
    the second of a Stop (reconcile's early exits), the `reason` of a Stop subclass; literals
    or module-level string constants."""
    import ast
    from pathlib import Path

    import appidentity
    import appidentity.reconcile as reconcile

    reasons = {reconcile.VERIFYING}
    for path in Path(appidentity.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        constants = {
            t.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for t in node.targets
            if isinstance(t, ast.Name) and isinstance(node.value.value, str)
        }

        for node in ast.walk(tree):
            found: str | None = None
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "Condition" and len(node.args) >= 3:
                    found = _text(node.args[2], constants)
                elif name == "Stop" and len(node.args) >= 2:
                    found = _text(node.args[1], constants)
            elif isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "Stop" for b in node.bases
            ):
                for item in node.body:
                    if isinstance(item, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "reason" for t in item.targets
                    ):
                        found = _text(item.value, constants)
            if found:
                reasons.add(found)
    return reasons


def test_every_reason_the_operator_reports_is_classified() -> None:
    """A new terminal outcome must not slip into 'Reconciling forever' (the default for a
    reason of unknown kind)."""
    reasons = operator_reasons()
    normal = {"Applied", "TokenValid", "AccessVerified"}
    assert {
        "InvalidSpec",
        "PolicyViolation",
        "EscalationRefused",
        "Conflict",
        "ApplyRefused",
        "ConsentMissing",
        "ExcessPrivilege",
        "CheckFailed",
        "ScheduleInactive",
        "WaitingForToken",
    } <= reasons
    unclassified = reasons - normal - STALLED_REASONS - RECONCILING_REASONS - SETTLED_REASONS
    assert unclassified == set()


# --- interrupted: a reconcile that failed on the API server --------------------------------------


def test_interrupted_keeps_the_outcome_and_adds_reconciling() -> None:
    previous = {
        "observedGeneration": 1,
        "conditions": conditions(ALL_GOOD, [], 1, T0),
        "subject": "system:serviceaccount:a:b",
    }
    out = interrupted(previous, 2, "retrying in 5s after an API error: 500", T1)
    assert out["observedGeneration"] == 1
    assert out["subject"] == "system:serviceaccount:a:b"
    conds = by_type(out["conditions"])
    assert conds[READY]["status"] == "True"
    assert conds[RECONCILING] == {
        "type": RECONCILING,
        "status": "True",
        "reason": "ApiError",
        "message": "retrying in 5s after an API error: 500",
        "observedGeneration": 2,
        "lastTransitionTime": T1,
    }


def test_interrupted_replaces_a_stall_and_keeps_a_running_reconciling_time() -> None:
    stalled = {
        "conditions": conditions([Condition(PROVISIONED, False, "Conflict", "x")], [], 1, T0)
    }
    first = interrupted(stalled, 1, "err", T0)
    assert STALLED not in by_type(first["conditions"])
    second = interrupted(first, 1, "err again", T1)
    assert [c["type"] for c in second["conditions"]].count(RECONCILING) == 1
    assert by_type(second["conditions"])[RECONCILING]["lastTransitionTime"] == T0


def test_interrupted_before_any_outcome_is_just_reconciling() -> None:
    out = interrupted({}, 1, "err", T0)
    assert [c["type"] for c in out["conditions"]] == [RECONCILING]
    assert "observedGeneration" not in out


def test_only_a_status_with_conditions_counts_as_reported() -> None:
    assert not reported({})
    assert not reported({"observedGeneration": 0})  # the CRD's default, before any report
    assert reported({"observedGeneration": 1, "conditions": conditions(ALL_GOOD, [], 1, T0)})
