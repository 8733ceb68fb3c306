"""Runs a Plan with a client built from the minted token alone and reports what it found.

No admin credentials and no impersonation take part in the answers: every review below is a
*self* review, asked by the token about itself, so it shows what the token really can do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..kube import ApiError, Http, Kube
from ..model import Identity
from ..rbac import Request, RuleDict, covered, excess, requests_of, rules_hash
from .baseline import Baseline
from .decide import Answer, RulesAnswer, split
from .jwt import K8S_CLAIM, Binding, JwtResult, key_id, unverified_claims, verify_token
from .plan import Check, Plan

# Access reviews of all identities share one small pool: a pool per verification cost more
# in thread start-up than the reviews' own work.
REVIEWS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="review")
FACTS_TTL = 600.0
VERSIONS_RETRY = 5.0  # a grant for an API the cluster does not serve re-reads this often
PROBE_SECONDS = 600  # the shortest lifetime the API server grants a TokenRequest
RULES_REVIEW = "SelfSubjectRulesReview"


@dataclass(frozen=True)
class CheckResult:
    request: Request
    expected_allowed: bool
    got_allowed: bool
    via: str  # SelfSubjectAccessReview | request | SelfSubjectRulesReview (RULES_REVIEW)
    source: str
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.expected_allowed == self.got_allowed

    def as_failure(self) -> dict[str, str]:
        r = self.request
        return {
            "verb": r.verb,
            "group": r.group,
            "resource": r.resource or r.url,
            "subresource": r.subresource,
            "namespace": r.namespace,
            "name": r.name,
            "expected": "allowed" if self.expected_allowed else "denied",
            "got": "allowed" if self.got_allowed else "denied",
            "via": self.via,
            "reason": self.reason or self.source,
        }


@dataclass
class Verification:
    authenticated_as: str = ""
    results: list[CheckResult] = field(default_factory=list)
    excess: list[dict[str, Any]] = field(default_factory=list)
    rules_hash: str = ""
    incomplete: bool = False
    jwt: JwtResult = field(default_factory=lambda: JwtResult(False, "not checked"))
    error: str = ""  # the token itself was refused, or the check could not run
    probed: bool = False  # the rights were asked with a probe token (a token for other audiences)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def passed_count(self, allowed: bool) -> int:
        return sum(1 for r in self.results if r.passed and r.expected_allowed == allowed)


class ClusterFacts:
    """What every verification of the process shares and the cluster rarely changes: the
    issuer's discovery document and keys, and the API groups' preferred versions. Each is read
    again when older than `ttl`, or sooner when it cannot answer (a token names a key id that is
    not in the cached keys; a grant names an API group the cached discovery does not have)."""

    def __init__(self, ttl: float = FACTS_TTL) -> None:
        self._lock = threading.Lock()
        self._ttl = ttl
        self._values: dict[str, tuple[float, Any]] = {}

    def _get(
        self,
        name: str,
        fetch: Callable[[], Any],
        answers: Callable[[Any], bool],
        retry_after: float = 0.0,
    ) -> Any:
        """The cached value, fetched anew when older than the ttl, or when it does not answer
        and is at least `retry_after` seconds old."""
        with self._lock:
            now = time.monotonic()
            fetched, value = self._values.get(name, (0.0, None))
            age = now - fetched
            if value is None or age >= self._ttl or (age >= retry_after and not answers(value)):
                value = fetch()
                self._values[name] = (now, value)
            return value

    def openid(self, http: Http, kid: str) -> tuple[str, dict[str, Any]]:
        """(issuer, JWKS), holding the key `kid` unless the API server does not publish it."""
        value: tuple[str, dict[str, Any]] = self._get(
            "openid", http.openid, lambda v: any(k.get("kid") == kid for k in v[1].get("keys", []))
        )
        return value

    def versions(self, http: Http, groups: set[str]) -> dict[str, str]:
        """API group -> preferred group/version, holding `groups` unless the cluster lacks one."""
        value: dict[str, str] = self._get(
            "versions", http.preferred_versions, lambda v: groups <= v.keys(), VERSIONS_RETRY
        )
        return value


def _ask(http: Http, check: Check) -> CheckResult:
    allowed, reason = http.access_review(check.request)
    return CheckResult(
        check.request, check.allowed, allowed, "SelfSubjectAccessReview", check.source, reason
    )


def _settled(check: Check, answer: Answer) -> CheckResult:
    """A check the rules reviews answered, or a refusal for real of the same request in a
    namespace: then no ClusterRoleBinding allows it (decide.py)."""
    if answer.refused_in:
        why = f"refused for real in {answer.refused_in}, so no ClusterRoleBinding allows it"
        return CheckResult(check.request, check.allowed, False, "request", check.source, why)
    return CheckResult(check.request, check.allowed, answer.allowed, RULES_REVIEW, check.source)


def _real_requests(http: Http, plan: Plan, facts: ClusterFacts) -> list[CheckResult]:
    """The grant's reads made for real, and one boundary check tried for real (its result is
    that check's: 403 proves it denied)."""
    wanted = [Check(r, True, "real request") for r in plan.real_reads]
    wanted += [plan.real_denied] if plan.real_denied else []
    if not wanted:
        return []
    versions = facts.versions(http, {c.request.group for c in wanted})

    def attempt(check: Check) -> CheckResult:
        req = check.request
        code = http.try_read(req, versions[req.group])
        if code == 0 or code >= 500:
            # No verdict: e.g. an authorizer webhook that failed makes a refusal a 500.
            raise ApiError(code, "NoAnswer", f"the real request {req.describe()} got HTTP {code}")
        got = code not in (401, 403)  # 404 on a get by name is authorized, just absent
        return CheckResult(req, check.allowed, got, "request", check.source, f"HTTP {code}")

    # A grant for an API the cluster does not serve has nothing to read.
    return list(REVIEWS.map(attempt, [c for c in wanted if c.request.group in versions]))


