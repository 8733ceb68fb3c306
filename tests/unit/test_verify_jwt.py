"""verify/jwt.py: the token checked like a relying party would, against a JWKS built here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from appidentity.verify.jwt import Binding, JwtResult, key_id, unverified_claims, verify_token
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "https://kubernetes.default.svc.cluster.local"
SUBJECT = "system:serviceaccount:team-a:app"
KID = "key-1"
BAD_SIGNATURE = f"bad signature: it does not verify against the issuer's key '{KID}'"

Mint = Callable[..., str]


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks(private_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))
    return {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}


@pytest.fixture
def mint(private_key: rsa.RSAPrivateKey) -> Mint:
    """Factory: a signed token with Kubernetes-like claims; keyword arguments override or
    (with None) remove claims."""

    def make(key: rsa.RSAPrivateKey | None = None, kid: str = KID, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": SUBJECT,
            "aud": [AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "app"}},
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(claims, key or private_key, algorithm="RS256", headers={"kid": kid})

    return make


def check(token: str, jwks: dict[str, Any], **kwargs: Any) -> JwtResult:
    args: dict[str, Any] = {"issuer": ISSUER, "audiences": [AUDIENCE], "subject": SUBJECT}
    args.update(kwargs)
    result = verify_token(token, jwks, **args)
    assert token not in result.reason
    for part in token.split("."):
        assert part not in result.reason  # not even the signature or the payload
    return result


def test_valid_token_is_verified(mint: Mint, jwks: dict[str, Any]) -> None:
    result = check(mint(), jwks)
    assert result == JwtResult(True, "signature and claims verified", ISSUER, KID)
    assert result.claims["sub"] == SUBJECT


def test_any_of_several_audiences_is_enough(mint: Mint, jwks: dict[str, Any]) -> None:
    token = mint(aud=["vault", AUDIENCE])
    assert check(token, jwks, audiences=[AUDIENCE]).ok is True


def test_exact_audiences_must_all_be_there_and_nothing_else(
    mint: Mint, jwks: dict[str, Any]
) -> None:
    token = mint(aud=["vault", AUDIENCE])
    assert check(token, jwks, audiences=[AUDIENCE, "vault"], exact_audiences=True).ok is True
    result = check(token, jwks, audiences=["vault"], exact_audiences=True)
    assert result.reason == (
        f"wrong audience: the token is for ['{AUDIENCE}', 'vault'], expected exactly ['vault']"
    )


def test_altered_signature_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    token = mint()
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    forged = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    assert check(forged, jwks) == JwtResult(
        False, f"bad signature: it does not verify against the issuer's key '{KID}'", ISSUER, KID
    )


def test_altered_payload_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    header, _, signature = mint().split(".")
    _, other_payload, _ = mint(sub="system:serviceaccount:kube-system:admin").split(".")
    result = check(f"{header}.{other_payload}.{signature}", jwks)
    assert (result.ok, result.reason) == (False, BAD_SIGNATURE)


def test_token_signed_by_another_key_with_the_same_kid_is_refused(
    mint: Mint, jwks: dict[str, Any], other_key: rsa.RSAPrivateKey
) -> None:
    result = check(mint(key=other_key), jwks)
    assert (result.ok, result.reason) == (False, BAD_SIGNATURE)


def test_wrong_issuer_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    result = check(mint(iss="https://evil.example"), jwks)
    assert (result.ok, result.reason) == (
        False,
        f"wrong issuer: iss is 'https://evil.example', expected '{ISSUER}'",
    )


def test_wrong_audience_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    result = check(mint(aud=["vault"]), jwks)
    assert (result.ok, result.reason) == (
        False,
        f"wrong audience: the token is for ['vault'], expected one of ['{AUDIENCE}']",
    )


def test_expired_token_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    past = 1_700_000_000  # 2023-11-14T22:13:20Z
    result = check(mint(iat=past, nbf=past, exp=past + 600), jwks)
    assert (result.ok, result.reason) == (False, "expired: exp is 2023-11-14T22:23:20Z")


def test_expiry_within_the_leeway_is_tolerated(mint: Mint, jwks: dict[str, Any]) -> None:
    now = int(time.time())
    assert check(mint(iat=now - 600, nbf=now - 600, exp=now - 2), jwks).ok is True


def test_token_not_yet_valid_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    future = int(time.time()) + 600
    result = check(mint(nbf=future, iat=future), jwks)
    assert result.ok is False
    assert result.reason.startswith("not yet valid: nbf is ")


@pytest.mark.parametrize("claim", ["nbf", "exp", "aud", "iat", "iss", "sub"])
def test_missing_required_claim_is_refused(mint: Mint, jwks: dict[str, Any], claim: str) -> None:
    result = check(mint(**{claim: None}), jwks)
    assert (result.ok, result.reason) == (
        False,
        f"missing claim: the token has no '{claim}' claim",
    )


def test_wrong_subject_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    result = check(mint(sub="system:serviceaccount:team-a:other"), jwks)
    assert result == JwtResult(
        False,
        "sub is 'system:serviceaccount:team-a:other', expected 'system:serviceaccount:team-a:app'",
        ISSUER,
        KID,
    )


def test_unknown_key_id_is_refused(mint: Mint, jwks: dict[str, Any]) -> None:
    assert check(mint(kid="rotated-away"), jwks) == JwtResult(
        False, "unknown key id 'rotated-away': not in the issuer's JWKS", ISSUER, "rotated-away"
    )


def test_token_that_is_not_a_jwt_is_refused(jwks: dict[str, Any]) -> None:
    assert check("not-a-jwt", jwks) == JwtResult(False, "the token is not a well-formed JWT")


def test_unreadable_jwks_is_reported_by_error_type(mint: Mint) -> None:
    result = check(mint(), {"keys": [{"kty": "nonsense"}]})
    assert (result.ok, result.issuer, result.key_id) == (False, ISSUER, KID)
    assert result.reason.startswith("the JWKS cannot be read: ")


def test_algorithm_comes_from_the_key_not_the_token(mint: Mint, jwks: dict[str, Any]) -> None:
    # an HS256 token "signed" with the public key as shared secret must not pass
    public_jwk = jwks["keys"][0]
    forged = jwt.encode(
        {"iss": ISSUER, "sub": SUBJECT, "aud": [AUDIENCE], "exp": int(time.time()) + 60},
        json.dumps(public_jwk).encode() * 2,
        algorithm="HS256",
        headers={"kid": KID},
    )
    result = check(forged, jwks)
    assert result.ok is False
    assert result.reason == "bad signature: the token's algorithm is not the issuer key's"


# --- binding claims -----------------------------------------------------------------------------


BOUND = {
    "namespace": "team-a",
    "serviceaccount": {"name": "app", "uid": "sa-uid"},
    "secret": {"name": "app-token", "uid": "secret-uid"},
}


def test_token_bound_to_the_identity_s_service_account_and_secret_is_verified(
    mint: Mint, jwks: dict[str, Any]
) -> None:
    result = check(
        mint(**{"kubernetes.io": BOUND}), jwks, binding=Binding("team-a", "app", "app-token")
    )
    assert result.ok is True
    assert result.claims["kubernetes.io"]["secret"]["uid"] == "secret-uid"


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        (Binding("team-b", "app", "app-token"), "namespace 'team-a', expected 'team-b'"),
        (Binding("team-a", "other", "app-token"), "ServiceAccount 'app', expected 'other'"),
        (Binding("team-a", "app", "other-token"), "Secret 'app-token', expected 'other-token'"),
    ],
    ids=["namespace", "service-account", "secret"],
)
def test_token_bound_elsewhere_is_refused(
    mint: Mint, jwks: dict[str, Any], binding: Binding, reason: str
) -> None:
    result = check(mint(**{"kubernetes.io": BOUND}), jwks, binding=binding, subject=None)
    assert (result.ok, result.reason) == (False, f"binding: the token is bound to {reason}")


def test_token_bound_to_no_secret_is_refused_when_a_secret_is_expected(
    mint: Mint, jwks: dict[str, Any]
) -> None:
    result = check(mint(), jwks, binding=Binding("team-a", "app", "app-token"))
    assert result.reason == "binding: the token is bound to Secret None, expected 'app-token'"


# --- Legacy tokens ------------------------------------------------------------------------------


def legacy_claims() -> dict[str, Any]:
    return {
        "iss": "kubernetes/serviceaccount",
        "sub": SUBJECT,
        "kubernetes.io/serviceaccount/namespace": "team-a",
        "kubernetes.io/serviceaccount/service-account.name": "app",
    }


def test_legacy_token_without_exp_or_aud_is_verified(
    private_key: rsa.RSAPrivateKey, jwks: dict[str, Any]
) -> None:
    token = jwt.encode(legacy_claims(), private_key, algorithm="RS256", headers={"kid": KID})
    assert check(token, jwks, legacy=True, audiences=[]) == JwtResult(
        True, "signature and claims verified", "kubernetes/serviceaccount", KID
    )


def test_legacy_mode_ignores_the_discovery_issuer_and_audiences(
    private_key: rsa.RSAPrivateKey, jwks: dict[str, Any]
) -> None:
    token = jwt.encode(legacy_claims(), private_key, algorithm="RS256", headers={"kid": KID})
    result = check(token, jwks, legacy=True, issuer="https://whatever", audiences=["vault"])
    assert (result.ok, result.issuer) == (True, "kubernetes/serviceaccount")


def test_legacy_token_checked_as_bound_is_refused(
    private_key: rsa.RSAPrivateKey, jwks: dict[str, Any]
) -> None:
    token = jwt.encode(legacy_claims(), private_key, algorithm="RS256", headers={"kid": KID})
    assert check(token, jwks).ok is False


def test_legacy_mode_still_checks_the_signature(
    other_key: rsa.RSAPrivateKey, jwks: dict[str, Any]
) -> None:
    token = jwt.encode(legacy_claims(), other_key, algorithm="RS256", headers={"kid": KID})
    result = check(token, jwks, legacy=True)
    assert (result.ok, result.reason) == (False, BAD_SIGNATURE)


def test_legacy_mode_checks_the_subject(
    private_key: rsa.RSAPrivateKey, jwks: dict[str, Any]
) -> None:
    claims = {**legacy_claims(), "sub": "system:serviceaccount:team-a:other"}
    token = jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": KID})
    assert check(token, jwks, legacy=True).ok is False


# --- key_id ------------------------------------------------------------------------------------


def test_key_id_reads_the_header(mint: Mint) -> None:
    assert key_id(mint(kid="abc")) == "abc"


def test_key_id_of_garbage_is_empty() -> None:
    assert key_id("garbage") == ""


def test_unverified_claims_read_the_payload_and_garbage_gives_none(mint: Mint) -> None:
    assert unverified_claims(mint(sub="x"))["sub"] == "x"
    assert unverified_claims("garbage") == {}
