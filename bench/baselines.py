"""The two baselines the operator is compared with, on the same control plane:

(a) manual: what a user scripts today with kubectl, one identity after another:
    create serviceaccount, create token, create role, create rolebinding, and
    `auth can-i --token=...` for each granted verb;
(b) direct: the same objects, token and self-checks made by a plain Python client (no operator
    framework, no status, no Events), identities handled concurrently by a thread pool. This is
    the lower bound of what any controller needs for the same work on this machine.
"""

from __future__ import annotations

import base64
import math
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from apiclient import Api, ApiError, Key, summarize
from appidentity.kube.rest import PROBE_NAME
from appidentity.model import parse_identity
from appidentity.rbac import Request
from appidentity.verify.decide import Answer, RulesAnswer, answered, split
from appidentity.verify.plan import Check, Plan, build_plan
from procs import KUBECTL

RULE = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
DENIED = Answer(False)  # what the rules review says of a grant RBAC has not taken in yet
TOKEN_SECONDS = 3600
RBAC_RETRIES = 20  # RBAC reaches the authorizer's cache a moment after the write
RBAC_RETRY_DELAY = 0.1


def identity_body(namespace: str, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The AppIdentity every phase uses: one namespaced rule, get/list on ConfigMaps."""
    return {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"rules": [RULE]},
    }


def _read(api: Api, req: Request, token: str, ok: tuple[int, ...]) -> None:
    """The read the operator makes for real (kube/rest.try_read): a get of the object (or of the
    probe name), else a list with limit=1; core group only (the benchmark's grant is ConfigMaps)."""
    path = f"/api/v1/namespaces/{req.namespace}/{req.resource}"
    if req.verb == "get":
        api.request("GET", f"{path}/{req.name or PROBE_NAME}", token=token, ok=ok)
    else:
        api.request("GET", path, params={"limit": "1"}, token=token, ok=ok)


def check_plan(namespace: str, name: str) -> Plan:
    """The operator's own list of questions for this spec (pure code, no framework), so the
    lower bound proves exactly what the operator proves."""
    body = identity_body(namespace, name, {})
    body["metadata"]["generation"] = 1
    return build_plan(parse_identity(body), set(), {})


@dataclass
class BaselineResult:
    name: str
    identities: int
    wall_seconds: float
    per_identity_seconds: list[float] = field(default_factory=list)
    # From the moment the identity's work could start until it was done: all identities are
    # handed to the pool at once, so from the run's start (the operator's latency is counted
    # from each create call's return, which is how its work can start).
    latency_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    requests: dict[str, float] = field(default_factory=dict)  # per identity, own count
    retries: int = 0
    workers: int = 1
    notes: str = ""

    @property
    def throughput(self) -> float:
        ok = self.identities - len(self.failures)
        return ok / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        per = self.per_identity_seconds
        return {
            "identities": self.identities,
            "workers": self.workers,
            "wall_seconds": round(self.wall_seconds, 3),
            "throughput_per_second": round(self.throughput, 3),
            "per_identity_seconds": {
                "mean": round(statistics.fmean(per), 3) if per else None,
                "max": round(max(per), 3) if per else None,
            },
            "latency_seconds": {
                **{f"p{p}": _round(percentile(self.latency_seconds, p)) for p in (50, 95, 99)},
                "max": _round(max(self.latency_seconds)) if self.latency_seconds else None,
                "definition": "from the run's start (all identities handed to the pool at "
                "once) until that identity's last check returned",
            },
            "requests_per_identity": {k: round(v, 2) for k, v in self.requests.items()},
            "rbac_retries": self.retries,
            "failures": self.failures[:20],
            "failure_count": len(self.failures),
            "notes": self.notes,
        }


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100): the smallest value with p% at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- (a) kubectl, one after another ----------------------------------------------------------


def tokenless_kubeconfig(path: Path, server: str, ca_file: str) -> Path:
    """A kubeconfig with the cluster only: `kubectl --token` with the admin kubeconfig would
    also present the admin client certificate, and the API server authenticates the
    certificate first, so `auth can-i` would answer for the admin."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: c\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca_file}\n"
        "users:\n- name: u\n  user: {}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
    )
    path.chmod(0o600)
    return path


def _kubectl(kubeconfig: Path | str, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def manual_flow(
    admin_kubeconfig: str,
    tokenless: Path,
    cache: Path,
    targets: Sequence[tuple[str, str]],
    verbs: Sequence[str] = ("get", "list"),
) -> BaselineResult:
    """Sequential kubectl calls, as a user's shell script makes them."""
    per: list[float] = []
    failures: list[str] = []
    calls = 0
    retries = 0
    started = time.monotonic()
    for ns, name in targets:
        t0 = time.monotonic()
        steps: list[list[str]] = [
            ["create", "serviceaccount", name, "-n", ns],
            ["create", "token", name, "-n", ns, f"--duration={TOKEN_SECONDS}s"],
            [
                "create",
                "role",
                name,
                "-n",
                ns,
                f"--verb={','.join(verbs)}",
                "--resource=configmaps",
            ],
            [
                "create",
                "rolebinding",
                name,
                "-n",
                ns,
                f"--role={name}",
                f"--serviceaccount={ns}:{name}",
            ],
        ]
        token = ""
        failed = ""
        for step in steps:
            done = _kubectl(admin_kubeconfig, cache, *step)
            calls += 1
            if done.returncode != 0:
                failed = f"{ns}/{name}: kubectl {step[0]} {step[1]}: {done.stderr.strip()[:200]}"
                break
            if step[1] == "token":
                token = done.stdout.strip()
        if not failed:
            for verb in verbs:
                # A script that checks right after creating the binding can meet RBAC
                # propagation lag; it asks again, like any careful script would.
                for attempt in range(5):
                    done = _kubectl(
                        tokenless, cache, "auth", "can-i", verb, "configmaps", "-n", ns,
                        f"--token={token}",
                    )  # fmt: skip
                    calls += 1
                    if done.stdout.strip() == "yes":
                        break
                    retries += 1
                    time.sleep(0.2 * (attempt + 1))
                else:
                    failed = f"{ns}/{name}: can-i {verb} configmaps said {done.stdout.strip()!r}"
        if failed:
            failures.append(failed)
        per.append(time.monotonic() - t0)
    wall = time.monotonic() - started
    n = max(1, len(targets))
    return BaselineResult(
        name="manual-kubectl",
        identities=len(targets),
        wall_seconds=wall,
        per_identity_seconds=per,
        failures=failures,
        requests={"kubectl_invocations": calls / n},
        retries=retries,
        notes="one kubectl process per step; API requests include kubectl's discovery",
    )


# --- (b) a plain client, concurrently --------------------------------------------------------


class Direct:
    """Provision + mint + self-check for one identity with plain HTTP calls."""

    def __init__(self, admin: Api, tokens: Api, issuer: str, jwks: Mapping[str, Any]) -> None:
        self.admin = admin
        self.tokens = tokens
        self.issuer = issuer
        self.keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(dict(jwks)).keys}
        self.retries = 0
        self._lock = threading.Lock()

    def one(self, ns: str, name: str) -> float:
        t0 = time.monotonic()
        a = self.admin
        core = f"/api/v1/namespaces/{ns}"
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
        a.json(
            "POST",
            f"{core}/serviceaccounts",
            body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}, "automountServiceAccountToken": False},
        )  # fmt: skip
        secret = a.json(
            "POST",
            f"{core}/secrets",
            body={"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": f"{name}-token"}},
        )  # fmt: skip
        a.json(
            "POST",
            f"{rbac}/roles",
            body={"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name}, "rules": [RULE]},
        )  # fmt: skip
        a.json(
            "POST",
            f"{rbac}/rolebindings",
            body={
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            },
        )
        issued = a.json(
            "POST",
            f"{core}/serviceaccounts/{name}/token",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": TOKEN_SECONDS,
                    "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": f"{name}-token", "uid": secret["metadata"]["uid"]},
                },
            },
        )  # fmt: skip
        token = issued["status"]["token"]
        a.json(
            "PATCH",
            f"{core}/secrets/{name}-token",
            body={"data": {"token": base64.b64encode(token.encode()).decode()}},
            content_type="application/merge-patch+json",
        )
        self.verify(ns, name, token)
        return time.monotonic() - t0

    def _review(self, token: str, spec: dict[str, Any]) -> bool:
        review = self.tokens.json(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec},
            token=token,
        )  # fmt: skip
        return bool(review.get("status", {}).get("allowed"))

    def _rules(self, token: str, ns: str) -> RulesAnswer:
        review = self.tokens.json(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": ns}},
            token=token,
        )["status"]  # fmt: skip
        rules = [*review.get("resourceRules", []), *review.get("nonResourceRules", [])]
        return RulesAnswer(rules, not (review.get("incomplete") or review.get("evaluationError")))

    def _ask(self, token: str, ns: str, name: str, check: Check) -> None:
        r = check.request
        attrs = {
            "verb": r.verb,
            "group": r.group,
            "resource": r.resource,
            "subresource": r.subresource,
            "namespace": r.namespace,
            "name": r.name,
        }
        spec = {"resourceAttributes": {k: v for k, v in attrs.items() if v}}
        got = self._review(token, spec)
        attempt = 0
        while got != check.allowed and check.allowed and attempt < RBAC_RETRIES:
            with self._lock:
                self.retries += 1
            time.sleep(RBAC_RETRY_DELAY)
            got = self._review(token, spec)
            attempt += 1
        if got != check.allowed:
            raise AssertionError(f"{ns}/{name}: {r} expected allowed={check.allowed}")

    def verify(self, ns: str, name: str, token: str) -> None:
        t = self.tokens
        who = t.json(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            token=token,
        )
        subject = f"system:serviceaccount:{ns}:{name}"
        if who.get("status", {}).get("userInfo", {}).get("username") != subject:
            raise AssertionError(f"{ns}/{name}: token authenticates as someone else")
        plan = check_plan(ns, name)
        answer = self._rules(token, ns)
        attempt = 0  # the Role and RoleBinding reach the authorizer a moment after they are written
        while any(answered(c.request, {ns: answer}) == DENIED for c in plan.allowed):
            if attempt == RBAC_RETRIES:
                raise AssertionError(f"{ns}/{name}: the grant is not in the token's rules")
            with self._lock:
                self.retries += 1
            time.sleep(RBAC_RETRY_DELAY)
            answer, attempt = self._rules(token, ns), attempt + 1
        for req in plan.real_reads:
            _read(t, req, token, ok=(200, 404))
        refused = []
        if plan.real_denied is not None:
            _read(t, plan.real_denied.request, token, ok=(403,))
            refused.append(plan.real_denied.request)
        # The operator's own decision (verify/decide.py): what the rules review and the refusal
        # answer is not asked again; the rest is one SelfSubjectAccessReview each.
        checks = [c for c in [*plan.allowed, *plan.denied] if c != plan.real_denied]
        settled, asked = split(checks, {ns: answer}, refused)
        for check, got in settled:
            if got.allowed != check.allowed:
                raise AssertionError(
                    f"{ns}/{name}: {check.request} expected allowed={check.allowed}"
                )
        for check in asked:
            self._ask(token, ns, name, check)
        kid = jwt.get_unverified_header(token).get("kid", "")
        key = self.keys[kid]
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[key.algorithm_name or "RS256"],
            issuer=self.issuer,
            audience=self.issuer,
            options={"require": ["iss", "sub", "aud", "exp", "nbf", "iat"]},
        )
        if claims.get("sub") != subject:
            raise AssertionError(f"{ns}/{name}: sub is {claims.get('sub')}")


