"""`status`: the verification table of `kubectl appid status`, one row per AppIdentity."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .. import KIND
from ..tokens import parse_time
from .common import EXIT_FAILED, EXIT_OK, add_kubeconfig, namespace, table

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
    expires = token.get("expiresAt")
    if not expires:
        return "-"
    if expires == "never":
        return "never"
    left = (parse_time(expires) - now).total_seconds()
    return f"in {_age(left)}" if left > 0 else "expired"


def _row(obj: Mapping[str, Any], now: datetime) -> list[str]:
    status = obj.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions", [])}
    ver = status.get("verification") or {}
    checked = ver.get("checkedAt")
    current = status.get("observedGeneration") == obj["metadata"].get("generation")
    ready = conds.get("Ready", {})
    return [
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


def status_table(
    identities: Sequence[Mapping[str, Any]], now: datetime, colour: bool, namespaces: bool
) -> str:
    head = ["NAME", "READY", "VERIFIED", "ALLOWED", "DENIED", "FAILED", "EXCESS"]
    head += ["TOKEN-EXPIRES", "LAST-CHECK", "REASON"]
    rows = [["NAMESPACE", *head] if namespaces else head]
    colours: dict[tuple[int, int], str] = {}
    for obj in sorted(
        identities, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])
    ):
        row = _row(obj, now)
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


def _cmd_status(args: argparse.Namespace) -> int:
    from ..kube import Kube
    from ..model import utcnow

    kube = Kube.connect(args.kubeconfig)
    ns = None if args.all_namespaces else namespace(args)
    if args.name:
        if ns is None:
            raise ValueError("name one identity with -n NAMESPACE, not -A")
        found = kube.get(KIND, ns, args.name)
        if found is None:
            raise LookupError(f"AppIdentity {ns}/{args.name} not found")
        identities = [found]
    else:
        identities = kube.list_objects(KIND, ns)
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


def add_parser(sub: Any) -> None:
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
    add_kubeconfig(status)
    status.set_defaults(func=_cmd_status)
