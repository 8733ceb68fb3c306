"""Faults: the operator must converge wherever it is interrupted, and never over-grant meanwhile.

Short by default (run by `make test`); `make chaos` runs the full form
(APPID_CHAOS_IDENTITIES=50 APPID_CHAOS_KILLS=20 APPID_CHAOS_REPEATS=10). Every wait is bounded.
Each test prints its figures.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from appidentity.kube import ApiError, Kube
from appidentity.model import IDENTITY_LABEL, identity_key
from kubernetes import client
from support import (
    CLUSTER_SH,
    READ_CONFIGMAPS,
    TEST_STATE_DIR,
    Cluster,
    Operator,
    Token,
    create,
    events_for,
    identity,
    merge_patch,
    requester_stamp,
    secret_token,
    wait_ready,
    wait_until,
    whoami_status,
)

pytestmark = pytest.mark.usefixtures("operator")
IDENTITIES = int(os.environ.get("APPID_CHAOS_IDENTITIES", "10"))
KILLS = int(os.environ.get("APPID_CHAOS_KILLS", "5"))
REPEATS = int(os.environ.get("APPID_CHAOS_REPEATS", "3"))
MANAGED = "app.kubernetes.io/managed-by=appidentity-operator"


@pytest.fixture
def local_operator(operator: Operator, cluster: Cluster) -> Operator:
    if cluster.external or not isinstance(operator, Operator):
        pytest.skip("fault injection needs the local control plane and operator process")
    return operator


def report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n[chaos] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def spec_of(i: int) -> dict[str, Any]:
    """Half the identities also hold `view`, so bindings to ClusterRoles are exercised."""
    spec: dict[str, Any] = {"rules": [READ_CONFIGMAPS]}
    if i % 2:
        spec["clusterRoles"] = ["view"]
    return spec


class OverGrantWatch(threading.Thread):
    """Polls every RBAC object that can give the identities' ServiceAccounts rights, during the
    run: every binding naming one must be one the spec asks for, pointing at a Role that holds
    exactly the spec's rules (or at a ClusterRole the spec names)."""

    def __init__(self, kube: Kube, namespace: str, specs: dict[str, dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.kube, self.namespace, self.specs = kube, namespace, specs
        self.stop = threading.Event()
        self.over_grants: list[str] = []
        self.samples = 0

    def run(self) -> None:
        while not self.stop.wait(0.3):
            try:
                self._sample()
            except ApiError:
                continue  # e.g. the API server is being restarted
            self.samples += 1

    def _sample(self) -> None:
        roles = {r["metadata"]["name"]: r for r in self.kube.list_objects("Role", self.namespace)}
        for rb in self.kube.list_objects("RoleBinding", self.namespace):
            for subject in rb.get("subjects") or []:
                spec = self.specs.get(subject.get("name", ""))
                if subject.get("kind") != "ServiceAccount" or spec is None:
                    continue
                ref = rb["roleRef"]
                if ref["kind"] == "ClusterRole" and ref["name"] in spec.get("clusterRoles", []):
                    continue
                if ref["kind"] != "Role":
                    self.over_grants.append(
                        f"{rb['metadata']['name']} -> {ref['kind']} {ref['name']}"
                    )
                    continue
                # Listed after the Roles: a Role made since may be missing from that list.
                role = roles.get(ref["name"]) or self.kube.get("Role", self.namespace, ref["name"])
                if role is None:
                    continue  # a binding to a missing Role grants nothing
                if role.get("rules") != spec["rules"]:
                    self.over_grants.append(
                        f"{rb['metadata']['name']} -> {ref['kind']} {ref['name']}"
                    )


def orphans_and_duplicates(kube: Kube, namespace: str) -> tuple[list[str], list[str]]:
    live = {
        identity_key(namespace, o["metadata"]["name"])
        for o in kube.list_objects("AppIdentity", namespace)
    }
    orphans, per_identity = [], Counter[tuple[str, str]]()
    for kind, ns in (
        ("ServiceAccount", namespace),
        ("Secret", namespace),
        ("Role", None),
        ("RoleBinding", None),
        ("ClusterRole", None),
        ("ClusterRoleBinding", None),
    ):
        for obj in kube.list_objects(kind, ns, MANAGED):
            owner = obj["metadata"]["labels"].get(IDENTITY_LABEL, "")
            if not owner.startswith(f"{namespace}."):
                continue
            if owner not in live:
                orphans.append(f"{kind} {obj['metadata']['name']}")
            per_identity[(owner, kind)] += 1
    expected = {"ServiceAccount": 1, "Secret": 1, "Role": 2}  # its Role and the token's sentinel
    duplicates = [f"{o} {k} x{n}" for (o, k), n in per_identity.items() if n > expected.get(k, 2)]
    return orphans, duplicates


def test_operator_converges_after_repeated_sigkills_without_over_granting(
    kube: Kube, namespace: str, local_operator: Operator, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"app-{i}" for i in range(IDENTITIES)]
    specs = {n: spec_of(i) for i, n in enumerate(names)}
    watch = OverGrantWatch(kube, namespace, specs)
    watch.start()
    rng = random.Random(20261123)
    try:
        for name, spec in specs.items():
            create(kube, identity(name, namespace, **spec))
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 2.0))
            local_operator.stop(signal.SIGKILL)
            local_operator.start()
        last_kill = time.monotonic()
        for name in names:
            wait_ready(kube, namespace, name, timeout=180)
        converge = time.monotonic() - last_kill
    finally:
        watch.stop.set()
        watch.join()
    orphans, duplicates = orphans_and_duplicates(kube, namespace)
    report(
        capsys,
        "sigkill",
        {
            "identities": IDENTITIES,
            "kills_survived": KILLS,
            "orphans": len(orphans),
            "duplicates": len(duplicates),
            "over_grants_observed": len(watch.over_grants),
            "rbac_samples": watch.samples,
            "converge_after_last_kill_s": f"{converge:.1f}",
        },
    )
    assert watch.samples > 0
    assert watch.over_grants == []
    assert orphans == [] and duplicates == []


