"""Verifies a ServiceAccount token the way a relying party would: against the issuer's
published keys (OpenID discovery + JWKS), with every registered claim checked.

The operator's self-check and `appidentity-operator verify-token` (an external service's side of
the flow) share this code, so both refuse a token for the same reason, in the same words. A
reason never quotes the token, its payload or its signature: only claim names and values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "nbf", "iat"]
# Tokens minted by the token controller for Legacy Secrets: no expiry, no audience.
LEGACY_ISSUER = "kubernetes/serviceaccount"
LEGACY_CLAIMS = ["iss", "sub"]
K8S_CLAIM = (
    "kubernetes.io"  # namespace, serviceaccount {name, uid}, secret {name, uid} of a bound token
)


def key_id(token: str) -> str:
    """The `kid` of a token's header, or "" when the token is not a JWT."""
    try:
        return str(jwt.get_unverified_header(token).get("kid", ""))
    except jwt.PyJWTError:
        return ""


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a token the API server just handed over (a TokenRequest response), read
    without a signature check; {} when it is not a JWT."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return claims
    except jwt.PyJWTError:
        return {}


@dataclass(frozen=True)
class Binding:
    """Whom a bound token must be for: its ServiceAccount and, when bound, its Secret."""

    namespace: str
    service_account: str
    secret: str = ""


@dataclass(frozen=True)
class JwtResult:
    ok: bool
    reason: str
    issuer: str = ""
    key_id: str = ""
    # The verified claims (only when ok): no credential in them, the token is not among them.
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Not verified because the issuer's keys could not be read (the network, an API server
    # restarting): nothing is known about the signature yet, so it is asked again.
    unavailable: bool = False


def _when(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, int | float):
        return "?"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    return [aud] if isinstance(aud, str) else [str(a) for a in aud or []]


def _claim_failure(exc: jwt.PyJWTError, claims: Mapping[str, Any], issuer: str) -> str:
    """A failed claim check said precisely: which claim, what it holds, what was expected."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return f"expired: exp is {_when(claims, 'exp')}"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return f"not yet valid: nbf is {_when(claims, 'nbf')}, iat is {_when(claims, 'iat')}"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim: the token has no {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"wrong issuer: iss is {claims.get('iss')!r}, expected {issuer!r}"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "bad signature: the token's algorithm is not the issuer key's"
    return f"claim check failed: {exc}"


def _binding_failure(claims: Mapping[str, Any], binding: Binding) -> str:
    k8s = claims.get(K8S_CLAIM)
    if not isinstance(k8s, Mapping):
        return f"binding: the token has no {K8S_CLAIM!r} claim"
    sa = k8s.get("serviceaccount") or {}
    secret = k8s.get("secret") or {}
    found = (k8s.get("namespace"), sa.get("name"), secret.get("name") if binding.secret else "")
    want = (binding.namespace, binding.service_account, binding.secret)
    for what, got, expected in zip(
        ("namespace", "ServiceAccount", "Secret"), found, want, strict=True
    ):
        if got != expected:
            return f"binding: the token is bound to {what} {got!r}, expected {expected!r}"
    return ""


def _claims_failure(
    claims: Mapping[str, Any],
    audiences: Sequence[str] | None,
    exact: bool,
    subject: str | None,
    binding: Binding | None,
) -> str | None:
    """What is wrong with verified claims for this relying party: aud (None: not checked, as
    for a legacy token), sub, and the ServiceAccount/Secret binding."""
    if audiences is not None:
        got = _audiences(claims)
        fits = set(got) == set(audiences) if exact else bool(set(got) & set(audiences))
        if not fits:
            expected = "exactly" if exact else "one of"
            return (
                f"wrong audience: the token is for {sorted(got)}, expected {expected} "
                f"{sorted(audiences)}"
            )
    if subject is not None and claims.get("sub") != subject:
        return f"sub is {claims.get('sub')!r}, expected {subject!r}"
    return _binding_failure(claims, binding) if binding is not None else None


def verify_token(
    token: str,
    jwks: Mapping[str, Any],
    issuer: str,
    audiences: Sequence[str],
    subject: str | None,
    legacy: bool = False,
    leeway_seconds: int = 5,
    exact_audiences: bool = False,
    binding: Binding | None = None,
) -> JwtResult:
    """Checks the signature against the key the token names, then iss, aud, exp, nbf, iat and
    sub, then (when given) the ServiceAccount/Secret binding claims.

    `audiences`: with `exact_audiences`, the token's `aud` must be exactly these (the operator
    checking the token it asked for); otherwise one of them is enough (a relying party checking
    that the token is meant for it). `subject` None: any ServiceAccount."""
    if legacy:
        issuer, audiences = LEGACY_ISSUER, ()
    try:
        header = jwt.get_unverified_header(token)
        unverified: Mapping[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return JwtResult(False, "the token is not a well-formed JWT")
    kid = str(header.get("kid", ""))
    try:
        keys = jwt.PyJWKSet.from_dict(dict(jwks))
    except jwt.PyJWTError as exc:
        return JwtResult(False, f"the JWKS cannot be read: {type(exc).__name__}", issuer, kid)
    key = next((k for k in keys.keys if k.key_id == kid), None)
    if key is None:
        return JwtResult(False, f"unknown key id {kid!r}: not in the issuer's JWKS", issuer, kid)
    algorithm = key.algorithm_name or str(header.get("alg", ""))
    try:
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[algorithm],
            issuer=issuer,
            leeway=leeway_seconds,
            options={
                "require": LEGACY_CLAIMS if legacy else REQUIRED_CLAIMS,
                "verify_aud": False,  # checked below, with a message that names both sides
            },
        )
    except jwt.InvalidSignatureError:
        return JwtResult(
            False,
            f"bad signature: it does not verify against the issuer's key {kid!r}",
            issuer,
            kid,
        )
    except jwt.PyJWTError as exc:
        return JwtResult(False, _claim_failure(exc, unverified, issuer), issuer, kid)
    failure = _claims_failure(
        claims, None if legacy else audiences, exact_audiences, subject, binding
    )
    if failure:
        return JwtResult(False, failure, issuer, kid)
    return JwtResult(True, "signature and claims verified", issuer, kid, claims)
