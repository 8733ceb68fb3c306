"""One reconcile of one AppIdentity as a pipeline: gather the inputs, judge the spec (policy,
and the requester's own rights), apply the children and the token, prove the grant with that
token, and report the outcome as a status and Events. A wake-up that the last proof still
answers is a re-check instead (recheck.py).

Order matters and is chosen so that nothing is half-applied: bad input, policy violations and
requests beyond the requester's own rights stop before any write; conflicts with objects the
operator did not create stop before any write; the ServiceAccount exists before anything names
it; grants dropped from the spec are removed after the new ones exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .apply import apply
from .gather import gather
from .judge import judge
from .prove import prove
from .recheck import recheck
from .report import report
from .state import Memory, Result, Runtime
from .stop import Stop, stopped


def reconcile(rt: Runtime, body: Mapping[str, Any], mem: Memory, now: datetime) -> Result:
    quiet = recheck(rt, body, mem, now)
    if quiet is not None:
        return quiet
    mem.poked = False
    try:
        case = gather(rt, body, now)
        judge(rt, case, mem)
        done = apply(rt, case, mem)
    except Stop as stop:
        # Stopped for a human to act (a conflict, a refusal): its retries are full reconciles,
        # not re-checks of a proof that no longer describes the identity.
        mem.timetable = None
        return stopped(body, now, stop)
    return report(case, done, prove(rt, case, done, mem))
