"""Commands that need no cluster (or only its public keys): `render` what AppIdentities would
create, `policy-manifests` for a policy file, and `verify-token` as an external service
would."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .. import KIND
from .common import EXIT_FAILED, EXIT_OK


def _cmd_render(args: argparse.Namespace) -> int:
    from ..desired import render
    from ..model import SpecError, parse_identity
    from ..policy import check, load_policy

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    policy = load_policy(args.policy)  # no file: the safe defaults, as `run` without --policy
    out: list[dict[str, Any]] = []
    failed = False
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != KIND:
            continue
        meta = doc.setdefault("metadata", {})
        meta.setdefault("namespace", args.namespace)
        where = f"{meta['namespace']}/{meta.get('name', '?')}"
        try:
            identity = parse_identity(doc)
        except SpecError as exc:
            print(f"error: {where}: {exc}", file=sys.stderr)
            failed = True
            continue
        violations = check(identity, policy)
        for v in violations:
            print(f"error: {where}: {v}", file=sys.stderr)
        failed |= bool(violations)
        out += render(identity)
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_policy_manifests(args: argparse.Namespace) -> int:
    from ..policy import load_policy
    from ..policy_manifests import component_yaml

    sys.stdout.write(component_yaml(load_policy(args.policy), source=str(args.policy)))
    return EXIT_OK


def _issuer_keys(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(expected issuer, JWKS): from a JWKS file (offline), the issuer's public discovery
    document (--issuer alone), or the API server with the kubeconfig's credentials."""
    if args.jwks:
        if not args.issuer:
            raise ValueError("--jwks needs --issuer: the iss the token must carry")
        jwks: dict[str, Any] = json.loads(Path(args.jwks).read_text())
        return args.issuer, jwks
    if args.issuer and not args.kubeconfig:
        from ..kube import public_openid

        issuer, jwks = public_openid(args.issuer, args.ca)
    else:
        from ..kube import Kube

        issuer, jwks = Kube.connect(args.kubeconfig).openid()
    if args.issuer and issuer != args.issuer:
        raise ValueError(f"the discovery document names issuer {issuer!r}, not {args.issuer!r}")
    return issuer, jwks


def _cmd_verify_token(args: argparse.Namespace) -> int:
    from ..verify.jwt import verify_token

    text = sys.stdin.read() if args.token_file == "-" else Path(args.token_file).read_text()
    token = text.strip()
    if not token:
        raise ValueError(f"no token in {'stdin' if args.token_file == '-' else args.token_file}")
    issuer, jwks = _issuer_keys(args)
    result = verify_token(token, jwks, issuer, args.audience, args.subject)
    if not result.ok:
        print(f"invalid: {result.reason}", file=sys.stderr)
        return EXIT_FAILED
    claims = dict(result.claims)
    times = {
        k: datetime.fromtimestamp(claims[k], UTC).isoformat()
        for k in ("iat", "nbf", "exp")
        if k in claims
    }
    sys.stdout.write(
        yaml.safe_dump(
            {"valid": True, "keyID": result.key_id, "claims": claims, "times": times},
            sort_keys=False,
        )
    )
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    render = sub.add_parser(
        "render", help="print the objects AppIdentities would produce (no cluster)"
    )
    render.add_argument(
        "--file", "-f", required=True, help="YAML file with AppIdentities, - for stdin"
    )
    render.add_argument(
        "--namespace", "-n", default="default", help="namespace for objects without one"
    )
    render.add_argument(
        "--policy",
        type=Path,
        help="operator policy YAML to check against (default: the safe defaults, as `run` uses)",
    )
    render.set_defaults(func=_cmd_render)

    manifests = sub.add_parser(
        "policy-manifests",
        help="print a kustomize Component that installs a policy file everywhere deploy/ needs it",
    )
    manifests.add_argument("--policy", type=Path, required=True, help="operator policy YAML")
    manifests.set_defaults(func=_cmd_policy_manifests)
    _add_verify_token(sub)


def _add_verify_token(sub: Any) -> None:
    verify = sub.add_parser(
        "verify-token",
        help="verify a ServiceAccount token as an external service would (never prints it)",
        description="Verifies a ServiceAccount JWT against the issuer's keys: signature, iss, "
        "aud, exp, nbf, iat (and sub with --subject). Prints the verified claims, or why the "
        "token is invalid; exit 0 only for a valid token.",
    )
    verify.add_argument(
        "--token-file", "-f", default="-", help="file holding the token (default: - for stdin)"
    )
    verify.add_argument(
        "--audience",
        "-a",
        action="append",
        required=True,
        help="an audience the token must be for (repeatable: any one is enough)",
    )
    verify.add_argument(
        "--subject", help="the sub the token must carry, e.g. system:serviceaccount:NS:SA"
    )
    keys = verify.add_mutually_exclusive_group()
    keys.add_argument(
        "--kubeconfig",
        help="read issuer and keys from this API server with its credentials (the default, "
        "with $KUBECONFIG, unless --issuer or --jwks is given)",
    )
    keys.add_argument(
        "--jwks", help="JWKS file: fully offline (needs --issuer for the expected iss)"
    )
    verify.add_argument(
        "--issuer",
        help="the expected issuer; alone, its public discovery document and JWKS are read "
        "without credentials",
    )
    verify.add_argument("--ca", help="CA file for the issuer's HTTPS (default: system trust)")
    verify.set_defaults(func=_cmd_verify_token)
