"""`appidentity-operator`: run the operator, print an identity's kubeconfig, re-run its
self-check on demand, show the verification status of identities, render what an AppIdentity
would create (no cluster needed), report what an identity used of its grant from the audit
log (`usage`), or verify a ServiceAccount token as an external service would
(`verify-token`). Installed a second time as `kubectl-appid`, the same program is the kubectl
plugin `kubectl appid`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..webhook import cli as webhook_cli
from . import identity, offline, run, status, usage
from .common import EXIT_FAILED, table
from .status import status_table

__all__ = ["kubectl_plugin", "main", "parser", "status_table", "table"]


def parser(prog: str = "appidentity-operator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    webhook_cli.add_parser(sub, run.setup_logging)
    identity.add_parsers(sub)
    status.add_parser(sub)
    offline.add_parsers(sub)
    usage.add_parser(sub)
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
        from ..kube import ApiError

        if isinstance(exc, ApiError):
            print(f"error: the API server said {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


def kubectl_plugin() -> int:
    """`kubectl-appid`: kubectl runs it for `kubectl appid ...`; every command of the main
    program, under the name kubectl users type."""
    return main(prog="kubectl appid")