def _grant_coverage(plan: Plan, effective: Sequence[RuleDict], namespace: str) -> list[CheckResult]:
    """Every concrete request the grant names must be in the effective rules: this proves whole
    ClusterRoles (e.g. `view`) without one access review per resource."""
    out = []
    for rule in plan.grants.get(namespace, []):
        for req in requests_of(rule, namespace):
            if "*" in (req.verb, req.group, req.resource):
                continue
            if not covered(effective, req):
                out.append(
                    CheckResult(
                        req,
                        True,
                        False,
                        RULES_REVIEW,
                        "grant coverage",
                        "granted but not in the token's effective rules",
                    )
                )
    return out


def check_access(
    http: Http, identity: Identity, plan: Plan, baseline: Baseline, facts: ClusterFacts
) -> Verification:
    """Everything the token `http` carries is asked about itself: who it is, its effective rules
    in each granted namespace, each grant and the boundary (answered by those rules where they
    are complete, by an access review or a real request otherwise: `decide`), and the effective
    rules beyond grant and baseline."""
    out = Verification()
    try:
        out.authenticated_as = http.whoami()
    except ApiError as exc:
        if exc.status not in (401, 403):
            raise  # the API server did not answer about the token: asked again, not a verdict
        out.error = f"the token was refused: HTTP {exc.status} {exc.reason}"
        return out
    if out.authenticated_as != identity.subject:
        out.error = f"the token authenticates as {out.authenticated_as!r}, not {identity.subject!r}"
        return out
    reviews = rules_reviews(http, plan.namespaces)
    out.incomplete = any(not answer.complete for answer in reviews.values())
    real = _real_requests(http, plan, facts)
    tried = any(not r.expected_allowed for r in real)  # plan.real_denied, answered for real
    refused = [r.request for r in real if not r.got_allowed]
    checks = [c for c in [*plan.allowed, *plan.denied] if not (tried and c == plan.real_denied)]
    settled, asked = split(checks, reviews, refused)
    out.results = [_settled(c, answer) for c, answer in settled]
    out.results += list(REVIEWS.map(lambda c: _ask(http, c), asked))
    out.results += real
    for ns, answer in reviews.items():
        granted = [*plan.grants[ns], *plan.grants.get("", [])]
        found = excess(answer.rules, [*granted, *baseline(ns)], ns)
        if found:  # the baseline may have grown since it was read (a default binding added)
            found = excess(answer.rules, [*granted, *baseline(ns, max_age=BASELINE_RECHECK)], ns)
        out.excess += found
        out.results += _grant_coverage(plan, answer.rules, ns)
    out.rules_hash = reviews_hash(reviews)
    return out


BASELINE_RECHECK = 10.0  # seconds: a baseline older than this is read again before excess counts


def rules_reviews(http: Http, namespaces: Sequence[str]) -> dict[str, RulesAnswer]:
    """namespace -> the token's effective rules there, and whether the list is complete."""
    answers = {}
    for ns in namespaces:
        found, partial = http.rules_review(ns)
        answers[ns] = RulesAnswer(list(found), not partial)
    return answers


