"""`usage NAME -n NS --audit-log PATH|-`: what an identity's application did with its grant,
from the API server's audit Events; what it never used, what it was denied, and a tighter spec.
Reads the AppIdentity (and the ClusterRoles it binds) from the cluster, or the AppIdentity from
a file with `-f`; never changes it."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from .. import KIND
from ..usage.report import span_text
from .common import EXIT_OK, add_identity, add_kubeconfig, namespace, table

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def duration(text: str) -> float:
    """`7d`, `12h`, `90m`, `3600s` or a bare number of days."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 7d, 12h or 30m")
    return float(match.group(1)) * UNITS[match.group(2) or "d"]


def _identity(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The AppIdentity and the rules of the ClusterRoles it binds (those that can be read)."""
    if args.filename:
        body: dict[str, Any] = yaml.safe_load(Path(args.filename).read_text())
        body.setdefault("metadata", {}).setdefault("namespace", namespace(args))
        return body, {}
    from ..kube import Kube

    kube = Kube.connect(args.kubeconfig)
    ns = namespace(args)
    found = kube.get(KIND, ns, args.name)
    if found is None:
        raise LookupError(f"AppIdentity {ns}/{args.name} not found")
    spec = found.get("spec") or {}
    names = set(spec.get("clusterRoles") or [])
    for grant in spec.get("namespaces") or []:
        names |= set(grant.get("clusterRoles") or [])
    roles = {}
    for role in sorted(names):
        with contextlib.suppress(Exception):  # unreadable: reported as unknown, not guessed
            if (obj := kube.get("ClusterRole", None, role)) is not None:
                roles[role] = obj.get("rules") or []
    return found, roles


def _cmd_usage(args: argparse.Namespace) -> int:
    from ..policy import load_policy
    from ..usage.events import open_source
    from ..usage.report import Evidence, usage

    body, roles = _identity(args)
    streams = [(path, open_source(path)) for path in args.audit_log]
    evidence = Evidence(min_window_seconds=args.min_window, force=args.force)
    result = usage(body, roles, streams, load_policy(args.policy), evidence)
    for _name, stream in streams:
        if stream is not sys.stdin.buffer:
            stream.close()
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(result, sort_keys=False))
    else:
        print(render(result))
    return EXIT_OK


def _grant(entry: dict[str, Any]) -> str:
    grant = entry["grant"]
    if isinstance(grant, str):
        return f"ClusterRole {grant}"
    what = grant.get("nonResourceURLs") or [
        r + (f".{g}" if g else "") for g in grant.get("apiGroups", []) for r in grant["resources"]
    ]
    names = f" {','.join(grant['resourceNames'])}" if grant.get("resourceNames") else ""
    return f"{','.join(grant['verbs'])} {','.join(what)}{names}"


def render(result: dict[str, Any]) -> str:
    """The report for people: evidence first, then the entries, the denials, the proposal."""
    window, events = result["window"], result["events"]
    lines = [
        f"identity   {result['identity']} ({result['serviceAccount']})",
        f"window     {window['from'] or '-'} .. {window['to'] or '-'} "
        f"({span_text(window['evidenceSeconds'])} of evidence; identity created "
        f"{window['identityCreated'] or '?'})",
        f"events     {events['read']} read ({events['bytes'] / 1e6:.1f} MB), "
        f"{events['selfCheckLeftOut']} of the operator's self-check left out",
    ]
    if window["reason"]:
        lines.append(f"evidence   {window['reason']}")
    rows: list[tuple[str, ...]] = [
        ("ENTRY", "GRANT", "VERDICT", "COUNT", "FIRST SEEN", "LAST SEEN", "UNUSED")
    ]
    for e in result["entries"]:
        rows.append(
            (
                e["field"],
                _grant(e),
                e["verdict"],
                str(e["count"]),
                e["firstSeen"] or "-",
                e["lastSeen"] or "-",
                "; ".join(e["unused"]) or "-",
            )
        )
    lines += ["", table(rows)]
    if result["denied"]:
        rows = [("DENIED", "COUNT", "LAST SEEN", "WOULD BE ALLOWED BY", "POLICY")]
        for d in result["denied"]:
            add = d["add"]
            allow = f"{add['field']} += {json.dumps(add['append'], separators=(',', ':'))}"
            rows.append((d["request"], str(d["count"]), d["lastSeen"], allow, d["policy"]))
        lines += ["", table(rows)]
        lines += [f"note: {d['request']}: {d['note']}" for d in result["denied"] if d["note"]]
    if result["outsideSpec"]:
        lines += [
            "",
            "allowed outside the spec (every ServiceAccount's defaults, or other bindings):",
        ]
        lines += [f"  {o['request']} x{o['count']}" for o in result["outsideSpec"]]
    if result["proposedSpec"] is None:
        lines += ["", "proposed spec: none (too little evidence, see above)"]
    elif result["diff"]:
        lines += [
            "",
            "proposed spec (never broader than the current one):",
            result["diff"].rstrip(),
        ]
    else:
        lines += ["", "proposed spec: the current one (every entry was used in full)"]
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "usage", help="what an identity used of its grant, per the audit log, and a tighter spec"
    )
    add_identity(p)
    p.add_argument(
        "--audit-log",
        action="append",
        required=True,
        metavar="PATH",
        help="audit Events: JSON lines or an EventList, gzip too; '-' for stdin; repeat for "
        "rotated files",
    )
    p.add_argument("-f", "--filename", help="the AppIdentity from this file, not the cluster")
    p.add_argument(
        "--min-window",
        type=duration,
        default=duration("7d"),
        help="least evidence for calling an entry unused (default 7d; units s m h d w)",
    )
    p.add_argument("--force", action="store_true", help="judge even on less evidence")
    p.add_argument("--policy", type=Path, help="the operator's policy file (default: its defaults)")
    p.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    add_kubeconfig(p)
    p.set_defaults(func=_cmd_usage)
