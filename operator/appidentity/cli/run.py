"""`appidentity-operator run`: the operator itself, under kopf."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..schedule import FULL_PROOF_SECONDS
from ..scheduler import WORKERS
from .common import EXIT_OK, EXIT_USAGE, add_kubeconfig, add_operator_namespace


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


def setup_logging(fmt: str, verbose: bool) -> None:
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


def _receiver_config(args: argparse.Namespace) -> Any:
    if not args.audit_webhook_port:
        return None
    from ..audit_receiver import ReceiverConfig

    return ReceiverConfig(
        port=args.audit_webhook_port,
        cert=args.audit_webhook_cert,
        key=args.audit_webhook_key,
        client_ca=args.audit_webhook_client_ca,
        bind=args.audit_webhook_bind,
    )


def _receiver_problem(args: argparse.Namespace) -> str | None:
    """Why the receiver's certificates cannot serve, found before connecting to any cluster."""
    config = _receiver_config(args)
    if config is None:
        return None
    import ssl

    from ..audit_receiver import tls_context

    try:
        tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        return f"the audit webhook receiver's certificate, key or client CA: {exc}"
    return None


def _cmd_run(args: argparse.Namespace) -> int:
    _fewer_malloc_arenas()
    import kopf

    from .. import handlers
    from ..policy import PolicyFileError, load_policy

    setup_logging(args.log_format, args.verbose)
    if args.audit_webhook_port and not (
        args.audit_webhook_cert and args.audit_webhook_key and args.audit_webhook_client_ca
    ):
        print(
            "error: --audit-webhook-port needs --audit-webhook-cert, --audit-webhook-key and "
            "--audit-webhook-client-ca (the API server is authenticated by its client certificate)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if (problem := _receiver_problem(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
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
        audit_webhook=_receiver_config(args),
    )
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        memories=handlers.IdentityMemories(),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=liveness,
    )
    return EXIT_OK


def add_parser(sub: Any) -> None:
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
    run.add_argument(
        "--workers", type=int, default=WORKERS, help="reconciles running at once (threads)"
    )
    _add_receiver(run)
    add_kubeconfig(run)
    add_operator_namespace(run)
    run.set_defaults(func=_cmd_run)


def _add_receiver(run: Any) -> None:
    group = run.add_argument_group(
        "audit webhook receiver (off by default): the API server's audit webhook backend posts "
        "its Events here; status.usage and appidentity_unused_entries say what each identity used"
    )
    group.add_argument("--audit-webhook-port", type=int, default=0, help="HTTPS port, 0: off")
    group.add_argument("--audit-webhook-bind", default="0.0.0.0", help="address to listen on")
    group.add_argument("--audit-webhook-cert", type=Path, help="serving certificate (PEM)")
    group.add_argument("--audit-webhook-key", type=Path, help="its private key (PEM)")
    group.add_argument(
        "--audit-webhook-client-ca",
        type=Path,
        help="CA of the API server's client certificate; clients without one it signed are refused",
    )
