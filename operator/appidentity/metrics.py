"""Prometheus metrics. Labels carry identity names, never anything from a Secret."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "appidentity_reconciles_total", "Reconciles of AppIdentities, by result", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "appidentity_reconcile_duration_seconds",
    "Time of one reconcile including the self-check",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
VERIFIED = Gauge(
    "appidentity_verified",
    "1 when the identity's token was last proven to do exactly what was granted",
    ["namespace", "name"],
)
EXCESS = Gauge(
    "appidentity_excess_rules", "Effective rules not covered by the grant", ["namespace", "name"]
)
TOKEN_EXPIRY = Gauge(
    "appidentity_token_expiry_seconds",
    "Seconds until the identity's Bound token expires",
    ["namespace", "name"],
)
UNUSED = Gauge(
    "appidentity_unused_entries",
    "Spec entries no request of the identity's token used since the operator started (the audit"
    " webhook receiver's status.usage.unusedEntries; absent when the receiver is off)",
    ["namespace", "name"],
)
CHECKS = Counter(
    "appidentity_checks_total",
    "Self-checks run: full proofs, and re-checks of the token's effective rules",
    ["kind"],
)
ERRORS = Counter(
    "appidentity_errors_total", "Errors talking to the API server, by phase", ["phase"]
)

# Every label value the operator uses, exported at 0 from the start: a series that appears only
# with its first increment makes rate() and `increase() > 0` alerts miss that first one. A new
# label value used anywhere belongs in these tuples.
RECONCILE_RESULTS = ("ok", "error")
CHECK_KINDS = ("full", "rules")
ERROR_PHASES = ("reconcile",)
for _counter, _values in (
    (RECONCILES, RECONCILE_RESULTS),
    (CHECKS, CHECK_KINDS),
    (ERRORS, ERROR_PHASES),
):
    for _value in _values:
        _counter.labels(_value)


def serve(port: int) -> None:
    start_http_server(port)


def forget(namespace: str, name: str) -> None:
    for gauge in (VERIFIED, EXCESS, TOKEN_EXPIRY, UNUSED):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