def reviews_hash(reviews: Mapping[str, RulesAnswer]) -> str:
    """The effective rules' hash (status.verification.rulesHash) the re-checks compare."""
    return rules_hash({ns: answer.rules for ns, answer in reviews.items()})


def rules_unchanged(http: Http, namespaces: Sequence[str], expected_hash: str) -> bool:
    """The cheap re-check: the token still authenticates and its effective rules hash as they
    did at the last full proof (one SelfSubjectRulesReview per namespace). False for a dead
    token (401: e.g. its Secret was deleted); other API errors are raised."""
    try:
        return reviews_hash(rules_reviews(http, namespaces)) == expected_hash
    except ApiError as exc:
        if exc.status != 401:
            raise
        return False


def check_jwt(
    http: Http,
    identity: Identity,
    token: str,
    audiences: Sequence[str],
    facts: ClusterFacts,
    binding: Binding | None = None,
) -> JwtResult:
    """The token against the issuer's discovery document and keys (read through `http`), its
    `aud` exactly the audiences it was minted for."""
    try:
        issuer, jwks = facts.openid(http, key_id(token))
    except ApiError as exc:
        return JwtResult(False, f"could not read the issuer's keys: {exc}", unavailable=True)
    legacy = identity.spec.token.type == "Legacy"
    return verify_token(
        token,
        jwks,
        issuer,
        audiences,
        identity.subject,
        legacy=legacy,
        exact_audiences=True,
        binding=binding,
    )


def for_api_server(audiences: Sequence[str], api_audiences: Sequence[str]) -> bool:
    """Whether the API server accepts a token minted for `audiences` (none: its own default)."""
    return not audiences or bool(set(audiences) & set(api_audiences))


def verify(
    kube: Kube,
    identity: Identity,
    plan: Plan,
    token: str,
    audiences: Sequence[str],
    baseline: Baseline,
    facts: ClusterFacts,
) -> Verification:
    """The self-check. A token the API server accepts is asked about itself. A token for other
    audiences only (Vault, a cloud's workload identity federation) is never sent to the API
    server, which would refuse it anyway: it is verified offline (`_external_probe`) and the
    ServiceAccount's rights are asked with a probe token."""
    if for_api_server(audiences, baseline.api_audiences()):
        http = kube.token_client(token)
        out = check_access(http, identity, plan, baseline, facts)
        if not out.error:
            out.jwt = check_jwt(http, identity, token, audiences, facts)
        return out
    jwt_result, probe, error = _external_probe(kube, identity, token, audiences, facts)
    if probe is None:
        return Verification(jwt=jwt_result, error=error)
    out = check_access(probe, identity, plan, baseline, facts)
    out.jwt, out.probed = jwt_result, True
    return out


def _external_probe(
    kube: Kube, identity: Identity, token: str, audiences: Sequence[str], facts: ClusterFacts
) -> tuple[JwtResult, Http | None, str]:
    """(the token verified offline, a client with a probe token or None, why not).

    Offline, as its relying party would: signature against the issuer's JWKS (read with the
    operator's own credentials), iss, sub, aud exactly as asked, exp, nbf, and the binding to
    the identity's namespace, ServiceAccount and Secret. The probe token has the API server's
    audience and the shortest lifetime a TokenRequest allows, and is bound to the Secret the
    verified token names, so the API server confirms that Secret (and with it the token) still
    exists. It lives in the returned client only: never stored, never logged."""
    binding = Binding(identity.namespace, identity.service_account, identity.secret_name)
    jwt_result = check_jwt(kube, identity, token, audiences, facts, binding)
    if not jwt_result.ok:
        return jwt_result, None, ""
    bound = jwt_result.claims[K8S_CLAIM]
    try:
        issued = kube.request_token(
            identity.namespace,
            identity.service_account,
            PROBE_SECONDS,
            [],
            bound_secret=(identity.secret_name, str(bound["secret"]["uid"])),
        )
    except ApiError as exc:
        why = f"no probe token for the ServiceAccount bound to this token's Secret: {exc}"
        return jwt_result, None, why
    probe = issued["status"]["token"]
    probe_sa = (unverified_claims(probe).get(K8S_CLAIM) or {}).get("serviceaccount") or {}
    if probe_sa.get("uid") != bound["serviceaccount"].get("uid"):
        why = "the token's ServiceAccount was replaced since it was minted: the token is dead"
        return jwt_result, None, why
    return jwt_result, kube.token_client(probe), ""
