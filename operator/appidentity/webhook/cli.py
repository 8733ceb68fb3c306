"""`appidentity-operator webhook`: its flags and start-up."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable

from ..kube import Kube
from .server import Webhook
from .tls_sync import TlsSync

DAY = 86400.0


def _run(args: argparse.Namespace, setup_logging: Callable[[str, bool], None]) -> int:
    setup_logging(args.log_format, False)
    namespace = args.namespace or os.environ.get("POD_NAMESPACE") or "appidentity-system"
    hosts = tuple(h for h in (args.hosts or "").split(",") if h) or (
        f"appidentity-webhook.{namespace}.svc",
        f"appidentity-webhook.{namespace}.svc.cluster.local",
    )
    sync = TlsSync(
        Kube.connect(args.kubeconfig),
        namespace,
        args.tls_secret,
        args.configuration,
        hosts,
        args.cert_seconds,
        args.ca_seconds,
    )
    webhook = Webhook(sync, args.bind, args.port, args.health_port, args.sync_seconds)
    asyncio.run(webhook.serve())
    return 0


def add_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    setup_logging: Callable[[str, bool], None],
) -> None:
    p = sub.add_parser(
        "webhook",
        help="serve the requester webhook (Kubernetes before 1.36: README, Install)",
    )
    p.add_argument("--kubeconfig", help="default: the Pod's ServiceAccount, or $KUBECONFIG")
    p.add_argument("--namespace", help="of the TLS Secret (default: $POD_NAMESPACE)")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9443, help="HTTPS, path /mutate-requester")
    p.add_argument("--health-port", type=int, default=8081, help="/healthz and /readyz")
    p.add_argument("--tls-secret", default="appidentity-webhook-tls")
    p.add_argument(
        "--configuration",
        default="appidentity-requester",
        help="the MutatingWebhookConfiguration whose caBundle it keeps",
    )
    p.add_argument(
        "--hosts",
        help="comma-separated names and IPs of the serving certificate "
        "(default: the Service's DNS names)",
    )
    p.add_argument(
        "--cert-seconds",
        type=float,
        default=90 * DAY,
        help="serving certificate lifetime; renewed with a third left",
    )
    p.add_argument("--ca-seconds", type=float, default=3650 * DAY, help="CA lifetime")
    p.add_argument(
        "--sync-seconds",
        type=float,
        default=60.0,
        help="how often the Secret is read (certificates renewed, rotations taken up)",
    )
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.set_defaults(func=lambda args: _run(args, setup_logging))
