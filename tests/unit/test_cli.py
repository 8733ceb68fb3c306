"""The command line without a cluster: `render` for GitOps review, and clear errors."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
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


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        (
            {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]},
            "spec.rules[0].apiGroups: wildcards are not allowed (policy: allowWildcards)",
        ),
        # as admission refuses it: RBAC would store `gett` and grant nothing
        (
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["gett"]},
            "spec.rules[0].verbs[0]: 'gett' is neither a Kubernetes verb",
        ),
    ],
    ids=["wildcard", "unknown-verb"],
)
def test_render_with_policy_reports_violations(rule: dict[str, Any], says: str) -> None:
    doc = yaml.safe_dump(
        {
            "apiVersion": "appidentity.dev/v1alpha1",
            "kind": "AppIdentity",
            "metadata": {"name": "x", "namespace": "a"},
            "spec": {"rules": [rule]},
        }
    )
    out = cli("render", "-f", "-", "--policy", "tests/policy.yaml", stdin=doc)
    assert out.returncode == 1
    assert says in out.stderr


def test_render_without_policy_checks_the_default_policy() -> None:
    """No --policy means the safe defaults, as `run` without --policy: issue 24's `render`
    printed a Role with `impersonate` and exited 0."""
    spec = {"rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}]}
    doc = {
        "apiVersion": "appidentity.dev/v1alpha1",
        "kind": "AppIdentity",
        "metadata": {"name": "x", "namespace": "a"},
        "spec": spec,
    }
    out = cli("render", "-f", "-", stdin=yaml.safe_dump(doc))
    assert out.returncode == 1
    assert (
        "error: a/x: spec.rules[0].verbs: verb 'impersonate' is forbidden (policy: forbiddenVerbs)"
        in out.stderr
    )


def test_run_refuses_an_invalid_policy_file_before_connecting(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("allowedClusterRoles: view\nnoSuchKey: 1\n")
    out = cli("run", "--policy", str(policy))
    assert out.returncode == 2
    assert "policy file" in out.stderr and "noSuchKey" in out.stderr


def test_run_refuses_a_receiver_without_its_certificates_before_connecting(
    tmp_path: Path,
) -> None:
    out = cli("run", "--audit-webhook-port", "18443")
    assert out.returncode == 2 and "--audit-webhook-client-ca" in out.stderr
    missing = [str(tmp_path / n) for n in ("tls.crt", "tls.key", "ca.crt")]
    flags = ("--audit-webhook-cert", "--audit-webhook-key", "--audit-webhook-client-ca")
    out = cli(
        "run",
        "--audit-webhook-port",
        "18443",
        *(x for p in zip(flags, missing, strict=True) for x in p),
    )
    assert out.returncode == 2 and "receiver's certificate" in out.stderr


def test_unknown_command_exits_with_usage() -> None:
    out = cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_policy_manifests_prints_a_component_holding_the_file_s_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("allowedClusterRoles: [view, edit]\ntoken: {maxExpirationSeconds: 1800}\n")
    out = cli("policy-manifests", "--policy", str(policy))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# Generated by `appidentity-operator policy-manifests")
    component = yaml.safe_load(out.stdout)
    assert component["kind"] == "Component"
    literals = component["configMapGenerator"][0]["literals"]
    assert 'allowedClusterRoles=["view", "edit"]' in literals
    assert "maxExpirationSeconds=1800" in literals


def test_policy_manifests_refuses_an_invalid_policy_naming_the_field(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("token: {maxExpirationSeconds: 60}\n")
    out = cli("policy-manifests", "--policy", str(policy))
    assert out.returncode == 1
    assert "token.maxExpirationSeconds" in out.stderr
    assert out.stdout == ""


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


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (
            403,
            "--clusterrole=system:service-account-issuer-discovery --group=system:unauthenticated",
        ),
        (401, "refuses anonymous requests altogether"),
    ],
)
def test_verify_token_says_why_an_issuer_refuses_anonymous_discovery(code: int, says: str) -> None:
    """An issuer that refuses the anonymous read: one line saying what would make it public,
    not a bare `HTTP Error 403: Forbidden` (issue 24)."""

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        issuer = f"http://127.0.0.1:{server.server_address[1]}"
        out = cli("verify-token", "-a", "vault", "--issuer", issuer, stdin="a.b.c")
    finally:
        server.shutdown()
    assert out.returncode == 1
    line = f"error: {issuer}/.well-known/openid-configuration: HTTP {code}: the issuer's discovery"
    assert out.stderr.startswith(line), out.stderr
    assert says in out.stderr and out.stderr.count("\n") == 1
