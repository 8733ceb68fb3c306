"""What the commands share: exit codes, the namespace kubectl would use, kubectl-style tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_identity(p: argparse.ArgumentParser) -> None:
    """NAME and -n: one AppIdentity, in the context's namespace unless told."""
    p.add_argument("name")
    p.add_argument("--namespace", "-n", help="default: the kubeconfig context's namespace")


def add_kubeconfig(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")


def add_operator_namespace(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE", "appidentity-system"),
        help="namespace of the operator's baseline ServiceAccount",
    )


def namespace(args: argparse.Namespace) -> str:
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
