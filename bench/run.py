"""Benchmark: time to a verified identity, API cost, memory, against the manual way.

    .venv/bin/python bench/run.py --n 1,100,1000

For each N: the two baselines (kubectl one by one; a plain concurrent client), then the operator
as a separate process: N AppIdentities created at once, time from each create to Ready=True,
API requests counted by kube-apiserver itself, a steady-state window, and a restart. Prints a
table with the targets beside the figures and writes everything to bench/results/<stamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's operator code first)
from apiclient import (
    Api,
    ApiError,
    ConditionWatcher,
    Credentials,
    OwnCounts,
    ReadyWatcher,
    ServerCounters,
    Window,
    category,
    describe,
    has_condition,
    is_ready,
    parse_metrics,
)
from appidentity.scheduler import WORKERS
from baselines import (
    direct_flow,
    identity_body,
    manual_flow,
    tokenless_kubeconfig,
)
from operator_sa import TOKEN_FILE, as_installed
from procs import (
    REPO,
    Operator,
    cluster_down,
    cluster_running,
    cluster_up,
    control_plane_pids,
    cpu_seconds,
    kubectl,
    loadavg,
    operator_options,
)
from refused import RefusedRequests
from unitcost import model, unit_costs

RESULTS = REPO / "bench" / "results"
OPERATOR_NS = "appidentity-system"
RUN_LABEL = "bench.appidentity.dev/run"
AI_PATH = "/apis/appidentity.dev/v1alpha1"
ADMISSION_FILES = ("admission-policy.yaml", "finalizer-policy.yaml", "requester-policy.yaml")
FINALIZER = "appidentity.dev/finalizer"
REQUESTER = "appidentity.dev/requester"
MIB = 1024 * 1024
RBAC_PATH = "/apis/rbac.authorization.k8s.io/v1"
EXCESS_BINDING = "bench-excess"
ACCESS_VERIFIED = "AccessVerified"
# The schedule a real installation runs: each identity's verification.intervalSeconds (600 by
# default) for the cheap re-check, the operator's --full-proof-seconds default for the full one.
DEFAULT_RECHECK_S = 600.0
DEFAULT_FULL_PROOF_S = 86400.0
ROTATION_MINUTES = 48.0  # a 3600 s token is renewed at 80 % of its life

TARGETS = {
    "p99_ready_n100_s": 2.0,
    "p99_vs_direct_n100_x": 1.5,
    "all_verified_n10000_s": 240.0,
    "peak_rss_n10000_mib": 300.0,
    "all_requests_per_identity": 15.0,
    "steady_requests_per_identity_per_minute": 0.1,
    "excess_p95_n1000_s": 5.0,
    "all_ready_n1000_s": 60.0,
    "vs_manual_x": 15.0,
    "vs_direct_fraction": 0.9,
    "requests_per_identity": 12.0,
    "peak_rss_n1000_mib": 150.0,
    "restart_writes": 0.0,
}


def operator_version() -> dict[str, Any]:
    """The commit the operator code came from, and whether its files differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "operator_files_modified": bool(git("status", "--porcelain", "--", "operator")),
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): the smallest value with p% at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.25) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - started


class Meter:
    """CPU seconds of the control plane's processes (when this run can see them), of this
    benchmark process and its children (kubectl), and the machine's load, over one phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cp = cpu_seconds(pids)
        self.me = self._self()
        self.wall = time.monotonic()

    @staticmethod
    def _self() -> tuple[float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime

    def done(self) -> dict[str, Any]:
        now = cpu_seconds(self.pids)
        me = self._self()
        return {
            "wall_seconds": round(time.monotonic() - self.wall, 2),
            "control_plane_cpu_seconds": {
                k: round(v - self.cp.get(k, v), 2) for k, v in now.items()
            },
            "bench_cpu_seconds": round(me[0] - self.me[0], 2),
            "reaped_children_cpu_seconds": round(me[1] - self.me[1], 2),
            "loadavg_at_end": loadavg(),
        }


# --- cluster helpers ---------------------------------------------------------------------------


def create_namespaces(api: Api, names: Iterable[str], labels: dict[str, str]) -> None:
    for name in names:
        try:
            api.json(
                "POST",
                "/api/v1/namespaces",
                body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
            )  # fmt: skip
        except ApiError as exc:
            if exc.status != 409:
                raise


def delete_namespaces(api: Api, names: Sequence[str], timeout: float) -> float:
    for name in names:
        with contextlib.suppress(ApiError):
            api.request("DELETE", f"/api/v1/namespaces/{name}", ok=(200, 202, 404))

    def gone() -> bool:
        for name in names:
            resp = api.request("GET", f"/api/v1/namespaces/{name}", ok=(200, 404))
            if resp.status_code != 404:
                return False
        return True

    try:
        return wait_until(gone, timeout, "namespaces to be deleted", every=1.0)
    except TimeoutError as exc:
        log(f"warning: {exc}; continuing")
        return timeout


def strip_finalizers(api: Api, selector: str, workers: int) -> int:
    """With the operator stopped, lets the namespace controller remove what is left. Lists in
    pages of 500, so 10,000 identities with their status are not one response."""
    items: list[dict[str, Any]] = []
    params = {"labelSelector": selector, "limit": "500"}
    while True:
        page = api.json("GET", f"{AI_PATH}/appidentities", params=params)
        items += [i for i in page["items"] if i["metadata"].get("finalizers")]
        token = page["metadata"].get("continue")
        if not token:
            break
        params = {**params, "continue": token}

    def strip(item: dict[str, Any]) -> None:
        meta = item["metadata"]
        if meta.get("finalizers"):
            api.request(
                "PATCH",
                f"{AI_PATH}/namespaces/{meta['namespace']}/appidentities/{meta['name']}",
                body={"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json",
                ok=(200, 404),
            )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(strip, items))
    return len(items)


def cleanup(
    api: Api, selector: str, namespaces: Sequence[str], timeout: float, workers: int
) -> float:
    """With the operator stopped: strip the AppIdentities' finalizers, delete the namespaces,
    wait until they are gone. Finalizers are stripped again every 15 s while some namespace is
    still there (an identity whose strip failed would hold its namespace for ever). Returns
    the seconds it took (or `timeout`, with a warning)."""
    started = time.monotonic()
    last_strip = started
    try:
        strip_finalizers(api, selector, workers)
    except ApiError as exc:
        log(f"  warning: could not strip finalizers: {exc}")
    for name in namespaces:
        with contextlib.suppress(ApiError):
            api.request("DELETE", f"/api/v1/namespaces/{name}", ok=(200, 202, 404))
    left = list(namespaces)
    while True:
        left = [
            ns
            for ns in left
            if api.request("GET", f"/api/v1/namespaces/{ns}", ok=(200, 404)).status_code != 404
        ]
        if not left:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            log(f"  warning: namespaces {left} not deleted within {timeout:.0f}s; continuing")
            return timeout
        if time.monotonic() - last_strip > 15:
            last_strip = time.monotonic()
            with contextlib.suppress(ApiError):
                strip_finalizers(api, selector, workers)
        time.sleep(1.0)


def install_api(kubeconfig: str, api: Api) -> None:
    """What `kubectl apply -k deploy/` puts in front of the operator: the CRD and both admission
    policies (spec validation, and the finalizer added at creation), so that the API server's
    cost per AppIdentity is that of a real installation."""
    files = [
        str(f)
        for f in sorted((REPO / "crds").glob("*.yaml"))
        if "kind: CustomResourceDefinition" in f.read_text()
    ]
    files += [str(REPO / "deploy" / f) for f in ADMISSION_FILES]
    args = [a for f in files for a in ("-f", f)]
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", *args)
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/appidentities.appidentity.dev",
    )
    create_namespaces(api, [OPERATOR_NS], {})
    probe = identity_body(OPERATOR_NS, "admission-probe", {})
    path = f"{AI_PATH}/namespaces/{OPERATOR_NS}/appidentities?dryRun=All"
    deadline = time.monotonic() + 60

    def in_effect() -> bool:
        try:
            meta = api.json("POST", path, body=probe)["metadata"]
        except ApiError as exc:
            # 503 "Resource kind ... not found" for a moment after the CRD is Established
            if exc.status in (404, 503):
                return False
            raise
        return FINALIZER in meta.get("finalizers", []) and REQUESTER in meta.get("annotations", {})

    while not in_effect():
        if time.monotonic() > deadline:
            raise RuntimeError("the finalizer and requester policies did not take effect in 60s")
        time.sleep(0.5)


# --- operator metrics --------------------------------------------------------------------------


@dataclass
class OperatorMetrics:
    reconciles: dict[str, float]
    errors: float
    duration_sum: float
    duration_count: float
    buckets: list[tuple[float, float]]
    verified: int
    unverified: int
    # appidentity_checks_total by kind ("rules": cheap re-checks, "full": full proofs); empty
    # for an operator that does not count them
    checks: dict[str, float] = field(default_factory=dict)

    @classmethod
    def read(cls, op: Operator) -> OperatorMetrics:
        parsed = parse_metrics(
            op.metrics(),
            (
                "appidentity_reconciles_total",
                "appidentity_errors_total",
                "appidentity_reconcile_duration_seconds_sum",
                "appidentity_reconcile_duration_seconds_count",
                "appidentity_reconcile_duration_seconds_bucket",
                "appidentity_verified",
                "appidentity_checks_total",
            ),
        )
        reconciles = {lbl.get("result", ""): v for lbl, v in parsed["appidentity_reconciles_total"]}
        buckets = sorted(
            (float(lbl["le"]), v) for lbl, v in parsed["appidentity_reconcile_duration_seconds_bucket"]
        )  # fmt: skip
        verified = [v for _, v in parsed["appidentity_verified"]]
        return cls(
            reconciles=reconciles,
            errors=sum(v for _, v in parsed["appidentity_errors_total"]),
            duration_sum=sum(v for _, v in parsed["appidentity_reconcile_duration_seconds_sum"]),
            duration_count=sum(
                v for _, v in parsed["appidentity_reconcile_duration_seconds_count"]
            ),
            buckets=buckets,
            verified=sum(1 for v in verified if v == 1),
            unverified=sum(1 for v in verified if v != 1),
            checks={lbl.get("kind", ""): v for lbl, v in parsed["appidentity_checks_total"]},
        )

    @property
    def reconcile_total(self) -> float:
        return sum(self.reconciles.values())

    def delta(self, before: OperatorMetrics | None) -> dict[str, Any]:
        b_sum = before.duration_sum if before else 0.0
        b_count = before.duration_count if before else 0.0
        b_buckets = dict(before.buckets) if before else {}
        count = self.duration_count - b_count
        spent = self.duration_sum - b_sum
        hist = {
            ("+Inf" if math.isinf(le) else f"{le:g}"): v - b_buckets.get(le, 0.0)
            for le, v in self.buckets
        }
        return {
            "reconciles": {
                k: v - (before.reconciles.get(k, 0.0) if before else 0.0)
                for k, v in self.reconciles.items()
            },
            "errors": self.errors - (before.errors if before else 0.0),
            "checks": {
                k: v - (before.checks.get(k, 0.0) if before else 0.0)
                for k, v in self.checks.items()
            },
            "reconcile_seconds_total": round(spent, 3),
            "reconcile_seconds_mean": round(spent / count, 4) if count else None,
            "reconcile_duration_cumulative_buckets": hist,
        }


def poll_seconds(n: int) -> float:
    """How often the operator's /metrics is read while waiting: it has a few series per
    identity, and rendering 30,000 of them four times a second would cost the operator a
    noticeable share of a core at N=10,000."""
    return max(0.25, n / 5000)


def wait_quiet(op: Operator, quiet: float, limit: float, every: float = 0.25) -> float:
    """Until the operator's reconcile counter stood still for `quiet` seconds (or `limit`)."""
    started = time.monotonic()
    last = OperatorMetrics.read(op).reconcile_total
    still_since = time.monotonic()
    while time.monotonic() - started < limit:
        time.sleep(every)
        now = OperatorMetrics.read(op).reconcile_total
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return time.monotonic() - started


