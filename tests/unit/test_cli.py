"""The command line without a cluster: `render` for GitOps review, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"}  # proves no cluster is used
    return subprocess.run(
        [sys.executable, "-m", "appidentity", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        input=stdin,
        env=env,
        timeout=60,
    )


def test_render_prints_every_object_of_an_example_without_a_cluster() -> None:
    out = cli("render", "-f", "examples/cross-namespace.yaml")
    assert out.returncode == 0, out.stderr
    objects = list(yaml.safe_load_all(out.stdout))
    kinds = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert kinds == [
        ("ServiceAccount", "team-a", "report-reader"),
        ("Secret", "team-a", "report-reader-token"),
        ("Role", "team-a", "report-reader"),
        ("RoleBinding", "team-a", "report-reader"),
        ("Role", "team-b", "team-a.report-reader"),
        ("RoleBinding", "team-b", "team-a.report-reader"),
    ]
    secret = objects[1]
    assert "data" not in secret  # the token is minted in the cluster, never rendered


def test_render_is_deterministic() -> None:
    first = cli("render", "-f", "examples/config-writer.yaml")
    second = cli("render", "-f", "examples/config-writer.yaml")
    assert first.returncode == 0
    assert first.stdout == second.stdout


def test_render_names_the_bad_field_and_fails() -> None:
    bad = yaml.safe_dump(
        {
            "apiVersion": "appidentity.dev/v1alpha1",
            "kind": "AppIdentity",
            "metadata": {"name": "x", "namespace": "a"},
            "spec": {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}]},
        }
    )
    out = cli("render", "-f", "-", stdin=bad)
    assert out.returncode == 1
    assert "error: a/x: spec.rules[0].verbs:" in out.stderr


def test_render_with_policy_reports_violations() -> None:
    wild = yaml.safe_dump(
        {
            "apiVersion": "appidentity.dev/v1alpha1",
            "kind": "AppIdentity",
            "metadata": {"name": "x", "namespace": "a"},
            "spec": {"rules": [{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}]},
        }
    )
    out = cli("render", "-f", "-", "--policy", "tests/policy.yaml", stdin=wild)
    assert out.returncode == 1
    assert (
        "spec.rules[0].apiGroups: wildcards are not allowed (policy: allowWildcards)" in out.stderr
    )


def test_run_refuses_an_invalid_policy_file_before_connecting(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("allowedClusterRoles: view\nnoSuchKey: 1\n")
    out = cli("run", "--policy", str(policy))
    assert out.returncode == 2
    assert "policy file" in out.stderr and "noSuchKey" in out.stderr


def test_unknown_command_exits_with_usage() -> None:
    out = cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


# --- verify-token, fully offline (a JWKS file), as an external service runs it -----------------

ISSUER = "https://issuer.example"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_file(signing_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    jwk = json.loads(RSAAlgorithm.to_jwk(signing_key.public_key()))
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return path


def sa_token(key: rsa.RSAPrivateKey, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:team-a:vault-client",
        "aud": ["vault"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "vault-client"}},
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def verify_cli(token: str, jwks: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    out = cli("verify-token", "--jwks", str(jwks), "--issuer", ISSUER, *extra, stdin=token)
    for part in token.split("."):
        assert part not in out.stdout + out.stderr  # not the token, nor any part of it
    return out


def test_verify_token_prints_the_verified_claims_of_a_valid_token(
    signing_key: rsa.RSAPrivateKey, jwks_file: Path
) -> None:
    out = verify_cli(sa_token(signing_key), jwks_file, "--audience", "vault")
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["valid"] is True and printed["keyID"] == "k1"
    assert printed["claims"]["sub"] == "system:serviceaccount:team-a:vault-client"
    assert printed["claims"]["aud"] == ["vault"]
    assert printed["times"]["exp"].endswith("+00:00")


def test_verify_token_reads_a_token_file_and_checks_the_subject(
    signing_key: rsa.RSAPrivateKey, jwks_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text(sa_token(signing_key) + "\n")
    args = ["--jwks", str(jwks_file), "--issuer", ISSUER, "-a", "vault", "-f", str(path)]
    assert cli("verify-token", *args).returncode == 0
    other = cli("verify-token", *args, "--subject", "system:serviceaccount:team-a:other")
    assert other.returncode == 1
    assert "invalid: sub is 'system:serviceaccount:team-a:vault-client'" in other.stderr


def flip_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"


@pytest.mark.parametrize(
    ("make", "audience", "reason"),
    [
        (
            lambda k: flip_signature(sa_token(k)),
            "vault",
            "invalid: bad signature: it does not verify against the issuer's key 'k1'",
        ),
        (
            lambda k: sa_token(k),
            "billing",
            "invalid: wrong audience: the token is for ['vault'], expected one of ['billing']",
        ),
        (
            lambda k: sa_token(k, iat=1_700_000_000, nbf=1_700_000_000, exp=1_700_000_600),
            "vault",
            "invalid: expired: exp is 2023-11-14T22:23:20Z",
        ),
        (
            lambda k: sa_token(k, kid="rotated"),
            "vault",
            "invalid: unknown key id 'rotated': not in the issuer's JWKS",
        ),
        (
            lambda k: sa_token(k, iss="https://elsewhere.example"),
            "vault",
            f"invalid: wrong issuer: iss is 'https://elsewhere.example', expected '{ISSUER}'",
        ),
    ],
    ids=["flipped-signature", "wrong-audience", "expired", "unknown-key-id", "wrong-issuer"],
)
def test_verify_token_refuses_with_the_exact_reason(
    signing_key: rsa.RSAPrivateKey,
    jwks_file: Path,
    make: Callable[[rsa.RSAPrivateKey], str],
    audience: str,
    reason: str,
) -> None:
    out = verify_cli(make(signing_key), jwks_file, "--audience", audience)
    assert out.returncode == 1
    assert out.stderr.strip() == reason
    assert out.stdout == ""


def test_verify_token_needs_an_audience_and_an_issuer_for_a_jwks_file(jwks_file: Path) -> None:
    assert cli("verify-token", "--jwks", str(jwks_file), stdin="x").returncode == 2
    out = cli("verify-token", "--jwks", str(jwks_file), "-a", "vault", stdin="x")
    assert out.returncode == 1
    assert "--jwks needs --issuer" in out.stderr


def test_verify_token_refuses_what_is_not_a_jwt(jwks_file: Path) -> None:
    out = verify_cli("not-a-token", jwks_file, "-a", "vault")
    assert (out.returncode, out.stderr.strip()) == (
        1,
        "invalid: the token is not a well-formed JWT",
    )
