"""`appidentity-operator`: run the operator, print an identity's kubeconfig, re-run its
self-check on demand, render what an AppIdentity would create (no cluster needed), or verify
a ServiceAccount token as an external service would (`verify-token`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from . import KIND

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    # The HTTP libraries log request details at DEBUG; keep them quiet even with --verbose.
    for noisy in ("urllib3", "kubernetes", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every handler run ("Handler ... succeeded"): ~10 lines an identity.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def _cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from . import handlers
    from .policy import PolicyFileError, load_policy

    _setup_logging(args.log_format, args.verbose)
    try:
        load_policy(args.policy)  # fail before connecting, with the file's own error
    except PolicyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handlers.OPTIONS = handlers.Options(
        kubeconfig=args.kubeconfig,
        policy=args.policy,
        operator_namespace=args.operator_namespace,
        metrics_port=args.metrics_port,
        public_server=args.public_server,
        secret_poll_seconds=args.secret_poll_seconds,
        workers=args.workers,
    )
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=liveness,
    )
    return EXIT_OK


def _load_identity(name: str, namespace: str, kubeconfig: str | None) -> tuple[Any, dict[str, Any]]:
    from .kube import Kube

    kube = Kube.connect(kubeconfig)
    body = kube.get(KIND, namespace, name)
    if body is None:
        raise LookupError(f"AppIdentity {namespace}/{name} not found")
    return kube, body


def _cmd_kubeconfig(args: argparse.Namespace) -> int:
    from .tokens import secret_token

    kube, body = _load_identity(args.name, args.namespace, args.kubeconfig)
    secret_name = (body.get("status") or {}).get("secretName") or f"{args.name}-token"
    secret = kube.get("Secret", args.namespace, secret_name)
    data = (secret or {}).get("data") or {}
    if "kubeconfig" not in data:
        if secret_token(secret) is None:
            raise LookupError(f"Secret {args.namespace}/{secret_name} holds no token yet")
        raise LookupError(
            f"Secret {args.namespace}/{secret_name} has no kubeconfig (spec.token.kubeconfig is false)"
        )
    import base64

    sys.stdout.write(base64.b64decode(data["kubeconfig"]).decode())
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from .model import parse_identity
    from .policy import load_policy
    from .reconcile import Runtime, consenting_namespaces, prove, stored_token
    from .verify.baseline import Baseline

    kube, body = _load_identity(args.name, args.namespace, args.kubeconfig)
    identity = parse_identity(body)
    rt = Runtime(
        kube=kube, policy=load_policy(None), baseline=Baseline(kube, args.operator_namespace)
    )
    token, audiences = stored_token(rt, identity)
    if token is None:
        raise LookupError(f"no token in Secret {identity.namespace}/{identity.secret_name}")
    plan, ver = prove(rt, identity, consenting_namespaces(rt, identity), token, audiences)
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
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


def _cmd_render(args: argparse.Namespace) -> int:
    from .desired import render
    from .model import SpecError, parse_identity
    from .policy import check, load_policy

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    policy = load_policy(args.policy) if args.policy else None
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
        violations = check(identity, policy) if policy else []
        for v in violations:
            print(f"error: {where}: {v}", file=sys.stderr)
        failed |= bool(violations)
        out += render(identity)
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_policy_manifests(args: argparse.Namespace) -> int:
    from .policy import load_policy
    from .policy_manifests import component_yaml

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
        from .kube import public_openid

        issuer, jwks = public_openid(args.issuer, args.ca)
    else:
        from .kube import Kube

        issuer, jwks = Kube.connect(args.kubeconfig).openid()
    if args.issuer and issuer != args.issuer:
        raise ValueError(f"the discovery document names issuer {issuer!r}, not {args.issuer!r}")
    return issuer, jwks


def _cmd_verify_token(args: argparse.Namespace) -> int:
    from .verify.jwt import verify_token

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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appidentity-operator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    run.add_argument(
        "--policy", type=Path, help="operator policy YAML (default: the safe defaults)"
    )
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port, 0 to disable")
    run.add_argument(
        "--liveness-port", type=int, default=8081, help="liveness port (/healthz), 0 to disable"
    )
    run.add_argument("--log-format", choices=("json", "text"), default="json")
    run.add_argument("--verbose", "-v", action="store_true")
    run.add_argument("--public-server", help="API server URL written into identities' kubeconfigs")
    run.add_argument(
        "--secret-poll-seconds",
        type=float,
        default=30.0,
        help="how often a token Secret is looked at between checks (Secrets are not watched)",
    )
    run.add_argument("--workers", type=int, default=8, help="reconciles running at once (threads)")
    run.set_defaults(func=_cmd_run)

    for name, func, text in (
        ("kubeconfig", _cmd_kubeconfig, "print an identity's kubeconfig"),
        ("check", _cmd_check, "re-run an identity's self-check and print every check"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("name")
        c.add_argument("--namespace", "-n", default="default")
        c.set_defaults(func=func)

    render = sub.add_parser(
        "render", help="print the objects AppIdentities would produce (no cluster)"
    )
    render.add_argument(
        "--file", "-f", required=True, help="YAML file with AppIdentities, - for stdin"
    )
    render.add_argument(
        "--namespace", "-n", default="default", help="namespace for objects without one"
    )
    render.add_argument("--policy", type=Path, help="also check against this operator policy")
    render.set_defaults(func=_cmd_render)

    manifests = sub.add_parser(
        "policy-manifests",
        help="print a kustomize Component that installs a policy file everywhere deploy/ needs it",
    )
    manifests.add_argument("--policy", type=Path, required=True, help="operator policy YAML")
    manifests.set_defaults(func=_cmd_policy_manifests)

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

    for c in (run, *[sub.choices[n] for n in ("kubeconfig", "check")]):
        c.add_argument(
            "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
        )
    for c in (run, sub.choices["check"]):
        c.add_argument(
            "--operator-namespace",
            default=os.environ.get("POD_NAMESPACE", "appidentity-system"),
            help="namespace of the operator's baseline ServiceAccount",
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (LookupError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # an API error or similar: one clear line, not a traceback
        from .kube import ApiError

        if isinstance(exc, ApiError):
            print(f"error: the API server said {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