# --- operator log ------------------------------------------------------------------------------

_NAMES = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+(?:/[a-z0-9-]+)?|\d+(?:\.\d+)?")


def log_summary(path: Path, start: int, end: int | None, n: int) -> dict[str, Any]:
    """Lines the operator logged in a byte range of its log, by logger and message shape."""
    with path.open("rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(max(0, end - start))
    shapes: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    lines = 0
    for raw in data.splitlines():
        lines += 1
        try:
            entry = json.loads(raw)
        except ValueError:
            shapes["(not json) " + _NAMES.sub("*", raw.decode(errors="replace"))[:80]] += 1
            continue
        levels[entry.get("level", "")] += 1
        shape = _NAMES.sub("*", str(entry.get("message", "")))[:100]
        shapes[f"{entry.get('logger', '')}: {shape}"] += 1
    return {
        "lines": lines,
        "lines_per_identity": round(lines / n, 2) if n else None,
        "levels": dict(levels),
        "top": shapes.most_common(8),
    }


# --- one N ---------------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    kubeconfig: str
    creds: Credentials
    api: Api
    tokens: Api
    run_id: str
    work: Path
    python: str
    cp_pids: dict[str, int] = field(default_factory=dict)
    operator_options: set[str] = field(default_factory=set)
    audit_log: Path | None = None  # a cluster.sh control plane's (bench/refused.py)
    # The operator's credentials (--operator-credentials), which the plain client (b) shares.
    operator_kubeconfig: str = ""
    operator_api: Api | None = None

    def limit(self, n: int) -> float:
        """The bound of a wait at N: --timeout up to N=1000, proportionally more above."""
        return float(self.args.timeout) * max(1.0, n / 1000)

    def schedule(self, n: int) -> dict[str, Any]:
        """The sped-up check schedule the operator runs with at N (see bench/README.md)."""
        scale = max(1.0, n / 1000)
        out: dict[str, Any] = {"scaled_by": scale}
        for opt, default in (("recheck_seconds", 30.0), ("full_proof_seconds", 300.0)):
            given = getattr(self.args, opt)
            value = default * scale if given is None else float(given)
            flag = "--" + opt.replace("_", "-")
            passed = value > 0 and flag in self.operator_options
            out[opt] = value if passed else None
            if value > 0 and not passed:
                out.setdefault("not_supported", []).append(flag)
        return out

    def operator(self, log_name: str, profile_name: str, n: int) -> Operator:
        args = self.args
        schedule = self.schedule(n)
        flags = [
            a
            for opt in ("recheck_seconds", "full_proof_seconds")
            if schedule[opt] is not None
            for a in ("--" + opt.replace("_", "-"), f"{schedule[opt]:g}")
        ]
        env: dict[str, str] | None = dict(kv.split("=", 1) for kv in args.operator_env) or None
        if args.profile:
            profiler = str(REPO / "bench" / "profiler")
            path = os.pathsep.join(p for p in (profiler, os.environ.get("PYTHONPATH", "")) if p)
            env = {
                **(env or {}),
                "PYTHONPATH": path,
                "APPID_BENCH_PROFILE": str(self.work / profile_name),
            }
            if args.profile_memory:
                env["APPID_BENCH_TRACEMALLOC"] = "12"  # frames per allocation, for by_owner
            if args.profile_functions:
                env["APPID_BENCH_CPROFILE"] = "1"
        return Operator(
            self.python,
            self.operator_kubeconfig or self.kubeconfig,
            self.work / log_name,
            args.workers,
            flags,
            args.operator_arg,
            env,
        )


def add_refused(api: dict[str, Any], refused: Mapping[str, int], n: int) -> None:
    """The 403s, which the API server's counters leave out, into a window's figures."""
    total = sum(refused.values())
    api["refused"] = dict(refused)
    api["per_identity"]["refused"] = round(total / n, 2)
    api["all_per_identity"] = round(api["all_per_identity"] + total / n, 2)


def window_dict(w: Window, n: int) -> dict[str, Any]:
    totals = w.totals()
    per = {k: round(v / n, 2) for k, v in totals.items()}
    return {
        "seconds": round(w.seconds, 2),
        "totals": totals,
        "per_identity": per,
        "reads_plus_writes_per_identity": round(
            (totals.get("read", 0) + totals.get("write", 0)) / n, 2
        ),
        "all_per_identity": round(
            sum(v for k, v in totals.items() if k in ("read", "write", "review")) / n, 2
        ),
        "categories": {describe(k): category(k) for k in w.requests},
        "storage_writes": w.storage_write_total(),
        "storage_writes_per_identity": round(w.storage_write_total() / n, 2),
        "by_request": [(k, round(v / n, 3)) for k, v in w.by_resource() if abs(v) >= 0.5],
        "by_request_total": [(k, v) for k, v in w.by_resource() if abs(v) >= 0.5],
        "storage_by_resource": sorted(
            ((f"{op} {res}", v) for (op, res), v in w.storage_writes.items()), key=lambda r: -r[1]
        ),
        "own_requests_subtracted": sum(w.own.values()),
        "server_seconds_total": round(sum(v for _, v, _ in w.by_server_time()), 2),
        "server_seconds_by_request": [
            (k, round(v, 2), c) for k, v, c in w.by_server_time()[:20] if v >= 0.01
        ],
    }


def excess_picks(targets: Sequence[tuple[str, str]], k: int, spread: int) -> list[tuple[str, str]]:
    """k of the targets (target i lives in namespace i % spread), spread over the namespaces
    and over the order of creation."""
    n = len(targets)
    picks: list[int] = []
    for j in range(min(k, n)):
        i = ((j * n) // k // spread) * spread + j % spread
        while i >= n or i in picks:
            i = (i + 1) % n
        picks.append(i)
    return [targets[i] for i in picks]


def _excess(obj: Mapping[str, Any]) -> bool:
    return has_condition(obj, ACCESS_VERIFIED, reason="ExcessPrivilege")


def _verified(obj: Mapping[str, Any]) -> bool:
    return is_ready(obj) and has_condition(obj, ACCESS_VERIFIED, status="True")


def run_excess(
    ctx: Ctx, n: int, targets: Sequence[tuple[str, str]], selector: str, tag: str
) -> dict[str, Any]:
    """As the admin, bind ClusterRole `edit` to K identities' ServiceAccounts (one RoleBinding
    each, not the operator's), one every --excess-gap seconds; time from each create call's
    return to the first watch event showing AccessVerified reason ExcessPrivilege. Then delete
    the bindings and wait until those identities are Ready and verified again."""
    args = ctx.args
    picks = excess_picks(targets, args.excess_samples, min(args.namespaces, n))
    limit = max(60.0, args.excess_timeout)
    log(f"N={n}: excess privilege: ClusterRole edit bound to {len(picks)} identities")
    watcher = ConditionWatcher(ctx.api, selector)
    watcher.start()
    created: dict[tuple[str, str], float] = {}
    deleted: dict[tuple[str, str], float] = {}
    out: dict[str, Any] = {"samples": len(picks), "gap_seconds": args.excess_gap}
    try:
        if not watcher.listening.wait(30) or watcher.error:
            raise RuntimeError(f"the AppIdentity watch did not start: {watcher.error}")
        for ns, name in picks:
            watcher.arm((ns, name), _excess)
            ctx.api.json(
                "POST",
                f"{RBAC_PATH}/namespaces/{ns}/rolebindings",
                body={
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": f"{EXCESS_BINDING}-{name}", "labels": {RUN_LABEL: tag}},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
                },
            )  # fmt: skip
            created[(ns, name)] = time.monotonic()
            time.sleep(args.excess_gap)
        all_seen = watcher.wait_hits(set(picks), limit)
        seen = {k: max(0.0, watcher.hits[k] - created[k]) for k in picks if k in watcher.hits}
        for ns, name in picks:
            watcher.arm((ns, name), _verified)
            with contextlib.suppress(ApiError):
                ctx.api.request(
                    "DELETE",
                    f"{RBAC_PATH}/namespaces/{ns}/rolebindings/{EXCESS_BINDING}-{name}",
                    ok=(200, 202, 404),
                )
            deleted[(ns, name)] = time.monotonic()
        recovered = watcher.wait_hits(set(picks), limit)
        back = {k: max(0.0, watcher.hits[k] - deleted[k]) for k in picks if k in watcher.hits}
    finally:
        watcher.stop()
    latencies = list(seen.values())
    out.update(
        {
            "noticed": len(seen),
            "all_noticed": all_seen,
            "latency_seconds": {
                "p50": _round(percentile(latencies, 50)),
                "p95": _round(percentile(latencies, 95)),
                "max": _round(max(latencies)) if latencies else None,
            },
            "not_noticed": [f"{a}/{b}" for a, b in picks if (a, b) not in seen][:10],
            "recovered": len(back),
            "all_recovered": recovered,
            "recovery_seconds_max": _round(max(back.values())) if back else None,
            "definition": "from the RoleBinding create call's return to the first watch event "
            "of that AppIdentity with condition AccessVerified, reason ExcessPrivilege; "
            "recovery: from the binding's DELETE to Ready and AccessVerified True again",
        }
    )
    lat = out["latency_seconds"]
    log(
        f"  noticed {len(seen)}/{len(picks)}: p50 {_fmt(lat['p50'])}s p95 {_fmt(lat['p95'])}s "
        f"max {_fmt(lat['max'])}s; {len(back)}/{len(picks)} verified again"
    )
    return out


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


# What a check sends with the identity's own token: the self-reviews and the real reads of what
# the spec grants (ConfigMaps here). Nothing else in a window is attributed to checks.
TOKEN_KINDS = frozenset(
    {
        "POST authorization.k8s.io/selfsubjectaccessreviews",
        "POST authorization.k8s.io/selfsubjectrulesreviews",
        "POST authentication.k8s.io/selfsubjectreviews",
        "LIST core/configmaps",
        "GET core/configmaps",
    }
)


def check_costs(prov: dict[str, Any], steady: dict[str, Any], n: int) -> dict[str, Any]:
    """Requests per cheap re-check and per full proof, from two windows with different mixes:
    provisioning (one full proof per identity, and the settle re-checks after it) and steady
    (scheduled re-checks, and full proofs only where one fell due). For each kind k the identity's
    token sends (TOKEN_KINDS), with F and C the operator's own counts of full proofs and
    re-checks in a window: K_prov = f_k*F_p + c_k*C_p and K_steady = f_k*F_s + c_k*C_s, solved
    for f_k and c_k. With no full proof in the steady window this is c_k = K_steady / C_s, and
    f_k = (K_prov - c_k*C_p) / F_p. The steady window's other requests (the operator's own reads
    and writes, the control plane's) are not split per check: the projection adds them at the
    measured, sped-up rate, an upper bound."""
    cp_, cs_ = prov["operator"].get("checks") or {}, steady["operator"].get("checks") or {}
    if not cp_ and not cs_:
        return {"available": False, "why": "the operator exports no appidentity_checks_total"}
    fp, cp = cp_.get("full", 0.0), cp_.get("rules", 0.0)
    fs, cs = cs_.get("full", 0.0), cs_.get("rules", 0.0)
    counts = {"provisioning": {"full": fp, "rules": cp}, "steady": {"full": fs, "rules": cs}}
    det = fp * cs - cp * fs
    if det == 0:
        return {
            "available": False,
            "why": "the two windows' mixes of full proofs and re-checks do not separate them",
            "counts": counts,
        }
    kp = dict(prov["api"]["by_request_total"])
    ks = dict(steady["api"]["by_request_total"])
    cats = {**prov["api"]["categories"], **steady["api"]["categories"]}
    per_full: dict[str, float] = {}
    per_rules: dict[str, float] = {}
    by_cat = {"full": Counter[str](), "rules": Counter[str]()}
    for kind in sorted(TOKEN_KINDS):
        a, b = kp.get(kind, 0.0), ks.get(kind, 0.0)
        f = (a * cs - cp * b) / det
        c = (fp * b - a * fs) / det
        cat = cats.get(kind, "review" if kind.startswith("POST ") else "read")
        if abs(f) >= 0.005:
            per_full[kind] = round(f, 3)
            by_cat["full"][cat] += f
        if abs(c) >= 0.005:
            per_rules[kind] = round(c, 3)
            by_cat["rules"][cat] += c
    full_total = sum(by_cat["full"].values())
    rules_total = sum(by_cat["rules"].values())
    minutes = steady["api"]["seconds"] / 60
    other = sum(
        v
        for kind, v in ks.items()
        if kind not in TOKEN_KINDS and cats.get(kind) in ("read", "write", "review")
    )
    other_per_min = other / n / minutes if minutes else 0.0
    checks = rules_total * 60 / DEFAULT_RECHECK_S + full_total * 60 / DEFAULT_FULL_PROOF_S
    return {
        "available": True,
        "counts": counts,
        "per_full_proof": {k: round(v, 2) for k, v in by_cat["full"].items()},
        "per_full_proof_total": round(full_total, 2),
        "per_full_proof_by_kind": per_full,
        "per_recheck": {k: round(v, 2) for k, v in by_cat["rules"].items()},
        "per_recheck_total": round(rules_total, 2),
        "per_recheck_by_kind": per_rules,
        "steady_other_per_identity_per_minute": round(other_per_min, 4),
        "projected_default_schedule": {
            "recheck_seconds": DEFAULT_RECHECK_S,
            "full_proof_seconds": DEFAULT_FULL_PROOF_S,
            "checks_per_identity_per_minute": round(checks, 4),
            "per_identity_per_minute": round(checks + other_per_min, 4),
            "rotation_not_included": True,
            "rotation_lower_bound_per_identity_per_minute": round(
                (1 + full_total) / ROTATION_MINUTES, 4
            ),
            "definition": "per-identity requests per minute if each identity is re-checked every "
            f"{DEFAULT_RECHECK_S:.0f} s and proven in full every {DEFAULT_FULL_PROOF_S:.0f} s: the "
            "per-check costs measured on the sped-up schedule times the default rates, plus the "
            "steady window's other requests at their measured (sped-up) rate. Token rotation "
            f"(every {ROTATION_MINUTES:.0f} min for the default 3600 s token) is not in the "
            "windows; its lower bound is one TokenRequest plus one full proof",
        },
    }


def run_baselines(ctx: Ctx, n: int) -> dict[str, Any]:
    args = ctx.args
    out: dict[str, Any] = {}
    if args.baseline_max_n and n > args.baseline_max_n:
        why = f"N > {args.baseline_max_n} (--baseline-max-n)"
        log(f"N={n}: baselines (a) and (b) skipped: {why}")
        return {"skipped": why}
    tag = f"b{ctx.run_id}-{n}"
    n_manual = min(n, args.manual_max)
    nss = [f"{tag}-m{i}" for i in range(min(args.namespaces, n_manual))]
    nsd = [f"{tag}-d{i}" for i in range(min(args.namespaces, n))]
    create_namespaces(ctx.api, nss + nsd, {RUN_LABEL: ctx.run_id})
    try:
        tokenless = tokenless_kubeconfig(
            ctx.work / "tokenless.kubeconfig", ctx.creds.server, ctx.creds.ca_file
        )
        if not args.skip_manual:
            targets = [(nss[i % len(nss)], f"manual-{i}") for i in range(n_manual)]
            log(f"N={n}: baseline (a) manual kubectl flow, {n_manual} identities one after another")
            meter = Meter(ctx.cp_pids)
            manual = manual_flow(ctx.kubeconfig, tokenless, ctx.work / "kubectl-cache", targets)
            manual_cost = meter.done()
            manual.notes += f"; measured on {n_manual} identities (min(N, {args.manual_max})), throughput extrapolated"
            out["manual"] = {**manual.as_dict(), "cost": manual_cost}
            log(
                f"  {manual.throughput:.2f} identities/s ({manual.wall_seconds:.1f}s for {n_manual})"
            )
        if not args.skip_direct:
            targets = [(nsd[i % len(nsd)], f"direct-{i}") for i in range(n)]
            log(f"N={n}: baseline (b) direct client, {n} identities, {args.direct_workers} threads")
            meter = Meter(ctx.cp_pids)
            client = ctx.operator_api or ctx.api
            direct = direct_flow(client, ctx.tokens, targets, args.direct_workers)
            out["direct"] = {**direct.as_dict(), "cost": meter.done()}
            log(f"  {direct.throughput:.2f} identities/s ({direct.wall_seconds:.1f}s for {n})")
    finally:
        t = delete_namespaces(ctx.api, nss + nsd, ctx.limit(n))
        log(f"  baseline namespaces deleted in {t:.1f}s")
    return out


def run_operator(ctx: Ctx, n: int) -> dict[str, Any]:
    args = ctx.args
    out: dict[str, Any] = {}
    tag = f"o{ctx.run_id}-{n}"
    namespaces = [f"{tag}-{i}" for i in range(min(args.namespaces, n))]
    selector = f"{RUN_LABEL}={tag}"
    create_namespaces(ctx.api, namespaces, {RUN_LABEL: ctx.run_id})
    log_path = ctx.work / f"operator-{n}.log"
    op = ctx.operator(log_path.name, f"profile-{n}.json", n)
    restarted: Operator | None = None
    targets = [(namespaces[i % len(namespaces)], f"app-{i}") for i in range(n)]
    try:
        op.start()
        startup = op.wait_ready(args.timeout)
        log(f"N={n}: operator up in {startup:.1f}s (pid {op.proc.pid if op.proc else '?'})")
        time.sleep(args.settle)
        # --- first provisioning + verification -------------------------------------------------
        m0 = OperatorMetrics.read(op)
        cpu0 = op.sample().cpu_seconds
        log_start = log_path.stat().st_size
        own = OwnCounts(ctx.api)
        meter = Meter(ctx.cp_pids)
        before = ServerCounters.scrape(ctx.api)
        refused = RefusedRequests(ctx.audit_log, tag) if ctx.audit_log else None
        watcher = ReadyWatcher(ctx.api, selector)
        watcher.start()
        if not watcher.listening.wait(30) or watcher.error:
            raise RuntimeError(f"the AppIdentity watch did not start: {watcher.error}")
        created: dict[tuple[str, str], float] = {}

        def create(target: tuple[str, str]) -> None:
            ns, name = target
            ctx.api.json(
                "POST",
                f"{AI_PATH}/namespaces/{ns}/appidentities",
                body=identity_body(ns, name, {RUN_LABEL: tag}),
            )
            created[target] = time.monotonic()

        log(f"N={n}: creating {n} AppIdentities in {len(namespaces)} namespaces")
        t_start = time.monotonic()
        with ThreadPoolExecutor(max_workers=min(args.create_workers, n)) as pool:
            list(pool.map(create, targets))
        t_created = time.monotonic()
        ok = watcher.wait_for(set(targets), ctx.limit(n))
        t_all = time.monotonic()
        watcher.stop()
        quiet = wait_quiet(op, 1.5, 10.0, poll_seconds(n))
        m1 = OperatorMetrics.read(op)
        mine = own.since()
        after = ServerCounters.scrape_after(ctx.api, before, mine)
        cpu1 = op.sample().cpu_seconds
        w = Window.between(before, after, mine)
        latencies = [max(0.0, watcher.ready[t] - created[t]) for t in targets if t in watcher.ready]
        settled = [max(0.0, watcher.ready[t] - t_created) for t in targets if t in watcher.ready]
        last_ready = (
            max(watcher.ready[t] for t in targets if t in watcher.ready) if latencies else t_all
        )
        wall = last_ready - t_start
        out["provisioning"] = {
            "all_ready": ok,
            "ready": len(latencies),
            "watch_error": watcher.error,
            "create_seconds": round(t_created - t_start, 3),
            "wall_seconds_to_all_ready": round(wall, 3),
            "after_creation_settled_seconds": round(max(0.0, last_ready - t_created), 3),
            "latency_after_creation_settled_seconds": {
                "p50": round(percentile(settled, 50), 3),
                "p99": round(percentile(settled, 99), 3),
                "definition": "Ready time minus the moment the last create call returned",
            },
            "latency_seconds": {
                "p50": round(percentile(latencies, 50), 3),
                "p95": round(percentile(latencies, 95), 3),
                "p99": round(percentile(latencies, 99), 3),
                "max": round(max(latencies), 3) if latencies else None,
                "mean": round(statistics.fmean(latencies), 3) if latencies else None,
            },
            "throughput_per_second": round(len(latencies) / wall, 3) if wall > 0 else None,
            "quiet_wait_seconds": round(quiet, 2),
            "api": window_dict(w, n),
            "operator": m1.delta(m0),
            "operator_cpu_seconds": round(cpu1 - cpu0, 2),
            "cost": meter.done(),
            "log": log_summary(log_path, log_start, None, n),
        }
        p = out["provisioning"]
        if refused is not None:
            add_refused(p["api"], refused.since(), n)
        log(
            f"  {len(latencies)}/{n} Ready; wall {wall:.2f}s; p50 {p['latency_seconds']['p50']}s "
            f"p99 {p['latency_seconds']['p99']}s; {p['api']['all_per_identity']} requests/identity"
        )
        if not ok:
            missing = [f"{a}/{b}" for a, b in targets if (a, b) not in watcher.ready][:5]
            log(f"  warning: not all Ready within {ctx.limit(n):.0f}s, e.g. {missing}")
        # --- steady state ----------------------------------------------------------------------
        if args.steady_seconds > 0:
            log(f"N={n}: steady state for {args.steady_seconds:.0f}s")
            own = OwnCounts(ctx.api)
            meter = Meter(ctx.cp_pids)
            before = ServerCounters.scrape(ctx.api)
            log_start = log_path.stat().st_size
            time.sleep(args.steady_seconds)
            after = ServerCounters.scrape(ctx.api)
            m2 = OperatorMetrics.read(op)
            cpu2 = op.sample().cpu_seconds
            w = Window.between(before, after, own.since())
            api = window_dict(w, n)
            minutes = w.seconds / 60
            out["steady"] = {
                "api": api,
                "per_identity_per_minute": {
                    **{
                        cat: round(api["totals"].get(cat, 0.0) / n / minutes, 4)
                        for cat in ("read", "write", "review")
                    },
                    "total": round(api["all_per_identity"] / minutes, 4),
                },
                "schedule": ctx.schedule(n),
                "operator": m2.delta(m1),
                "operator_cpu_seconds": round(cpu2 - cpu1, 2),
                "cost": meter.done(),
                "log": log_summary(log_path, log_start, None, n),
            }
            s = out["steady"]["api"]
            checks = out["steady"]["operator"]["checks"]
            log(
                f"  writes/identity {s['per_identity'].get('write', 0)}, "
                f"storage writes/identity {s['storage_writes_per_identity']}, "
                f"{out['steady']['per_identity_per_minute']['total']} requests/identity/min, "
                f"checks {checks or 'not counted by this operator'}"
            )
        # --- excess privilege noticed --------------------------------------------------------
        if not args.skip_excess and n >= args.excess_min_n and args.excess_samples > 0:
            out["excess"] = run_excess(ctx, n, targets, selector, tag)
        final = op.stop()
        out["operator_process"] = {
            "peak_rss_mib": round(final.hwm_bytes / MIB, 1),
            "rss_at_stop_mib": round(final.rss_bytes / MIB, 1),
            "cpu_seconds": round(final.cpu_seconds, 2),
            "threads": final.threads,
            "startup_seconds": round(startup, 2),
        }
        log(f"  operator peak RSS {final.hwm_bytes / MIB:.1f} MiB, CPU {final.cpu_seconds:.1f}s")
        # --- restart -----------------------------------------------------------------------------
        if not args.skip_restart:
            log(f"N={n}: restart with {n} identities present")
            restarted = ctx.operator(f"operator-{n}-restart.log", f"profile-{n}-restart.json", n)
            own = OwnCounts(ctx.api)
            meter = Meter(ctx.cp_pids)
            before = ServerCounters.scrape(ctx.api)
            restarted.start()
            t0 = restarted.started_at
            up = restarted.wait_ready(args.timeout)
            verified_at: float | None = None

            def all_verified(proc: Operator = restarted) -> bool:
                return OperatorMetrics.read(proc).verified >= n

            try:
                wait_until(all_verified, ctx.limit(n), "re-verification", every=poll_seconds(n))
                verified_at = time.monotonic() - t0
            except TimeoutError as exc:
                log(f"  warning: {exc}")
            quiet = wait_quiet(restarted, 1.5, 10.0, poll_seconds(n))
            m3 = OperatorMetrics.read(restarted)
            after = ServerCounters.scrape(ctx.api)
            w = Window.between(before, after, own.since())
            rfinal = restarted.stop()
            restarted = None
            api = window_dict(w, n)
            out["restart"] = {
                "seconds_to_all_reverified": round(verified_at, 3) if verified_at else None,
                "operator_ready_seconds": round(up, 2),
                "verified": m3.verified,
                "api": api,
                "writes": api["totals"].get("write", 0),
                "storage_writes": api["storage_writes"],
                "operator": m3.delta(None),
                "schedule": ctx.schedule(n),
                "operator_cpu_seconds": round(rfinal.cpu_seconds, 2),
                "peak_rss_mib": round(rfinal.hwm_bytes / MIB, 1),
                "quiet_wait_seconds": round(quiet, 2),
                "cost": meter.done(),
                "log": log_summary(ctx.work / f"operator-{n}-restart.log", 0, None, n),
                "definition": "time from starting the new process until its appidentity_verified "
                "gauge is 1 for all N identities: the gauge is only set by a reconcile of that "
                "identity in this process (no status write is needed for it to count); "
                "operator.checks says whether those reconciles re-checked or proved in full",
            }
            log(
                f"  re-verified in {verified_at if verified_at else float('nan'):.2f}s; "
                f"{out['restart']['writes']:.0f} API writes, {out['restart']['storage_writes']:.0f} storage writes"
            )
    finally:
        for proc in (op, restarted):
            if proc is not None and proc.alive():
                proc.stop()
        log(f"N={n}: cleaning up")
        t = cleanup(ctx.api, selector, namespaces, ctx.limit(n), args.create_workers)
        log(f"  operator namespaces deleted in {t:.1f}s")
        for name, key in (
            (f"profile-{n}.json", "profile"),
            (f"profile-{n}-restart.json", "profile_restart"),
        ):
            path = ctx.work / name
            if path.exists():
                out[key] = json.loads(path.read_text())
    if "steady" in out and "provisioning" in out:
        out["check_costs"] = check_costs(out["provisioning"], out["steady"], n)
    return out


# --- the table -----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ok" if ok else " MISS")


def table(results: dict[str, Any], ns: Sequence[int]) -> str:
    rows: list[tuple[str, str, list[str]]] = []

    def get(n: int, *path: str) -> Any:
        node: Any = results.get(str(n), {})
        for p in path:
            if not isinstance(node, dict):
                return None
            node = node.get(p)
        return node

    def row(label: str, target: str, cell: Callable[[int], str]) -> None:
        rows.append((label, target, [cell(n) for n in ns]))

    def lat(
        key: str, check_n: int | None = None, limit: float | None = None
    ) -> Callable[[int], str]:
        def cell(n: int) -> str:
            v = get(n, "operator", "provisioning", "latency_seconds", key)
            ok = (v is not None and v <= limit) if (limit is not None and n == check_n) else None
            return _fmt(v) + _mark(ok)

        return cell

    row("time to Ready p50 (s)", "", lat("p50"))
    row("time to Ready p95 (s)", "", lat("p95"))
    row("time to Ready p99 (s)", "<= 2 at N=100", lat("p99", 100, TARGETS["p99_ready_n100_s"]))
    row("time to Ready max (s)", "", lat("max"))

    def direct_p99(n: int) -> str:
        if get(n, "baselines", "skipped"):
            return "skipped"
        return _fmt(get(n, "baselines", "direct", "latency_seconds", "p99"))

    def p99_vs_direct(n: int) -> str:
        op = get(n, "operator", "provisioning", "latency_seconds", "p99")
        base = get(n, "baselines", "direct", "latency_seconds", "p99")
        if not op or not base:
            return "skipped" if get(n, "baselines", "skipped") else "-"
        r = op / base
        limit = TARGETS["p99_vs_direct_n100_x"]
        return f"{r:.2f}x" + _mark(r <= limit if n == 100 else None)

    row("(b) plain client p99, from run start (s)", "", direct_p99)
    row("p99 create->Ready vs (b)'s p99", "<= 1.5x (b) at N=100", p99_vs_direct)
    row(
        "  p99 counted from end of create burst",
        "",
        lambda n: _fmt(
            get(n, "operator", "provisioning", "latency_after_creation_settled_seconds", "p99")
        ),
    )

    def wall(n: int) -> str:
        v = get(n, "operator", "provisioning", "wall_seconds_to_all_ready")
        ready = get(n, "operator", "provisioning", "ready")
        limit = {1000: TARGETS["all_ready_n1000_s"], 10000: TARGETS["all_verified_n10000_s"]}
        ok = (v is not None and v <= limit[n] and ready == n) if n in limit else None
        suffix = "" if ready in (None, n) else f" ({ready}/{n})"
        return _fmt(v) + suffix + _mark(ok)

    row("wall time to all Ready/Verified (s)", "<= 60 at 1000; <= 240 at 10000", wall)
    row(
        "operator throughput (id/s)",
        "",
        lambda n: _fmt(get(n, "operator", "provisioning", "throughput_per_second")),
    )

    def baseline_rate(which: str, digits: int) -> Callable[[int], str]:
        def cell(n: int) -> str:
            if get(n, "baselines", "skipped"):
                return "skipped"
            return _fmt(get(n, "baselines", which, "throughput_per_second"), digits)

        return cell

    row("(a) manual kubectl (id/s)", "", baseline_rate("manual", 3))
    row("(b) direct client (id/s)", "", baseline_rate("direct", 2))

    def ratio(which: str, limit: float, pct: bool, at: int | None = None) -> Callable[[int], str]:
        """Operator over baseline `which`; judged against `limit` at N=`at` (None: every N)."""

        def cell(n: int) -> str:
            op = get(n, "operator", "provisioning", "throughput_per_second")
            base = get(n, "baselines", which, "throughput_per_second")
            if not op or not base:
                return "skipped" if get(n, "baselines", "skipped") else "-"
            r = op / base
            judged = at is None or n == at
            return (f"{r * 100:.0f}%" if pct else f"{r:.1f}x") + _mark(
                r >= limit if judged else None
            )

        return cell

    row("operator vs (a)", ">= 15x", ratio("manual", TARGETS["vs_manual_x"], False))
    row(
        "operator vs (b)",
        ">= 90% at 1000",
        ratio("direct", TARGETS["vs_direct_fraction"], True, at=1000),
    )

    def per(
        cat: str, window: str = "provisioning", target: float | None = None
    ) -> Callable[[int], str]:
        def cell(n: int) -> str:
            api = get(n, "operator", window, "api")
            if not api:
                return "-"
            if cat == "rw":
                v = api["reads_plus_writes_per_identity"]
            elif cat == "all":
                v = api["all_per_identity"]
            elif cat == "storage":
                v = api["storage_writes_per_identity"]
            else:
                v = api["per_identity"].get(cat, 0.0)
            return _fmt(v, 1) + (_mark(v <= target) if target is not None else "")

        return cell

    row(
        "API req/identity: reads+writes",
        "<= 12",
        per("rw", target=TARGETS["requests_per_identity"]),
    )
    row("  reads (GET/LIST/WATCH)", "", per("read"))
    row("  writes (POST/PUT/PATCH/DEL/APPLY)", "", per("write"))
    row("  reviews (SSR/SSAR/SSRR, not stored)", "", per("review"))
    row("  refused (403, from the audit log)", "", per("refused"))
    row(
        "  all: reads, writes, reviews, refused",
        "<= 15",
        per("all", target=TARGETS["all_requests_per_identity"]),
    )
    row("  storage writes (etcd)", "", per("storage"))
    row("(b) direct: reads+writes/identity", "", lambda n: _fmt((get(n, "baselines", "direct", "requests_per_identity") or {}).get("read", 0) + (get(n, "baselines", "direct", "requests_per_identity") or {}).get("write", 0), 1) if get(n, "baselines", "direct") else "-")  # fmt: skip
    steady = results.get("steady_seconds", 0)
    row(f"steady {steady:.0f}s: writes/identity", "~0", per("write", "steady"))
    row(f"steady {steady:.0f}s: reads/identity", "", per("read", "steady"))
    row(f"steady {steady:.0f}s: storage writes/id", "", per("storage", "steady"))

    def schedule(n: int) -> str:
        sch = get(n, "operator", "steady", "schedule") or (results.get("schedule") or {}).get(
            str(n)
        )
        if not sch:
            return "-"
        return " / ".join(_fmt(sch.get(k), 0) for k in ("recheck_seconds", "full_proof_seconds"))

    def rate(key: str) -> Callable[[int], str]:
        return lambda n: _fmt(get(n, "operator", "steady", "per_identity_per_minute", key), 3)

    def checks(n: int) -> str:
        got = get(n, "operator", "steady", "operator", "checks")
        if got is None:
            return "-"
        if not got:
            return "not counted"
        return f"{got.get('rules', 0):.0f} / {got.get('full', 0):.0f}"

    def cost(key: str) -> Callable[[int], str]:
        def cell(n: int) -> str:
            c = get(n, "operator", "check_costs")
            if not c or not c.get("available"):
                return "-"
            split = c[key]
            parts = "/".join(f"{split.get(k, 0.0):.1f}" for k in ("read", "write", "review"))
            return f"{c[key + '_total']:.1f} ({parts})"

        return cell

    def projected(n: int) -> str:
        c = get(n, "operator", "check_costs")
        if not c or not c.get("available"):
            return "-"
        v = c["projected_default_schedule"]["per_identity_per_minute"]
        return _fmt(v, 3) + _mark(v <= TARGETS["steady_requests_per_identity_per_minute"])

    def split(n: int) -> str:
        c = get(n, "operator", "check_costs")
        if not c or not c.get("available"):
            return "-"
        checks = c["projected_default_schedule"]["checks_per_identity_per_minute"]
        return f"{checks:.3f} / {c['steady_other_per_identity_per_minute']:.3f}"

    def rotation(n: int) -> str:
        c = get(n, "operator", "check_costs")
        if not c or not c.get("available"):
            return "-"
        return ">= " + _fmt(
            c["projected_default_schedule"]["rotation_lower_bound_per_identity_per_minute"], 3
        )

    row("steady schedule: re-check / full proof (s)", "sped up", schedule)
    row("steady req/identity/min, measured", "", rate("total"))
    row("  reads / writes / reviews", "", lambda n: " / ".join(rate(k)(n) for k in ("read", "write", "review")))  # fmt: skip
    row("  re-checks / full proofs in window", "(operator counter)", checks)
    row("requests per re-check (r/w/rev)", "", cost("per_recheck"))
    row("requests per full proof (r/w/rev)", "", cost("per_full_proof"))
    row("PROJECTED req/id/min at 600 s/86400 s", "<= 0.1 (from sped-up run)", projected)
    row("  checks / other requests (measured rate)", "", split)
    row("  + token rotation (not in window)", "", rotation)

    def excess(key: str) -> Callable[[int], str]:
        def cell(n: int) -> str:
            ex = get(n, "operator", "excess")
            if not ex:
                return "-"
            v = ex["latency_seconds"].get(key)
            ok = None
            if key == "p95" and n == 1000:
                ok = v is not None and ex["all_noticed"] and v <= TARGETS["excess_p95_n1000_s"]
            missing = "" if ex["all_noticed"] else f" ({ex['noticed']}/{ex['samples']})"
            return _fmt(v) + (missing if key == "p95" else "") + _mark(ok)

        return cell

    row("excess RoleBinding noticed p50 (s)", "", excess("p50"))
    row("excess RoleBinding noticed p95 (s)", "<= 5 at N=1000", excess("p95"))
    row("excess RoleBinding noticed max (s)", "", excess("max"))

    def restart(key: str, target: float | None = None) -> Callable[[int], str]:
        def cell(n: int) -> str:
            v = get(n, "operator", "restart", key)
            return _fmt(v, 2 if key.startswith("seconds") else 0) + (
                _mark(v <= target) if (target is not None and v is not None) else ""
            )

        return cell

    row("restart: time to all re-verified (s)", "", restart("seconds_to_all_reverified"))

    def restart_writes(n: int) -> str:
        api = get(n, "operator", "restart", "api")
        if not api:
            return "-"
        writes = api["totals"].get("write", 0.0)
        totals = api.get("by_request_total") or [(k, v * n) for k, v in api["by_request"]]
        minted = sum(v for k, v in totals if k == "POST core/serviceaccounts/token")
        ok = writes - minted <= TARGETS["restart_writes"]
        extra = f" ({minted:.0f} TokenRequest)" if minted else ""
        return f"{writes:.0f}{extra}" + _mark(ok)

    row("restart: API writes (TokenRequest aside)", "0", restart_writes)
    row("restart: storage writes (etcd)", "", restart("storage_writes"))

    def rss(n: int) -> str:
        v = get(n, "operator", "operator_process", "peak_rss_mib")
        limit = {1000: TARGETS["peak_rss_n1000_mib"], 10000: TARGETS["peak_rss_n10000_mib"]}
        ok = (v is not None and v <= limit[n]) if n in limit else None
        return _fmt(v, 1) + _mark(ok)

    def cpu_per_identity(n: int, node: Any, own: float | None) -> str:
        if not isinstance(node, dict) or "control_plane_cpu_seconds" not in node:
            return "-"
        cp = node["control_plane_cpu_seconds"]
        parts = [own, cp.get("kube-apiserver"), cp.get("etcd")]
        return " / ".join("-" if v is None else f"{v * 1000 / n:.0f}" for v in parts)

    row(
        "CPU ms/identity: operator/apiserver/etcd",
        "",
        lambda n: cpu_per_identity(
            n,
            get(n, "operator", "provisioning", "cost"),
            get(n, "operator", "provisioning", "operator_cpu_seconds"),
        ),
    )
    row(
        "(b) CPU ms/identity: client/apiserver/etcd",
        "",
        lambda n: cpu_per_identity(
            n,
            get(n, "baselines", "direct", "cost"),
            get(n, "baselines", "direct", "cost", "bench_cpu_seconds"),
        ),
    )
    row("operator peak RSS (MiB)", "<= 150 at 1000; <= 300 at 10000", rss)
    row(
        "  after restart (MiB)",
        "",
        lambda n: _fmt(get(n, "operator", "restart", "peak_rss_mib"), 1),
    )
    row(
        "operator CPU s (provisioning)",
        "",
        lambda n: _fmt(get(n, "operator", "provisioning", "operator_cpu_seconds"), 1),
    )
    row(
        "operator CPU s (whole 1st process)",
        "",
        lambda n: _fmt(get(n, "operator", "operator_process", "cpu_seconds"), 1),
    )
    row(
        "operator CPU s (restart process)",
        "",
        lambda n: _fmt(get(n, "operator", "restart", "operator_cpu_seconds"), 1),
    )
    row("reconciles/identity (provisioning)", "", lambda n: _fmt(sum((get(n, "operator", "provisioning", "operator", "reconciles") or {}).values()) / n, 2) if get(n, "operator", "provisioning") else "-")  # fmt: skip
    row(
        "mean reconcile duration (s)",
        "",
        lambda n: _fmt(get(n, "operator", "provisioning", "operator", "reconcile_seconds_mean"), 3),
    )

    header = ("metric", "target", *[f"N={n}" for n in ns])
    widths = [
        max(len(header[0]), *(len(r[0]) for r in rows)),
        max(len(header[1]), *(len(r[1]) for r in rows)),
    ]
    widths += [max(len(header[2 + i]), *(len(r[2][i]) for r in rows)) for i in range(len(ns))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for label, target, cells in rows:
        lines.append(
            "  ".join(
                c.ljust(w) for c, w in zip((label, target, *cells), widths, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def top_requests(results: dict[str, Any], ns: Sequence[int]) -> str:
    out = []
    for n in ns:
        api = (results.get(str(n), {}).get("operator", {}).get("provisioning") or {}).get("api")
        if not api:
            continue
        items = ", ".join(f"{k} {v:g}" for k, v in api["by_request"][:14])
        out.append(f"N={n} requests/identity by kind (provisioning window): {items}")
        total = api.get("server_seconds_total") or 0
        if total:
            shares = ", ".join(
                f"{k} {v / total:.0%}" for k, v, _ in api["server_seconds_by_request"][:8]
            )
            out.append(f"N={n} API server time by kind ({total:.0f}s summed latency): {shares}")
    return "\n".join(out)


def profile_summary(results: dict[str, Any], ns: Sequence[int]) -> str:
    out = []
    for n in ns:
        prof = results.get(str(n), {}).get("operator", {}).get("profile")
        if not prof:
            continue
        groups = ", ".join(f"{k} {v:.1f}s" for k, v in prof["cpu_by_thread_group"][:6])
        out.append(f"N={n} operator CPU by thread group (whole first process): {groups}")
        out.append(
            f"N={n} top self CPU: " + ", ".join(f"{k} {v:.2f}s" for k, v in prof["self"][:12])
        )
    return "\n".join(out)


def unit_cost_summary(results: dict[str, Any], ns: Sequence[int]) -> str:
    rows = results["unit_costs"]
    out = ["API server CPU per request (unit costs, operator stopped):"]
    width = max(len(r["request"]) for r in rows)
    for r in rows:
        out.append(
            f"  {r['request'].ljust(width)}  apiserver {r['apiserver_cpu_ms']:6.2f} ms"
            f"  etcd {r['etcd_cpu_ms']:5.2f} ms"
        )
    n = max(ns) if ns else 0
    api = (results.get(str(n), {}).get("operator", {}).get("provisioning") or {}).get("api")
    cost = (results.get(str(n), {}).get("operator", {}).get("provisioning") or {}).get("cost")
    if api and cost:
        modelled = model(rows, [(k, v) for k, v in api["by_request"]])
        total = sum(m for _, _, m in modelled)
        measured = (cost["control_plane_cpu_seconds"].get("kube-apiserver") or 0) * 1000 / n
        out.append(
            f"N={n}: modelled apiserver CPU per identity {total:.0f} ms "
            f"(measured {measured:.0f} ms over the provisioning window, incl. watch fan-out):"
        )
        for kind, count, ms in modelled[:12]:
            out.append(f"  {kind:55s} {count:6.2f}/identity  {ms:6.1f} ms  {ms / total:4.0%}")
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--n", default="1,100,1000", help="comma-separated identity counts (default 1,100,1000)"
    )
    p.add_argument(
        "--kubeconfig", help="reuse this cluster (admin credentials, client cert for /metrics)"
    )
    p.add_argument(
        "--state-dir", type=Path, default=REPO / ".state" / "bench", help="control plane state dir"
    )
    p.add_argument(
        "--keep-cluster", action="store_true", help="do not stop a control plane this run started"
    )
    p.add_argument(
        "--namespaces", type=int, default=10, help="identities are spread over this many"
    )
    p.add_argument("--workers", type=int, help="operator --workers (default: the operator's)")
    p.add_argument(
        "--operator-credentials",
        choices=("serviceaccount", "admin"),
        default="serviceaccount",
        help="the operator's (and baseline (b)'s) credentials: its ServiceAccount with deploy/'s"
        " RBAC, as installed (default), or the control plane's admin client certificate",
    )
    p.add_argument(
        "--recheck-seconds",
        type=float,
        default=None,
        help="operator --recheck-seconds (default 30, times N/1000 above N=1000; 0: not "
        "passed, the identities' own interval); passed only if the operator has the option",
    )
    p.add_argument(
        "--full-proof-seconds",
        type=float,
        default=None,
        help="operator --full-proof-seconds (default 300, times N/1000 above N=1000; 0: not "
        "passed); passed only if the operator has the option",
    )
    p.add_argument(
        "--operator-arg", action="append", default=[], help="extra operator argument (repeatable)"
    )
    p.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the operator process (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument("--steady-seconds", type=float, default=120.0, help="steady-state window")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="bound of every wait (s) up to N=1000, times N/1000 above",
    )
    p.add_argument("--settle", type=float, default=2.0, help="pause after operator start")
    p.add_argument("--manual-max", type=int, default=20, help="N for baseline (a) is min(N, this)")
    p.add_argument(
        "--direct-workers",
        type=int,
        default=WORKERS,
        help="threads of baseline (b) (default: as many as the operator's default workers)",
    )
    p.add_argument("--create-workers", type=int, default=32, help="threads creating AppIdentities")
    p.add_argument("--skip-manual", action="store_true")
    p.add_argument("--skip-direct", action="store_true")
    p.add_argument("--skip-restart", action="store_true")
    p.add_argument(
        "--baseline-max-n",
        type=int,
        default=1000,
        help="skip baselines (a) and (b) above this N (0: never skip)",
    )
    p.add_argument(
        "--excess-samples",
        type=int,
        default=20,
        help="identities given an excess RoleBinding after the steady window",
    )
    p.add_argument(
        "--excess-gap", type=float, default=1.0, help="seconds between two excess RoleBindings"
    )
    p.add_argument(
        "--excess-min-n", type=int, default=100, help="measure excess privilege from this N on"
    )
    p.add_argument(
        "--excess-timeout",
        type=float,
        default=120.0,
        help="wait this long for the last excess binding to be noticed (and for recovery)",
    )
    p.add_argument("--skip-excess", action="store_true")
    p.add_argument(
        "--profile", action="store_true", help="profile the operator in-process (bench/profiler)"
    )
    p.add_argument(
        "--profile-functions",
        action="store_true",
        help="with --profile: cProfile (CPU time) of kopf's thread and every reconcile (slow)",
    )
    p.add_argument(
        "--profile-memory", action="store_true", help="with --profile: tracemalloc (slow)"
    )
    p.add_argument(
        "--unit-costs",
        action="store_true",
        help="also measure API server CPU per request kind (needs a cluster.sh control plane)",
    )
    p.add_argument("--unit-count", type=int, default=300, help="requests per kind for --unit-costs")
    p.add_argument("--report", type=Path, help="only print the table of this results JSON")
    p.add_argument("--output", type=Path, help="JSON file (default bench/results/<utc stamp>.json)")
    args = p.parse_args(argv)
    try:
        args.ns = [int(x) for x in str(args.n).split(",") if x.strip()]
    except ValueError:
        p.error(f"--n must be comma-separated integers, got {args.n!r}")
    bad = [kv for kv in args.operator_env if "=" not in kv]
    if bad:
        p.error(f"--operator-env needs KEY=VALUE, got {bad[0]!r}")
    if not args.ns or any(n < 1 for n in args.ns):
        p.error("--n needs positive integers")
    return args


def report(path: Path) -> int:
    """Prints the table of an earlier run from its JSON file."""
    results = json.loads(path.read_text())
    ns = [int(k) for k in results if k.isdigit()]
    for n in ns:  # derived figures again, from the windows' raw counts
        op = results[str(n)].get("operator") or {}
        if "provisioning" in op and "steady" in op and "categories" in op["steady"]["api"]:
            op["check_costs"] = check_costs(op["provisioning"], op["steady"], n)
    print(f"command: {results.get('command')}\noperator: {results.get('operator_version')}\n")
    print(table(results, ns))
    print()
    print(top_requests(results, ns))
    if results.get("unit_costs"):
        print(unit_cost_summary(results, ns))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    started_cluster = False
    state: Path = args.state_dir.resolve()
    if args.kubeconfig:
        kubeconfig = str(Path(args.kubeconfig).resolve())
    else:
        lock = state.parent / f"{state.name}.run.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock_file = lock.open("w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"error: another benchmark run is using {state} ({lock}); use --state-dir")
            return 1
        # Held while main() runs (lock_file stays referenced): a second run on the same
        # control plane would run a second operator over this run's identities and spoil
        # both runs' figures.
        was_running = cluster_running(state)
        log(f"control plane in {state} ({'reusing' if was_running else 'starting'})")
        kubeconfig = cluster_up(state)
        started_cluster = not was_running
    creds = Credentials.from_kubeconfig(kubeconfig)
    api = Api(creds, pool=max(64, args.create_workers * 2))
    tokens = Api(creds, pool=max(64, args.direct_workers * 2), admin=False)
    logs = REPO / ".state" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-"), dir=logs))
    run_id = datetime.now(UTC).strftime("%H%M%S")
    ctx = Ctx(
        args,
        kubeconfig,
        creds,
        api,
        tokens,
        run_id,
        work,
        os.environ.get("BENCH_PYTHON", sys.executable),
        control_plane_pids(kubeconfig),
        audit_log=None if args.kubeconfig else state / "logs" / "audit.log",
    )
    ctx.operator_options = operator_options(ctx.python)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": loadavg(),
        },
        "cluster": {
            "server": creds.server,
            "reused": not started_cluster,
            "kubeconfig": kubeconfig,
        },
        "operator_version": operator_version(),
        "spec": identity_body("NS", "NAME", {})["spec"],
        "targets": TARGETS,
        "steady_seconds": args.steady_seconds,
        "schedule": {str(n): ctx.schedule(n) for n in args.ns},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "work_dir": str(work),
    }
    code = 0
    try:
        install_api(kubeconfig, api)
        if args.operator_credentials == "serviceaccount":
            op_kubeconfig, op_creds = as_installed(kubeconfig, api, creds, work)
            ctx.operator_kubeconfig = str(op_kubeconfig)
            ctx.operator_api = Api(op_creds, pool=max(64, args.direct_workers * 2))
        for n in args.ns:
            results[str(n)] = {}
            if not (args.skip_manual and args.skip_direct):
                results[str(n)]["baselines"] = run_baselines(ctx, n)
            results[str(n)]["operator"] = run_operator(ctx, n)
        if args.unit_costs:
            log(f"unit costs: {args.unit_count} requests per kind, 8 threads, operator stopped")
            results["unit_costs"] = unit_costs(
                api, tokens, ctx.cp_pids, f"uc{run_id}", args.unit_count, 8
            )
    except (TimeoutError, RuntimeError, ApiError) as exc:
        log(f"error: {exc}")
        results["error"] = str(exc)
        code = 1
    finally:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = args.output or RESULTS / f"{stamp}.json"
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        api.close()
        tokens.close()
        if ctx.operator_api is not None:
            ctx.operator_api.close()
        (work / TOKEN_FILE).unlink(missing_ok=True)  # the work directory (logs) is kept
        creds.close()
        if started_cluster and not args.keep_cluster:
            log("stopping the control plane this run started")
            cluster_down(state)
        ns_done = [n for n in args.ns if str(n) in results]
        print()
        print(table(results, ns_done))
        print()
        print(top_requests(results, ns_done))
        if args.profile:
            print(profile_summary(results, ns_done))
        if results.get("unit_costs"):
            print(unit_cost_summary(results, ns_done))
        print(f"\nJSON: {out}\noperator logs: {work}")
    return code


if __name__ == "__main__":
    sys.exit(main())
