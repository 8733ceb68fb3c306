"""Runs the suite on several Kubernetes versions and requester modes, one local control plane
at a time, and prints what each run gave. Exits non-zero if any run failed, errored or ran no
test (pytest's exit 5 is a failure here, never a pass).

    .venv/bin/python hack/test_matrix.py [--core "FILES"] [-- PYTEST_ARGS] VERSION/MODE/SUITE ...

VERSION a Kubernetes release (compiled and cached by hack/build-control-plane.sh), MODE auto,
policy or webhook (how admission records the requester; auto: what the version supports),
SUITE all (tests/) or core (--core's files)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / ".state" / "matrix"


@dataclass
class Row:
    version: str
    mode: str
    suite: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.passed > 0 and self.failed == 0


def counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed or errored, skipped) from a JUnit XML report."""
    if not report.exists():
        return 0, 0, 0
    tests = failed = skipped = 0
    for suite in ET.parse(report).getroot().iter("testsuite"):
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def run(spec: str, core: list[str], pytest_args: list[str]) -> Row:
    version, mode, suite = spec.split("/")
    row = Row(version, mode, suite)
    slug = spec.replace("/", "-")
    report, mode_file = REPORTS / f"{slug}.xml", REPORTS / f"{slug}.mode"
    report.unlink(missing_ok=True)
    mode_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env |= {
        "K8S_VERSION": version,
        "APPID_TEST_REQUESTER": mode,
        "APPID_TEST_MODE_FILE": str(mode_file),
    }
    files = ["tests"] if suite == "all" else core
    print(f"== Kubernetes {version}, requester {mode}, {suite} suite", flush=True)
    began = time.monotonic()
    command = [sys.executable, "-m", "pytest", *files, f"--junitxml={report}", *pytest_args]
    row.exit_code = subprocess.run(command, env=env, cwd=REPO, check=False).returncode
    row.seconds = time.monotonic() - began
    row.passed, row.failed, row.skipped = counts(report)
    if mode_file.exists():
        row.mode = mode_file.read_text().strip() + (" (auto)" if mode == "auto" else "")
    return row


def table(rows: list[Row]) -> str:
    head = ("KUBERNETES", "REQUESTER", "SUITE", "PASSED", "FAILED", "SKIPPED", "TIME", "RESULT")
    lines = [head]
    for r in rows:
        result = "ok" if r.ok else ("no tests ran" if r.passed == 0 else f"exit {r.exit_code}")
        minutes = f"{int(r.seconds // 60)}m{int(r.seconds % 60):02d}s"
        lines.append(
            (
                r.version,
                r.mode,
                r.suite,
                str(r.passed),
                str(r.failed),
                str(r.skipped),
                minutes,
                result,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def main() -> int:
    argv = sys.argv[1:]
    pytest_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, pytest_args = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", default="", help="the core suite's test files, space-separated")
    parser.add_argument("runs", nargs="+", metavar="VERSION/MODE/SUITE")
    args = parser.parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    rows = [run(spec, args.core.split(), pytest_args) for spec in args.runs]
    print()
    print(table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