def direct_flow(
    admin: Api, tokens: Api, targets: Sequence[tuple[str, str]], workers: int
) -> BaselineResult:
    discovery = admin.json("GET", "/.well-known/openid-configuration")
    jwks = admin.json("GET", "/openid/v1/jwks", accept="application/jwk-set+json")
    direct = Direct(admin, tokens, str(discovery["issuer"]), jwks)
    before: dict[Key, float] = dict(admin.counts)
    before_t: dict[Key, float] = dict(tokens.counts)
    failures: list[str] = []
    per: list[float] = []
    latency: list[float] = []

    def run(target: tuple[str, str]) -> None:
        try:
            per.append(direct.one(*target))
            latency.append(time.monotonic() - started)
        except (ApiError, AssertionError, KeyError, jwt.PyJWTError) as exc:
            failures.append(f"{target[0]}/{target[1]}: {exc}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, targets))
    wall = time.monotonic() - started
    own: dict[Key, float] = {}
    for api, base in ((admin, before), (tokens, before_t)):
        for k, v in api.counts.items():
            d = v - base.get(k, 0)
            if d:
                own[k] = own.get(k, 0) + d
    n = max(1, len(targets))
    return BaselineResult(
        name="direct-client",
        identities=len(targets),
        wall_seconds=wall,
        per_identity_seconds=per,
        latency_seconds=latency,
        failures=failures,
        requests={k: v / n for k, v in summarize(own).items()},
        retries=direct.retries,
        workers=workers,
        notes="same objects, bound token, SelfSubjectReview, the operator's SSAR plan, "
        "real reads, SelfSubjectRulesReview and JWT check; no status, no Events",
    )
