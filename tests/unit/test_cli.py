"""The command line without a cluster: `render` for GitOps review, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"}  # proves no cluster is used
    return subprocess.run(
        [sys.executable, "-m", "appidentity", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        input=stdin,
        env=env,
        timeout=60,
    )


def test_render_prints_every_object_of_an_example_without_a_cluster() -> None:
    out = cli("render", "-f", "examples/cross-namespace.yaml")
    assert out.returncode == 0, out.stderr
    objects = list(yaml.safe_load_all(out.stdout))
    kinds = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert kinds == [
        ("ServiceAccount", "team-a", "report-reader"),
        ("Secret", "team-a", "report-reader-token"),
        ("Role", "team-a", "report-reader"),
        ("RoleBinding", "team-a", "report-reader"),
        ("Role", "team-b", "team-a.report-reader"),
        ("RoleBinding", "team-b", "team-a.report-reader"),
    ]
    secret = objects[1]
    assert "data" not in secret  # the token is minted in the cluster, never rendered


def test_render_is_deterministic() -> None:
    first = cli("render", "-f", "examples/config-writer.yaml")
    second = cli("render", "-f", "examples/config-writer.yaml")
    assert first.returncode == 0
    assert first.stdout == second.stdout


def test_render_names_the_bad_field_and_fails() -> None:
    bad = yaml.safe_dump(
        {
            "apiVersion": "appidentity.dev/v1alpha1",
            "kind": "AppIdentity",
            "metadata": {"name": "x", "namespace": "a"},
            "spec": {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}]},
        }
    )
    out = cli("render", "-f", "-", stdin=bad)
    assert out.returncode == 1
    assert "error: a/x: spec.rules[0].verbs:" in out.stderr


def test_render_with_policy_reports_violations() -> None:
    wild = yaml.safe_dump(
        {
            "apiVersion": "appidentity.dev/v1alpha1",
            "kind": "AppIdentity",
            "metadata": {"name": "x", "namespace": "a"},
            "spec": {"rules": [{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}]},
        }
    )
    out = cli("render", "-f", "-", "--policy", "tests/policy.yaml", stdin=wild)
    assert out.returncode == 1
    assert (
        "spec.rules[0].apiGroups: wildcards are not allowed (policy: allowWildcards)" in out.stderr
    )


def test_run_refuses_an_invalid_policy_file_before_connecting(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("allowedClusterRoles: view\nnoSuchKey: 1\n")
    out = cli("run", "--policy", str(policy))
    assert out.returncode == 2
    assert "policy file" in out.stderr and "noSuchKey" in out.stderr


def test_unknown_command_exits_with_usage() -> None:
    out = cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
