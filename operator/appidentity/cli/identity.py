"""Commands about one identity in a cluster: its kubeconfig, its self-check run on demand with
the token in its Secret (`check`, every check printed), and a rotation of its token (`rotate`)."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path
from typing import Any

from .. import KIND
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    add_identity,
    add_kubeconfig,
    add_operator_namespace,
    namespace,
    table,
)


def _load_identity(name: str, ns: str, kubeconfig: str | None) -> tuple[Any, dict[str, Any]]:
    from ..kube import Kube

    kube = Kube.connect(kubeconfig)
    body = kube.get(KIND, ns, name)
    if body is None:
        raise LookupError(f"AppIdentity {ns}/{name} not found")
    return kube, body


def _cmd_kubeconfig(args: argparse.Namespace) -> int:
    from ..tokens import secret_token

    args.namespace = namespace(args)
    kube, body = _load_identity(args.name, args.namespace, args.kubeconfig)
    secret_name = (body.get("status") or {}).get("secretName") or f"{args.name}-token"
    secret = kube.get("Secret", args.namespace, secret_name)
    data = (secret or {}).get("data") or {}
    if "kubeconfig" not in data:
        if secret_token(secret) is None:
            raise LookupError(f"Secret {args.namespace}/{secret_name} holds no token yet")
        raise LookupError(
            f"Secret {args.namespace}/{secret_name} has no kubeconfig (spec.token.kubeconfig "
            "is false, or the token's audiences exclude the API server's)"
        )
    sys.stdout.write(base64.b64decode(data["kubeconfig"]).decode())
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from ..model import parse_identity
    from ..policy import load_policy
    from ..reconcile import Runtime, consenting_namespaces, self_check, stored_token
    from ..verify.baseline import Baseline

    kube, body = _load_identity(args.name, namespace(args), args.kubeconfig)
    identity = parse_identity(body)
    rt = Runtime(
        kube=kube, policy=load_policy(args.policy), baseline=Baseline(kube, args.operator_namespace)
    )
    unknown = rt.discovery.judge(identity, rt.policy.extra_verbs)
    for finding in unknown:
        print(f"UNKNOWN   {finding}")
    if unknown:
        print("summary   the spec names what this cluster does not serve -> NOT VERIFIED")
        return EXIT_FAILED
    token, audiences = stored_token(rt, identity)
    if token is None:
        raise LookupError(f"no token in Secret {identity.namespace}/{identity.secret_name}")
    plan, ver = self_check(rt, identity, consenting_namespaces(rt, identity), token, audiences)
    print(f"identity  {identity.namespace}/{identity.name}")
    print(f"subject   {ver.authenticated_as or '-'} (expected {identity.subject})")
    if ver.error:
        print(f"FAILED    {ver.error}")
        return EXIT_FAILED
    rows = [("RESULT", "EXPECTED", "GOT", "VIA", "CHECK", "SOURCE")]
    for r in ver.results:
        rows.append(
            (
                "ok" if r.passed else "FAIL",
                "allowed" if r.expected_allowed else "denied",
                "allowed" if r.got_allowed else "denied",
                r.via,
                r.request.describe(),
                r.source,
            )
        )
    print(table(rows))
    for item in ver.excess:
        what = ",".join(item.get("resources", item.get("nonResourceURLs", [])))
        print(f"EXCESS    {','.join(item['verbs'])} {what} in {item['namespace']}")
    print(
        f"jwt       {'ok' if ver.jwt.ok else 'FAIL'}: {ver.jwt.reason} (issuer {ver.jwt.issuer}, kid {ver.jwt.key_id})"
    )
    if plan.truncated:
        print(f"note      {plan.truncated} allowed checks beyond the limit were not asked")
    excess_fails = bool(ver.excess) and not identity.spec.verification.allow_excess
    ok = not ver.failed and ver.jwt.ok and not excess_fails
    print(
        f"summary   {ver.passed_count(True)} allowed, {ver.passed_count(False)} denied passed; "
        f"{len(ver.failed)} failed; {len(ver.excess)} excess -> {'VERIFIED' if ok else 'NOT VERIFIED'}"
    )
    return EXIT_OK if ok else EXIT_FAILED


def _cmd_rotate(args: argparse.Namespace) -> int:
    """Asks for a rotation through an annotation the operator watches, then waits for the new
    token's proof: the old token is revoked (its Secret deleted) before the new one is minted."""
    from ..kube import path_for
    from ..model import utcnow
    from ..tokens import ROTATE_ANNOTATION

    ns = namespace(args)
    kube, _body = _load_identity(args.name, ns, args.kubeconfig)
    asked = utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kube.request(
        "PATCH",
        path_for(KIND, ns, args.name),
        body={"metadata": {"annotations": {ROTATE_ANNOTATION: asked}}},
        content_type="application/merge-patch+json",
    )
    print(f"rotation requested: {ROTATE_ANNOTATION}={asked}")
    if args.timeout <= 0:
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status = (kube.get(KIND, ns, args.name) or {}).get("status") or {}
        token = status.get("token") or {}
        verified: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "AccessVerified"), {}
        )
        if token.get("rotation") == asked and verified.get("status") in ("True", "False"):
            print("old token revoked: its Secret is deleted (refused within about 10 s)")
            print(f"new token valid until {token.get('expiresAt', '-')}")
            print(f"AccessVerified {verified['status']}: {verified.get('message', '')}")
            return EXIT_OK if verified["status"] == "True" else EXIT_FAILED
        time.sleep(0.5)
    print(f"error: no proven new token within {args.timeout:.0f}s", file=sys.stderr)
    return EXIT_FAILED


def add_parsers(sub: Any) -> None:
    for name, func, text in (
        ("kubeconfig", _cmd_kubeconfig, "print an identity's kubeconfig"),
        ("check", _cmd_check, "re-run an identity's self-check and print every check"),
    ):
        c = sub.add_parser(name, help=text)
        add_identity(c)
        add_kubeconfig(c)
        if name == "check":
            add_operator_namespace(c)
            c.add_argument("--policy", type=Path, help="operator policy (extraVerbs)")
        c.set_defaults(func=func)
    rotate = sub.add_parser(
        "rotate", help="revoke an identity's token and have the operator mint and prove a new one"
    )
    add_identity(rotate)
    rotate.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the new token's proof (0: do not wait)",
    )
    add_kubeconfig(rotate)
    rotate.set_defaults(func=_cmd_rotate)
