"""deploy/argocd/health.lua in a real Lua 5.1 (Argo CD runs health checks in one), against
AppIdentities recorded from the integration suite (tests/fixtures/argocd, written by
tests/integration/test_gitops.py with APPID_RECORD_ARGOCD_FIXTURES=1), in the shape of Argo
CD's own health_test.yaml."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from gitops import ARGOCD_CM, FIXTURES, HEALTH_KEY, HEALTH_LUA, HEALTH_TESTS, argocd_health

CASES = yaml.safe_load(HEALTH_TESTS.read_text())["tests"]


def test_the_argocd_cm_snippet_holds_health_lua_verbatim() -> None:
    snippet = yaml.safe_load(ARGOCD_CM.read_text())
    assert (snippet["kind"], snippet["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert snippet["data"] == {HEALTH_KEY: HEALTH_LUA.read_text()}


@pytest.mark.parametrize("case", CASES, ids=[c["inputPath"] for c in CASES])
def test_recorded_identity_gets_its_recorded_health(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((FIXTURES / case["inputPath"]).read_text())
    status, message = argocd_health(obj)
    assert {"status": status, "message": message} == case["healthStatus"]


def test_the_fixtures_cover_every_health_the_script_gives() -> None:
    assert {c["healthStatus"]["status"] for c in CASES} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }


def test_every_fixture_is_listed() -> None:
    listed = {c["inputPath"] for c in CASES}
    assert {p.name for p in FIXTURES.glob("*.yaml")} - {HEALTH_TESTS.name} == listed


def test_an_identity_the_operator_has_not_seen_yet_is_progressing() -> None:
    obj = {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"generation": 1},
    }
    assert argocd_health(obj) == ("Progressing", "Waiting for the operator to report")


def test_stalled_wins_over_a_ready_of_the_same_generation() -> None:
    """Guards the order of the checks: a Ready=True left from before must not hide a stall."""
    status = {
        "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "AccessVerified"},
            {"type": "Stalled", "status": "True", "reason": "Conflict", "message": "taken"},
        ],
    }
    obj = {"metadata": {"generation": 3}, "status": status}
    assert argocd_health(obj) == ("Degraded", "Conflict: taken")
