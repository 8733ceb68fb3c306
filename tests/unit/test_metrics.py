"""/metrics from the start: every counter's known label sets are exported at 0 before the first
event, as Prometheus clients advise (issue 24: `appidentity_errors_total` was absent until the
first error)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def fresh_exposition() -> str:
    """The exposition of a process that only imported the module: nothing has happened yet."""
    code = (
        "import sys, appidentity.metrics\n"
        "from prometheus_client import generate_latest\n"
        "sys.stdout.write(generate_latest().decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def test_counters_start_at_zero_for_every_known_label() -> None:
    text = fresh_exposition()
    for line in (
        'appidentity_errors_total{phase="reconcile"} 0.0',
        'appidentity_reconciles_total{result="ok"} 0.0',
        'appidentity_reconciles_total{result="error"} 0.0',
        'appidentity_checks_total{kind="full"} 0.0',
        'appidentity_checks_total{kind="rules"} 0.0',
    ):
        assert line in text.splitlines(), f"{line!r} not exported at start"


def test_every_label_value_the_code_uses_is_initialised() -> None:
    """Each literal passed to .labels() of these counters anywhere in the package is one of the
    values exported at start (a new phase must be added to metrics.py's tuples)."""
    from appidentity import metrics

    known = {
        "RECONCILES": set(metrics.RECONCILE_RESULTS),
        "CHECKS": set(metrics.CHECK_KINDS),
        "ERRORS": set(metrics.ERROR_PHASES),
    }
    package = Path(metrics.__file__).parent
    used: dict[str, set[str]] = {name: set() for name in known}
    pattern = re.compile(r"\b(RECONCILES|CHECKS|ERRORS)\.labels\(\s*[\"']([^\"']+)[\"']")
    for source in package.rglob("*.py"):
        for counter, value in pattern.findall(source.read_text()):
            used[counter].add(value)
    assert used["ERRORS"], "no ERRORS.labels(...) found: has the pattern gone stale?"
    for counter, values in used.items():
        assert values <= known[counter], f"{counter}: {values - known[counter]} not initialised"
