"""The wake-up decisions between full proofs (appidentity.schedule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from appidentity.schedule import SETTLE_DELAYS, Due, Timetable, jittered

T0 = datetime(2026, 12, 2, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def table(**kw: object) -> Timetable:
    values: dict[str, object] = {
        "generation": 3,
        "every": 600.0,
        "recheck_at": at(600),
        "full_at": at(86_400),
        "refresh_at": at(2_880),
        "schedule_change": None,
    }
    values.update(kw)
    return Timetable(**values)  # type: ignore[arg-type]


def test_a_wake_before_any_deadline_does_nothing() -> None:
    assert table().due(3, poked=False, now=at(10)) is Due.NOTHING


def test_the_interval_asks_for_a_recheck_not_a_full_proof() -> None:
    assert table().due(3, poked=False, now=at(600)) is Due.RECHECK


def test_a_poke_or_a_new_generation_is_a_full_reconcile() -> None:
    assert table().due(3, poked=True, now=at(10)) is Due.FULL
    assert table().due(4, poked=False, now=at(10)) is Due.FULL


def test_rotation_the_long_interval_and_a_schedule_edge_are_full_reconciles() -> None:
    assert table().due(3, poked=False, now=at(2_880)) is Due.FULL
    assert table(refresh_at=None).due(3, poked=False, now=at(86_400)) is Due.FULL
    edge = table(schedule_change=at(700))
    assert edge.due(3, poked=False, now=at(650)) is Due.RECHECK
    assert edge.due(3, poked=False, now=at(700)) is Due.FULL


def test_next_wake_is_the_soonest_deadline() -> None:
    assert table().next_wake(at(0)) == 600
    assert table(recheck_at=at(5_000)).next_wake(at(0)) == 2_880
    assert table().next_wake(at(599.9)) == 0.5  # never a busy loop


def test_settle_rechecks_come_first_then_the_interval() -> None:
    tt = table(settle=SETTLE_DELAYS)
    tt.rechecked(at(100))
    assert tt.recheck_at == at(100 + SETTLE_DELAYS[0])
    tt.rechecked(at(200))
    assert tt.recheck_at == at(200 + SETTLE_DELAYS[1])
    tt.rechecked(at(300))
    assert at(300 + 540) <= tt.recheck_at <= at(300 + 660)
    assert tt.settle == ()


def test_jitter_stays_within_ten_percent() -> None:
    spread = [jittered(600).total_seconds() for _ in range(200)]
    assert min(spread) >= 540
    assert max(spread) <= 660
    assert len(set(spread)) > 1
