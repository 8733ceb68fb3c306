"""`kubectl appid`: the plugin is the main program under another name, and `status` draws the
verification table (colour only when asked or on a terminal)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appidentity.cli import parser, status_table, table

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def ident(name: str, ns: str = "team-a", generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "generation": generation}, "status": status}


def cond(type_: str, status: str, reason: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason}


VERIFIED = ident(
    "reader",
    observedGeneration=1,
    conditions=[
        cond("AccessVerified", "True", "AccessVerified"),
        cond("Ready", "True", "AccessVerified"),
    ],
    token={"type": "Bound", "expiresAt": "2026-12-01T12:59:30Z"},
    verification={
        "checkedAt": "2026-12-01T11:58:00Z",
        "allowedChecks": 7,
        "deniedChecks": 16,
        "failed": [],
        "excess": [],
    },
)
WIDENED = ident(
    "widened",
    observedGeneration=1,
    conditions=[
        cond("AccessVerified", "False", "ExcessPrivilege"),
        cond("Ready", "False", "ExcessPrivilege"),
        cond("Stalled", "True", "ExcessPrivilege"),
    ],
    token={"type": "Legacy", "expiresAt": "never"},
    verification={
        "checkedAt": "2026-12-01T11:59:50Z",
        "allowedChecks": 2,
        "deniedChecks": 15,
        "failed": [{}],
        "excess": [{}, {}],
    },
)
REFUSED = ident("taken", conditions=[cond("Ready", "False", "Conflict")], observedGeneration=1)


def test_status_table_has_one_row_per_identity_with_counts_expiry_and_age() -> None:
    lines = status_table(
        [WIDENED, VERIFIED, REFUSED], NOW, colour=False, namespaces=False
    ).splitlines()
    assert lines[0].split() == [
        "NAME", "READY", "VERIFIED", "ALLOWED", "DENIED", "FAILED", "EXCESS",
        "TOKEN-EXPIRES", "LAST-CHECK", "REASON",
    ]  # fmt: skip
    assert lines[1].split() == [
        "reader",
        "True",
        "True",
        "7",
        "16",
        "0",
        "0",
        "in",
        "59m",
        "2m",
        "ago",
        "AccessVerified",
    ]
    assert lines[2].split() == ["taken", "False", "-", "-", "-", "-", "-", "-", "-", "Conflict"]
    assert lines[3].split() == [
        "widened",
        "False",
        "False",
        "2",
        "15",
        "1",
        "2",
        "never",
        "10s",
        "ago",
        "ExcessPrivilege",
    ]
    assert "\033[" not in "\n".join(lines)


def test_columns_line_up() -> None:
    lines = status_table([VERIFIED, REFUSED], NOW, colour=False, namespaces=False).splitlines()
    starts = {
        line.index(word) for line, word in zip(lines, ("READY", "True", "False"), strict=True)
    }
    assert len(starts) == 1


def test_a_status_of_an_older_generation_is_not_shown_as_ready() -> None:
    edited = {**VERIFIED, "metadata": {**VERIFIED["metadata"], "generation": 2}}
    row = status_table([edited], NOW, colour=False, namespaces=False).splitlines()[1].split()
    assert (row[1], row[-1]) == ("Unknown", "GenerationNotObserved")


def test_all_namespaces_adds_a_namespace_column() -> None:
    other = ident("reader", ns="team-b")
    lines = status_table([other, VERIFIED], NOW, colour=False, namespaces=True).splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [line.split()[0] for line in lines[1:]] == ["team-a", "team-b"]


def test_colour_marks_states_without_changing_the_text() -> None:
    plain = status_table([VERIFIED, WIDENED], NOW, colour=False, namespaces=False)
    coloured = status_table([VERIFIED, WIDENED], NOW, colour=True, namespaces=False)
    assert "\033[32mTrue\033[0m" in coloured
    assert "\033[31mFalse\033[0m" in coloured
    assert "\033[31m2\033[0m" in coloured  # excess
    import re

    assert re.sub(r"\033\[\d+m", "", coloured) == plain


def test_no_identities_says_so() -> None:
    assert status_table([], NOW, colour=False, namespaces=False) == "No AppIdentities found."


def test_table_pads_to_the_widest_cell() -> None:
    assert table([["A", "BB"], ["CCC", "D"]]) == "A    BB\nCCC  D"


def test_the_plugin_offers_every_command_of_the_main_program() -> None:
    def commands(prog: str) -> set[str]:
        sub = next(a for a in parser(prog)._actions if a.dest == "command")
        return set(sub.choices)  # type: ignore[arg-type]

    assert commands("kubectl appid") == commands("appidentity-operator")
    assert {"check", "kubeconfig", "render", "status"} <= commands("kubectl appid")


def test_kubectl_appid_is_installed_as_an_executable_and_renders() -> None:
    exe = Path(sys.executable).parent / "kubectl-appid"
    assert exe.exists(), "pip install -e . should have installed kubectl-appid"
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [str(exe), "render", "-f", str(repo / "examples" / "pod-reader.yaml")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "kind: RoleBinding" in done.stdout
    usage = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert usage.stdout.startswith("usage: kubectl appid")
