"""Verifies a ServiceAccount token the way a relying party would: against the issuer's
published keys (OpenID discovery + JWKS), with every registered claim checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "nbf", "iat"]
# Tokens minted by the token controller for Legacy Secrets: no expiry, no audience.
LEGACY_ISSUER = "kubernetes/serviceaccount"
LEGACY_CLAIMS = ["iss", "sub"]


def key_id(token: str) -> str:
    """The `kid` of a token's header, or "" when the token is not a JWT."""
    try:
        return str(jwt.get_unverified_header(token).get("kid", ""))
    except jwt.PyJWTError:
        return ""


@dataclass(frozen=True)
class JwtResult:
    ok: bool
    reason: str
    issuer: str = ""
    key_id: str = ""


def verify_token(
    token: str,
    jwks: Mapping[str, Any],
    issuer: str,
    audiences: Sequence[str],
    subject: str,
    legacy: bool = False,
    leeway_seconds: int = 5,
) -> JwtResult:
    """The outcome never quotes the token or its signature, only claim names and key ids."""
    if legacy:
        issuer, audiences = LEGACY_ISSUER, ()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return JwtResult(False, "the token is not a well-formed JWT")
    kid = str(header.get("kid", ""))
    try:
        keys = jwt.PyJWKSet.from_dict(dict(jwks))
    except jwt.PyJWTError as exc:
        return JwtResult(False, f"the JWKS cannot be read: {type(exc).__name__}", issuer, kid)
    key = next((k for k in keys.keys if k.key_id == kid), None)
    if key is None:
        return JwtResult(False, f"no key with id {kid!r} in the issuer's JWKS", issuer, kid)
    algorithm = key.algorithm_name or str(header.get("alg", ""))
    try:
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[algorithm],
            audience=list(audiences) or None,
            issuer=issuer,
            leeway=leeway_seconds,
            options={
                "require": LEGACY_CLAIMS if legacy else REQUIRED_CLAIMS,
                "verify_aud": not legacy,
            },
        )
    except jwt.InvalidSignatureError:
        return JwtResult(
            False, "the signature does not verify against the issuer's key", issuer, kid
        )
    except jwt.PyJWTError as exc:
        # PyJWT's messages name the claim ("Signature has expired", "Invalid audience"...)
        # and never echo the token.
        return JwtResult(False, f"claim check failed: {exc}", issuer, kid)
    if claims.get("sub") != subject:
        return JwtResult(False, f"sub is {claims.get('sub')!r}, expected {subject!r}", issuer, kid)
    return JwtResult(True, "signature and claims verified", issuer, kid)
