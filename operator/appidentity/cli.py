"""`appidentity-operator`: run the operator, print an identity's kubeconfig, re-run its
self-check on demand, show the verification status of identities, render what an AppIdentity
would create (no cluster needed), or verify a ServiceAccount token as an external service would
(`verify-token`). Installed a second time as `kubectl-appid`, the same program is the kubectl
plugin `kubectl appid`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from . import KIND
from .schedule import FULL_PROOF_SECONDS
from .webhook import cli as webhook_cli

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


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates a malloc arena of its own, up to eight per core;
    the reconcile, review and kopf threads then each keep freed memory that the others cannot
    reuse, and resident memory grows with the thread count rather than with the live heap.
    Must run before those threads start; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    m_arena_max = -8  # glibc's malloc.h
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(m_arena_max, arenas)


def _cmd_run(args: argparse.Namespace) -> int:
    _fewer_malloc_arenas()
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
        recheck_seconds=args.recheck_seconds,
        full_proof_seconds=args.full_proof_seconds,
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

    args.namespace = _namespace(args)
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

    kube, body = _load_identity(args.name, _namespace(args), args.kubeconfig)
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


def table(
    rows: Sequence[Sequence[str]], colours: Mapping[tuple[int, int], str] | None = None
) -> str:
    """Columns padded to their widest cell, kubectl-style. `colours` maps (row, column) to an
    ANSI colour code, applied after padding so escapes never skew the widths."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for r, row in enumerate(rows):
        cells = []
        for c, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width)
            code = (colours or {}).get((r, c))
            cells.append(f"\033[{code}m{cell}\033[0m{padded[len(cell) :]}" if code else padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


GREEN, RED, YELLOW = "32", "31", "33"
STATUS_COLOURS = {"True": GREEN, "False": RED, "Unknown": YELLOW}


def _age(seconds: float) -> str:
    """kubectl's way of saying a duration: 45s, 12m, 3h, 5d."""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _expiry(token: Mapping[str, Any], now: datetime) -> str:
    from .tokens import parse_time

    expires = token.get("expiresAt")
    if not expires:
        return "-"
    if expires == "never":
        return "never"
    left = (parse_time(expires) - now).total_seconds()
    return f"in {_age(left)}" if left > 0 else "expired"


def status_table(
    identities: Sequence[Mapping[str, Any]], now: datetime, colour: bool, namespaces: bool
) -> str:
    """The verification table of `kubectl appid status`: one row per AppIdentity."""
    from .tokens import parse_time

    head = ["NAME", "READY", "VERIFIED", "ALLOWED", "DENIED", "FAILED", "EXCESS"]
    head += ["TOKEN-EXPIRES", "LAST-CHECK", "REASON"]
    rows = [["NAMESPACE", *head] if namespaces else head]
    colours: dict[tuple[int, int], str] = {}
    for obj in sorted(
        identities, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])
    ):
        status = obj.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions", [])}
        ver = status.get("verification") or {}
        checked = ver.get("checkedAt")
        current = status.get("observedGeneration") == obj["metadata"].get("generation")
        ready = conds.get("Ready", {})
        row = [
            obj["metadata"]["name"],
            ready.get("status", "-") if current else "Unknown",
            conds.get("AccessVerified", {}).get("status", "-"),
            str(ver.get("allowedChecks", "-")),
            str(ver.get("deniedChecks", "-")),
            str(len(ver["failed"])) if "failed" in ver else "-",
            str(len(ver["excess"])) if "excess" in ver else "-",
            _expiry(status.get("token") or {}, now),
            f"{_age((now - parse_time(checked)).total_seconds())} ago" if checked else "-",
            ready.get("reason", "") if current else "GenerationNotObserved",
        ]
        if namespaces:
            row.insert(0, obj["metadata"]["namespace"])
        r, off = len(rows), int(namespaces)
        for c in (1 + off, 2 + off):
            if row[c] in STATUS_COLOURS:
                colours[r, c] = STATUS_COLOURS[row[c]]
        for c in (5 + off, 6 + off):
            if row[c] not in ("0", "-"):
                colours[r, c] = RED
        if row[7 + off] == "expired":
            colours[r, 7 + off] = RED
        rows.append(row)
    if len(rows) == 1:
        return "No AppIdentities found."
    return table(rows, colours if colour else None)


