"""Unit costs: kube-apiserver and etcd CPU per request, for each kind of request the operator
makes, measured on the same control plane (operator stopped) by firing a batch of one kind at a
time and reading the server processes' CPU from /proc.

Multiplied by the per-identity request counts of the main benchmark, this tells which requests
the API server's CPU goes to (its latency histogram cannot: latency includes queueing).
The manifests are the operator's own (its pure builders), so the applies are exactly its applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apiclient import Api, ApiError
from appidentity.desired import desired_state, object_key, token_secret
from appidentity.model import parse_identity
from appidentity.verify.plan import Plan
from baselines import check_plan, identity_body
from procs import cpu_seconds

AI = "/apis/appidentity.dev/v1alpha1"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


def _path(obj: dict[str, Any]) -> str:
    kind, ns, name = object_key(obj)
    prefix = {
        "ServiceAccount": "/api/v1",
        "Secret": "/api/v1",
        "Role": "/apis/rbac.authorization.k8s.io/v1",
        "RoleBinding": "/apis/rbac.authorization.k8s.io/v1",
    }[kind]
    plural = {
        "ServiceAccount": "serviceaccounts",
        "Secret": "secrets",
        "Role": "roles",
        "RoleBinding": "rolebindings",
    }[kind]
    return f"{prefix}/namespaces/{ns}/{plural}/{name}"


class UnitCosts:
    def __init__(
        self, api: Api, tokens: Api, pids: dict[str, int], namespace: str, count: int, threads: int
    ) -> None:
        self.api = api
        self.tokens = tokens
        self.pids = pids
        self.ns = namespace
        self.count = count
        self.threads = threads
        self.rows: list[dict[str, Any]] = []
        self.bodies: list[dict[str, Any]] = []
        self.tokens_by_name: dict[str, str] = {}

    def measure(self, label: str, fn: Callable[[int], Any], n: int | None = None) -> None:
        n = n or self.count
        before = cpu_seconds(self.pids)
        started = time.monotonic()
        errors = 0

        def run(i: int) -> None:
            nonlocal errors
            try:
                fn(i)
            except ApiError:
                errors += 1

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            list(pool.map(run, range(n)))
        wall = time.monotonic() - started
        after = cpu_seconds(self.pids)
        used = {k: (after[k] - before.get(k, after[k])) * 1000 / n for k in after}
        self.rows.append(
            {
                "request": label,
                "count": n,
                "apiserver_cpu_ms": round(used.get("kube-apiserver", 0.0), 2),
                "etcd_cpu_ms": round(used.get("etcd", 0.0), 2),
                "wall_ms_per_request_at_threads": round(wall * 1000 / n * self.threads, 1),
                "errors": errors,
            }
        )

    def run(self) -> list[dict[str, Any]]:
        api, ns, n = self.api, self.ns, self.count
        api.json(
            "POST",
            "/api/v1/namespaces",
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        )
        created: list[dict[str, Any]] = [{}] * n

        def create_ai(i: int) -> None:
            created[i] = api.json(
                "POST",
                f"{AI}/namespaces/{ns}/appidentities",
                body=identity_body(ns, f"uc-{i}", {"bench.appidentity.dev/unit": "1"}),
            )

        self.measure("POST appidentities (create, CEL-validated)", create_ai)
        identities = [parse_identity(b) for b in created]
        states = [desired_state(i, set(), True) for i in identities]

        def apply_kind(kind: str) -> Callable[[int], None]:
            def go(i: int) -> None:
                obj = next(o for o in states[i].objects if o["kind"] == kind)
                api.request(
                    "PATCH",
                    _path(obj),
                    params={"fieldManager": "appidentity-operator", "force": "true"},
                    body=obj,
                    content_type=APPLY,
                )

            return go

        for kind in ("ServiceAccount", "Role", "RoleBinding"):
            self.measure(f"APPLY {kind} (creates it)", apply_kind(kind))
        for kind in ("ServiceAccount", "Role", "RoleBinding"):
            self.measure(f"APPLY {kind} (no-op: unchanged)", apply_kind(kind))

        def get_sa(i: int) -> None:
            api.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/uc-{i}")

        self.measure("GET serviceaccount", get_sa)
        secrets: list[dict[str, Any]] = [{}] * n

        def apply_secret(i: int) -> None:
            obj = token_secret(identities[i])
            secrets[i] = api.json(
                "PATCH",
                _path(obj),
                params={"fieldManager": "appidentity-operator", "force": "true"},
                body=obj,
                content_type=APPLY,
            )

        self.measure("APPLY Secret (creates it, empty)", apply_secret)

        def token_request(i: int) -> None:
            uid = secrets[i]["metadata"]["uid"]
            issued = api.json(
                "POST",
                f"/api/v1/namespaces/{ns}/serviceaccounts/uc-{i}/token",
                body={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "expirationSeconds": 3600,
                        "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": f"uc-{i}-token", "uid": uid},
                    },
                },
            )  # fmt: skip
            self.tokens_by_name[f"uc-{i}"] = issued["status"]["token"]

        self.measure("POST serviceaccounts/token (TokenRequest, bound)", token_request)

        def get_secret(i: int) -> None:
            api.request("GET", f"/api/v1/namespaces/{ns}/secrets/uc-{i}-token")

        self.measure("GET secret", get_secret)
        selector = "appidentity.dev/identity"

        def list_roles(i: int) -> None:
            api.request(
                "GET",
                "/apis/rbac.authorization.k8s.io/v1/roles",
                params={"labelSelector": f"{selector}={ns}.uc-{i}"},
            )

        self.measure(f"LIST roles, all namespaces, label selector ({n} roles exist)", list_roles)
        plan: Plan = check_plan(ns, "uc-0")
        checks = [*plan.allowed, *plan.denied]

        def ssar(i: int) -> None:
            req = checks[i % len(checks)].request
            attrs = {
                "verb": req.verb,
                "group": req.group,
                "resource": req.resource,
                "subresource": req.subresource,
                "namespace": req.namespace.replace("uc-0", ns) if req.namespace else "",
                "name": req.name,
            }
            self.tokens.request(
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {k: v for k, v in attrs.items() if v}}},
                token=self.tokens_by_name[f"uc-{i % n}"],
            )  # fmt: skip

        self.measure("POST selfsubjectaccessreviews (pooled connections)", ssar, n * 4)

        def ssar_new_conn(i: int) -> None:
            fresh = Api(self.tokens.creds, pool=1, admin=False)
            try:
                fresh.request(
                    "POST",
                    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": ns}}},
                    token=self.tokens_by_name[f"uc-{i % n}"],
                )  # fmt: skip
            finally:
                fresh.close()

        self.measure("POST selfsubjectaccessreviews (new TLS connection each)", ssar_new_conn)

        def ssrr(i: int) -> None:
            self.tokens.request(
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": ns}},
                token=self.tokens_by_name[f"uc-{i % n}"],
            )  # fmt: skip

        self.measure("POST selfsubjectrulesreviews", ssrr)

        def list_cm(i: int) -> None:
            self.tokens.request(
                "GET",
                f"/api/v1/namespaces/{ns}/configmaps",
                params={"limit": "1"},
                token=self.tokens_by_name[f"uc-{i % n}"],
            )

        self.measure("LIST configmaps limit=1 (with the minted token)", list_cm)

        def status_patch(i: int) -> None:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            cond = [
                {"type": t, "status": "True", "reason": "R", "message": "m" * 60, "observedGeneration": 1, "lastTransitionTime": now}
                for t in ("Provisioned", "TokenIssued", "AccessVerified", "Ready")
            ]  # fmt: skip
            api.request(
                "PATCH",
                f"{AI}/namespaces/{ns}/appidentities/uc-{i}/status",
                body={"status": {"observedGeneration": 1, "conditions": cond, "verification": {"checkedAt": now, "allowedChecks": 2, "deniedChecks": 14}}},
                content_type=MERGE,
            )  # fmt: skip

        self.measure("PATCH appidentities/status (merge)", status_patch)

        def meta_patch(i: int) -> None:
            api.request(
                "PATCH",
                f"{AI}/namespaces/{ns}/appidentities/uc-{i}",
                body={"metadata": {"annotations": {"appidentity.dev/last-handled-configuration": '{"spec":{"rules":[]}}' + str(time.time())}}},
                content_type=MERGE,
            )  # fmt: skip

        self.measure("PATCH appidentities metadata (like kopf's annotation)", meta_patch)

        def event(i: int) -> None:
            api.request(
                "POST",
                f"/api/v1/namespaces/{ns}/events",
                body={
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"uc-{i}.{time.time_ns():x}"},
                    "involvedObject": {"apiVersion": "appidentity.dev/v1alpha1", "kind": "AppIdentity", "name": f"uc-{i}", "namespace": ns},
                    "type": "Normal",
                    "reason": "AccessVerified",
                    "message": "identity provisioned, token valid and access verified",
                    "source": {"component": "appidentity-operator"},
                },
            )  # fmt: skip

        self.measure("POST events", event)
        return self.rows


def unit_costs(
    api: Api, tokens: Api, pids: dict[str, int], namespace: str, count: int, threads: int
) -> list[dict[str, Any]]:
    if not pids:
        return []
    try:
        return UnitCosts(api, tokens, pids, namespace, count, threads).run()
    finally:
        api.request("DELETE", f"/api/v1/namespaces/{namespace}", ok=(200, 202, 404))


def model(
    rows: Sequence[dict[str, Any]], per_identity: Sequence[tuple[str, float]]
) -> list[tuple[str, float, float]]:
    """(request kind, count per identity, modelled apiserver CPU ms per identity)."""
    table = {
        "APPLY core/serviceaccounts": "APPLY ServiceAccount (no-op: unchanged)",
        "APPLY rbac.authorization.k8s.io/roles": "APPLY Role (no-op: unchanged)",
        "APPLY rbac.authorization.k8s.io/rolebindings": "APPLY RoleBinding (no-op: unchanged)",
        "APPLY core/secrets": "APPLY Secret (creates it, empty)",
        "GET core/secrets": "GET secret",
        "GET core/serviceaccounts": "GET serviceaccount",
        "GET rbac.authorization.k8s.io/roles": "GET serviceaccount",
        "GET rbac.authorization.k8s.io/rolebindings": "GET serviceaccount",
        "POST core/serviceaccounts/token": "POST serviceaccounts/token (TokenRequest, bound)",
        "POST authorization.k8s.io/selfsubjectaccessreviews": "POST selfsubjectaccessreviews (pooled connections)",
        "POST authorization.k8s.io/selfsubjectrulesreviews": "POST selfsubjectrulesreviews",
        "POST authentication.k8s.io/selfsubjectreviews": "POST selfsubjectaccessreviews (pooled connections)",
        "LIST core/configmaps": "LIST configmaps limit=1 (with the minted token)",
        "LIST core/secrets": "LIST configmaps limit=1 (with the minted token)",
        "PATCH appidentity.dev/appidentities/status": "PATCH appidentities/status (merge)",
        "PATCH appidentity.dev/appidentities": "PATCH appidentities metadata (like kopf's annotation)",
        "POST appidentity.dev/appidentities": "POST appidentities (create, CEL-validated)",
        "POST core/events": "POST events",
    }
    costs = {r["request"]: r["apiserver_cpu_ms"] for r in rows}
    out = []
    for kind, count in per_identity:
        unit = costs.get(table.get(kind, ""))
        if kind.startswith("LIST rbac") and unit is None:
            unit = next((v for k, v in costs.items() if k.startswith("LIST roles")), None)
        if unit is not None:
            out.append((kind, count, round(unit * count, 2)))
    return sorted(out, key=lambda r: -r[2])
