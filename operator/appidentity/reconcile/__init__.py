"""Reconciling one AppIdentity: `pipeline.reconcile` reads as the chain of phases, one module
each (gather, judge, apply with children and token, prove, recheck, report), plus `cleanup`
for deletion. ARCHITECTURE.md follows one identity through them."""

from .cleanup import cleanup
from .gather import consenting_namespaces
from .pipeline import reconcile
from .prove import VERIFYING, self_check, stored_token
from .state import MATCHED, Case, Event, Memory, Result, Runtime
from .stop import Stop

__all__ = [
    "MATCHED",
    "VERIFYING",
    "Case",
    "Event",
    "Memory",
    "Result",
    "Runtime",
    "Stop",
    "cleanup",
    "consenting_namespaces",
    "reconcile",
    "self_check",
    "stored_token",
]