def _namespace(args: argparse.Namespace) -> str:
    """-n, or what kubectl would use without it: the current context's namespace, else
    `default`."""
    if args.namespace:
        return str(args.namespace)
    from kubernetes import config

    try:
        _contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig or os.environ.get("KUBECONFIG")
        )
    except (config.ConfigException, OSError):
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


def _cmd_status(args: argparse.Namespace) -> int:
    from .kube import Kube
    from .model import utcnow

    kube = Kube.connect(args.kubeconfig)
    namespace = None if args.all_namespaces else _namespace(args)
    if args.name:
        if namespace is None:
            raise ValueError("name one identity with -n NAMESPACE, not -A")
        found = kube.get(KIND, namespace, args.name)
        if found is None:
            raise LookupError(f"AppIdentity {namespace}/{args.name} not found")
        identities = [found]
    else:
        identities = kube.list_objects(KIND, namespace)
    colour = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    print(status_table(identities, utcnow(), colour, namespaces=args.all_namespaces))
    ready = all(
        any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (o.get("status") or {}).get("conditions", [])
        )
        for o in identities
    )
    return EXIT_OK if ready else EXIT_FAILED


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


def parser(prog: str = "appidentity-operator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
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
        "--recheck-seconds",
        type=float,
        help="re-check every identity's effective rules this often instead of at its "
        "spec.verification.intervalSeconds (for tests and benchmarks)",
    )
    run.add_argument(
        "--full-proof-seconds",
        type=float,
        default=FULL_PROOF_SECONDS,
        help="prove every identity in full at least this often, even when nothing changed",
    )
    run.add_argument("--workers", type=int, default=8, help="reconciles running at once (threads)")
    run.set_defaults(func=_cmd_run)

    webhook_cli.add_parser(sub, _setup_logging)

    for name, func, text in (
        ("kubeconfig", _cmd_kubeconfig, "print an identity's kubeconfig"),
        ("check", _cmd_check, "re-run an identity's self-check and print every check"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("name")
        c.add_argument("--namespace", "-n", help="default: the kubeconfig context's namespace")
        c.set_defaults(func=func)

    status = sub.add_parser(
        "status", help="the verification table of one identity or all in a namespace"
    )
    status.add_argument("name", nargs="?", help="one identity (default: all in the namespace)")
    where = status.add_mutually_exclusive_group()
    where.add_argument("--namespace", "-n", help="default: the kubeconfig context's namespace")
    where.add_argument("--all-namespaces", "-A", action="store_true")
    status.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: only on a terminal, and not with NO_COLOR set",
    )
    status.set_defaults(func=_cmd_status)

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

    for c in (run, *[sub.choices[n] for n in ("kubeconfig", "check", "status")]):
        c.add_argument(
            "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
        )
    for c in (run, sub.choices["check"]):
        c.add_argument(
            "--operator-namespace",
            default=os.environ.get("POD_NAMESPACE", "appidentity-system"),
            help="namespace of the operator's baseline ServiceAccount",
        )
    sub.choices["check"].add_argument("--policy", type=Path, help="operator policy (extraVerbs)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "appidentity-operator") -> int:
    args = parser(prog).parse_args(argv)
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


def kubectl_plugin() -> int:
    """`kubectl-appid`: kubectl runs it for `kubectl appid ...`; every command of the main
    program, under the name kubectl users type."""
    return main(prog="kubectl appid")


if __name__ == "__main__":
    sys.exit(main())