def test_operator_recovers_its_watches_after_an_api_server_restart(
    kube: Kube,
    cluster: Cluster,
    namespace: str,
    local_operator: Operator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not (TEST_STATE_DIR / "etcd.url").exists():
        pytest.skip("the test cluster predates restart support; restart it")
    create(kube, identity("before", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "before")
    pid = local_operator.proc.pid if local_operator.proc else None
    subprocess.run(
        [str(CLUSTER_SH), "restart-apiserver", str(TEST_STATE_DIR)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    restarted = time.monotonic()
    # The requester policy (a MutatingAdmissionPolicy) refuses AppIdentity writes with 503 until
    # the new API server has published the CRD's schema to its own admission (a few seconds).
    wait_until(lambda: requester_stamp(cluster), 60, "AppIdentity writes after the restart")
    create(kube, identity("after", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "after", timeout=120)
    recovery = time.monotonic() - restarted
    kube.delete("Role", namespace, "before")
    wait_until(lambda: kube.get("Role", namespace, "before"), 60, "drift repair after restart")
    assert local_operator.proc is not None and local_operator.proc.pid == pid
    assert local_operator.proc.poll() is None
    report(capsys, "apiserver restart", {"recovery_to_new_identity_ready_s": f"{recovery:.1f}"})


def test_identities_deleted_while_the_operator_is_down_leave_nothing_behind(
    kube: Kube, namespace: str, make_namespace: Callable[[], str], local_operator: Operator
) -> None:
    other = make_namespace()
    merge_patch(
        kube,
        "Namespace",
        None,
        other,
        {"metadata": {"annotations": {"appidentity.dev/accept-grants-from": namespace}}},
    )
    names = [f"gone-{i}" for i in range(5)]
    for name in names:
        create(
            kube,
            identity(
                name,
                namespace,
                rules=[READ_CONFIGMAPS],
                namespaces=[{"name": other, "rules": [READ_CONFIGMAPS]}],
            ),
        )
    for name in names:
        wait_ready(kube, namespace, name)
    local_operator.stop()
    try:
        for name in names:
            kube.delete("AppIdentity", namespace, name)
        # The finalizer holds them until the operator has cleaned up.
        assert all(kube.get("AppIdentity", namespace, n) for n in names)
    finally:
        local_operator.start()
    wait_until(lambda: not kube.list_objects("AppIdentity", namespace), 60, "the deletions")
    for kind, ns in (
        ("Role", other),
        ("RoleBinding", other),
        ("Role", namespace),
        ("RoleBinding", namespace),
        ("ServiceAccount", namespace),
    ):
        assert kube.list_objects(kind, ns, MANAGED) == [], f"{kind} left in {ns}"


def test_another_field_manager_edit_is_reverted_and_a_foreign_object_never_overwritten(
    kube: Kube, cluster: Cluster, namespace: str, tmp_path: Any
) -> None:
    create(kube, identity("edited", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "edited")
    widened = tmp_path / "role.yaml"
    widened.write_text(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n"
        f"metadata: {{name: edited, namespace: {namespace}}}\n"
        "rules:\n- {apiGroups: [''], resources: [secrets], verbs: [list]}\n"
    )
    cluster.run_kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=intruder",
        "-f",
        str(widened),
    )

    def reverted() -> bool:
        role = kube.get("Role", namespace, "edited") or {}
        return role.get("rules") == [READ_CONFIGMAPS]

    wait_until(reverted, 20, "the Role's rules to be reverted")
    wait_until(
        lambda: any(
            e["reason"] == "DriftRepaired" and "Role" in e["message"]
            for e in events_for(kube, namespace, "edited")
        ),
        20,
        "a DriftRepaired Event",
    )

    foreign_rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    create(
        kube,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "squatter", "namespace": namespace},
            "rules": foreign_rules,
        },
    )
    create(kube, identity("squatter", namespace, rules=[READ_CONFIGMAPS]))
    wait_until(
        lambda: any(e["reason"] == "Conflict" for e in events_for(kube, namespace, "squatter")),
        30,
        "a Conflict Event",
    )
    role = kube.get("Role", namespace, "squatter") or {}
    assert role["rules"] == foreign_rules
    assert "labels" not in role["metadata"]


def _recreated(obj: dict[str, Any] | None, old_uid: str) -> bool:
    return obj is not None and obj["metadata"]["uid"] != old_uid


def _repair_seconds(damage: Callable[[], object], repaired: Callable[[], bool]) -> float:
    start = time.monotonic()
    damage()
    wait_until(repaired, 30, "drift repair", every=0.05)
    return time.monotonic() - start


def test_drift_repair_latency(
    kube: Kube, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    create(kube, identity("drifty", namespace, rules=[READ_CONFIGMAPS], clusterRoles=["view"]))
    wait_ready(kube, namespace, "drifty")
    latencies: dict[str, list[float]] = {}
    edits: dict[str, tuple[str, Any, Callable[[dict[str, Any]], bool]]] = {
        "Role": (
            "drifty",
            {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
            lambda o: o.get("rules") == [READ_CONFIGMAPS],
        ),
        "RoleBinding": (
            "drifty:view",
            {"subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": namespace}]},
            lambda o: [s["name"] for s in o.get("subjects", [])] == ["drifty"],
        ),
        "ServiceAccount": (
            "drifty",
            {"automountServiceAccountToken": True},
            lambda o: o.get("automountServiceAccountToken") is False,
        ),
    }
    for kind, (name, patch, good) in edits.items():
        for _ in range(REPEATS):
            uid = (kube.get(kind, namespace, name) or {})["metadata"]["uid"]
            latencies.setdefault(f"delete {kind}", []).append(
                _repair_seconds(
                    lambda k=kind, n=name: kube.delete(k, namespace, n),
                    lambda k=kind, n=name, u=uid: _recreated(kube.get(k, namespace, n), u),
                )
            )
            latencies.setdefault(f"edit {kind}", []).append(
                _repair_seconds(
                    lambda k=kind, n=name, p=patch: merge_patch(kube, k, namespace, n, p),
                    lambda k=kind, n=name, g=good: g(kube.get(k, namespace, n) or {}),
                )
            )
    every = [v for vs in latencies.values() for v in vs]
    report(
        capsys,
        "drift repair",
        {
            "repairs": len(every),
            "p50_s": f"{statistics.median(every):.2f}",
            "p95_s": f"{percentile(every, 95):.2f}",
            "max_s": f"{max(every):.2f}",
        },
    )
    wait_ready(kube, namespace, "drifty")


def test_token_past_its_refresh_time_is_replaced_while_the_old_one_still_works(
    kube: Kube, namespace: str, token_api: Callable[[Token], client.ApiClient]
) -> None:
    create(kube, identity("refresh", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "refresh")

    old = secret_token(kube, namespace, "refresh-token")
    assert old is not None
    merge_patch(
        kube,
        "Secret",
        namespace,
        "refresh-token",
        {"metadata": {"annotations": {"appidentity.dev/token-refresh-at": "2000-01-01T00:00:00Z"}}},
    )
    # Secrets are not watched and the operator keeps the refresh time it minted the token with,
    # so the edit is read at the next full reconcile: one is started by drift it does see.
    kube.delete("RoleBinding", namespace, "refresh")
    new = wait_until(
        lambda: (t := secret_token(kube, namespace, "refresh-token")) != old and t,
        30,
        "a refreshed token",
    )
    assert whoami_status(token_api, new) == 200
    # Rotation overlaps: whatever still uses the old token keeps working until it expires.
    assert whoami_status(token_api, old) == 200
    wait_ready(kube, namespace, "refresh")
