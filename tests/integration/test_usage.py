"""`usage` on the real audit log the local API server writes (issue 21, "Done when"): an
identity granted more than its application uses; the report names what went unused and what
was denied (with the rule that would allow it and the policy's verdict), proposes exactly what
was used, and the proposal, applied, is verified by the self-check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from appidentity.kube import Kube
from support import (
    TEST_POLICY_FILE,
    TEST_STATE_DIR,
    Cluster,
    Operator,
    merge_patch,
    use_part_of_the_grant,
    wait_ready,
    wait_until,
)

AUDIT_LOG = TEST_STATE_DIR / "logs" / "audit.log"


@pytest.fixture
def audit_log(cluster: Cluster) -> Path:
    if cluster.external or not AUDIT_LOG.exists():
        pytest.skip("needs the local control plane's audit log (hack/cluster.sh)")
    return AUDIT_LOG


def usage(cluster: Cluster, namespace: str, name: str, log: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appidentity",
            "usage",
            name,
            "-n",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--audit-log",
            str(log),
            "--policy",
            str(TEST_POLICY_FILE),
            "-o",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_usage_reports_unused_and_denied_and_proposes_what_was_used(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: Operator,
    audit_log: Path,
    token_api: Any,
) -> None:
    use_part_of_the_grant(kube, namespace, token_api)
    secret_get = f"get secrets/app-token in {namespace}"
    wait_until(lambda: secret_get.split()[1].encode() in audit_log.read_bytes(), 10, "the audit")

    short = usage(cluster, namespace, "app", audit_log)
    assert not short["window"]["judged"] and short["proposedSpec"] is None
    assert short["entries"][1]["verdict"] == "not judged"

    report = usage(cluster, namespace, "app", audit_log, "--force")
    configmaps, pods = report["entries"]
    assert configmaps["field"] == "spec.rules[0]" and configmaps["verdict"] == "partly used"
    # Exactly the application's two requests: the operator's self-check (same token) left out.
    assert configmaps["count"] == 2
    assert configmaps["used"] == [
        f"get configmaps/kube-root-ca.crt in {namespace}",
        f"list configmaps in {namespace}",
    ]
    assert configmaps["unused"] == ["configmaps: watch, create, update, patch, delete"]
    assert report["events"]["selfCheckLeftOut"] > 0
    assert pods["field"] == "spec.rules[1]" and pods["verdict"] == "unused"
    (secret,) = report["denied"]
    assert secret["request"] == secret_get
    assert secret["add"]["append"] == secret["add"]["rule"]
    del secret["add"]["append"]
    assert secret["add"] == {
        "field": "spec.rules",
        "rule": {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get"],
            "resourceNames": ["app-token"],
        },
    }
    assert secret["policy"] == "accepted"  # names given, as secrets.getRequiresResourceNames asks
    proposed = report["proposedSpec"]["rules"]
    assert proposed == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
    assert "-    - watch" in report["diff"]

    merge_patch(kube, "AppIdentity", namespace, "app", {"spec": {"rules": proposed}})
    obj = wait_ready(kube, namespace, "app")
    assert obj["status"]["verification"]["failed"] == []
    assert kube.get("Role", namespace, "app")["rules"] == proposed  # type: ignore[index]
