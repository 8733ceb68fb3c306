"""The operator run from `make image`'s image with exactly what deploy/'s Pod gets
(APPID_TEST_OPERATOR=image; tests/support.py ImageOperator): what the image holds, the
restricted Pod's properties of the running process, the in-cluster configuration, liveness and
metrics from inside, token rotation, deploy/'s RBAC as the rights it runs with, and SIGTERM."""

from __future__ import annotations

import json
import os
import re
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from appidentity.kube import Kube
from appidentity.model import identity_key
from kubernetes import client
from support import (
    DEPLOYMENT,
    GRACE_SECONDS,
    OPERATOR_NAMESPACE,
    OPERATOR_SA,
    READ_CONFIGMAPS,
    SA_MOUNT,
    Cluster,
    ImageOperator,
    Token,
    condition,
    create,
    identity,
    image_name,
    merge_patch,
    podman,
    wait_ready,
    wait_until,
    whoami_status,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("APPID_TEST_OPERATOR") != "image",
    reason="the operator from its image: APPID_TEST_OPERATOR=image (make test runs it)",
)


@pytest.fixture
def image_operator(operator: ImageOperator) -> ImageOperator:
    assert isinstance(operator, ImageOperator)
    return operator


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def failures_logged(log: str, namespace: str, name: str) -> list[str]:
    """The log's warnings and errors about this identity (a failed reconcile is logged with its
    key before its retry), and anything about an unauthenticated request."""
    key = identity_key(namespace, name)
    return [
        line
        for line in log.splitlines()
        if (key in line and re.search(r'"level": "(warning|error)"', line))
        or re.search(r"\b401\b|Unauthorized", line)
    ]


# --- the image ---------------------------------------------------------------------------------


def test_image_holds_no_compiler_no_pip_and_no_source_tree(image_operator: ImageOperator) -> None:
    root = image_operator.rootfs
    assert root is not None
    config = json.loads(podman("image", "inspect", image_name()))[0]["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/opt/venv/bin/appidentity-operator"]

    tools = ("gcc", "cc", "c++", "g++", "clang", "ld", "as", "make", "pip", "pip3")
    dirs = ("usr/bin", "usr/local/bin", "bin", "usr/sbin", "opt/venv/bin")
    assert [f"{d}/{t}" for d in dirs for t in tools if (root / d / t).exists()] == []
    assert list(root.glob("usr/lib/gcc*")) == []
    packages = [*root.glob("**/site-packages/pip"), *root.glob("**/dist-packages/pip")]
    assert packages == []
    assert list(root.glob("usr/share/python-wheels/*")) == []
    # Importable by neither Python (the venv's nor the system's), run from the image itself.
    for python in ("/opt/venv/bin/python", "/usr/bin/python3"):
        done = image_operator.run(python, "-c", "import pip")
        assert "No module named 'pip'" in done.stderr, (python, done.stderr[-300:])

    # No source tree: the package exists only as installed into the venv.
    assert not (root / "src").exists()
    found = [p.relative_to(root) for p in root.glob("**/appidentity/reconcile/pipeline.py")]
    assert found == [
        Path("opt/venv/lib/python3.11/site-packages/appidentity/reconcile/pipeline.py")
    ]
    assert list(root.glob("**/pyproject.toml")) == []


def test_writes_anywhere_but_tmp_fail(image_operator: ImageOperator) -> None:
    script = """
import json, sys
result = {}
for path in sys.argv[1:]:
    try:
        open(path, "w").write("x")
        result[path] = "written"
    except OSError as exc:
        result[path] = exc.strerror
print(json.dumps(result))
"""
    paths = ["/tmp/probe", "/probe", "/etc/probe", "/opt/venv/probe", "/var/probe"]
    paths += ["/usr/probe", "/etc/appidentity/probe", f"{SA_MOUNT}/probe"]
    done = image_operator.run("/opt/venv/bin/python", "-c", script, *paths)
    assert done.returncode == 0, done.stderr[-500:]
    result = json.loads(done.stdout)
    assert result.pop("/tmp/probe") == "written"
    assert set(result.values()) == {"Read-only file system"}, result


# --- the running operator ----------------------------------------------------------------------


def test_operator_runs_as_the_restricted_pod_with_its_service_account_only(
    image_operator: ImageOperator, cluster: Cluster
) -> None:
    pid = image_operator.pid
    status = proc_status(pid)
    assert status["Uid"].split() == ["65532"] * 4
    assert status["Gid"].split() == ["65532"] * 4
    assert status["Groups"] == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, caps
    assert status["NoNewPrivs"] == "1"
    assert status["NSpid"].split()[-1] == "1"  # PID 1 of its own namespace, as in a Pod

    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mounts[fields[4]] = (fields[5].split(","), line.split(" - ")[1].split()[0])
    assert "ro" in mounts["/"][0]
    assert "rw" in mounts["/tmp"][0] and mounts["/tmp"][1] == "tmpfs"
    sa_mount = next(m for m in mounts if m.endswith("secrets/kubernetes.io/serviceaccount"))
    assert "ro" in mounts[sa_mount][0]
    assert "ro" in mounts["/etc/appidentity"][0]
    # Besides /proc, only /tmp and /dev (a root-owned tmpfs with the usual device nodes, as a
    # runtime makes it) are mounted writable.
    writable = {m for m, (opts, fs) in mounts.items() if "rw" in opts and fs != "proc"}
    assert {m for m in writable if m != "/dev" and not m.startswith("/dev/")} == {"/tmp"}

    # The Deployment's args and env, the in-cluster address, and no kubeconfig anywhere.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    args = [a.decode() for a in argv[2:]]  # after the venv's python and the entrypoint script
    expected = list(DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]["args"])
    for flag, port in (
        ("--metrics-port", image_operator.metrics_port),
        ("--liveness-port", image_operator.liveness_port),
    ):
        expected[expected.index(flag) + 1] = str(port)
    assert args == [*expected, *image_operator.TEST_ARGS]
    environ = dict(
        e.decode().partition("=")[::2]
        for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if e
    )
    assert "KUBECONFIG" not in environ
    assert environ["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert f"https://127.0.0.1:{environ['KUBERNETES_SERVICE_PORT']}" == cluster.server
    assert environ["POD_NAMESPACE"] == OPERATOR_NAMESPACE
    root = Path(f"/proc/{pid}/root")
    assert sorted(
        p.name for p in (root / sa_mount.lstrip("/")).iterdir() if not p.name.startswith("..")
    ) == [
        "ca.crt",
        "namespace",
        "token",
    ]
    assert [p.name for p in (root / "tmp").rglob("*") if "kubeconfig" in p.name] == []


def test_identity_is_verified_by_the_operator_from_the_image(
    kube: Kube, namespace: str, image_operator: ImageOperator
) -> None:
    create(kube, identity("from-image", namespace, rules=[READ_CONFIGMAPS], clusterRoles=["view"]))
    obj = wait_ready(kube, namespace, "from-image")
    verification = obj["status"]["verification"]
    assert verification["failed"] == []
    assert verification["authenticatedAs"] == f"system:serviceaccount:{namespace}:from-image"


def test_liveness_and_metrics_answer_from_inside(image_operator: ImageOperator) -> None:
    url = f"http://127.0.0.1:{image_operator.liveness_port}/healthz"
    assert urllib.request.urlopen(url, timeout=5).status == 200
    assert "appidentity_reconciles_total" in image_operator.metrics()


# --- the in-cluster credentials ----------------------------------------------------------------


def test_token_rotation_with_revocation_needs_no_restart(
    kube: Kube,
    namespace: str,
    image_operator: ImageOperator,
    token_api: Callable[[Token], client.ApiClient],
) -> None:
    """The kubelet's swap of the mounted token, then the old token revoked: every reconcile
    before, across and after it reaches Ready, none fails, the process is the same."""
    create(kube, identity("rotating", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "rotating", timeout=60)
    pid, logged = image_operator.pid, len(image_operator.log())
    seconds: list[float] = []

    def reconcile() -> float:
        began = time.monotonic()
        interval = 600 + len(seconds) + 1  # a spec change: a new generation to reconcile
        merge_patch(
            kube,
            "AppIdentity",
            namespace,
            "rotating",
            {"spec": {"verification": {"intervalSeconds": interval}}},
        )
        wait_ready(kube, namespace, "rotating", timeout=60)
        seconds.append(time.monotonic() - began)
        return seconds[-1]

    for _ in range(10):
        reconcile()
    before = list(seconds)
    old = Token((image_operator.volume.path / "token").read_text())
    revoked_at = time.monotonic()
    image_operator.rotate()
    # Reconciles go on while the API server still accepts the old token (it caches a
    # successful authentication for up to ~10 s) until it refuses it, then ten more.
    while whoami_status(token_api, old) != 401:
        reconcile()
        assert time.monotonic() - revoked_at < 60, "the revoked token is still accepted"
    rejected_after = time.monotonic() - revoked_at
    across = len(seconds) - len(before)
    after = [reconcile() for _ in range(10)]

    assert image_operator.pid == pid, "the operator restarted"
    assert failures_logged(image_operator.log()[logged:], namespace, "rotating") == []
    first_after = after[0]
    print(
        f"\nrotation: {len(seconds)} reconciles ({len(before)} before, {across} while the old "
        f"token was still accepted, {len(after)} after it was refused), 0 failed; old token "
        f"refused {rejected_after:.1f} s after revocation; reconcile p50 before "
        f"{statistics.median(before):.2f} s, first after refusal {first_after:.2f} s, max after "
        f"{max(after):.2f} s"
    )
    assert first_after < 10 * max(statistics.median(before), 0.5)


def test_a_missing_permission_in_deploy_rbac_fails_with_a_clear_message(
    kube: Kube, cluster: Cluster, namespace: str, image_operator: ImageOperator
) -> None:
    """Proof that the operator runs with deploy/'s RBAC and nothing else: without the rule for
    Secrets, the token Secret cannot be written; the identity never becomes Ready, and the log
    names the user and the permission it lacks. With the rule back, it recovers unaided."""
    role = kube.get("ClusterRole", None, OPERATOR_SA)
    assert role is not None
    index = next(i for i, r in enumerate(role["rules"]) if r["resources"] == ["secrets"])
    patch = [
        {"op": "test", "path": f"/rules/{index}/resources", "value": ["secrets"]},
        {"op": "remove", "path": f"/rules/{index}"},
    ]
    logged = len(image_operator.log())
    cluster.run_kubectl("patch", "clusterrole", OPERATOR_SA, "--type=json", "-p", json.dumps(patch))
    try:
        create(kube, identity("unprivileged", namespace, rules=[READ_CONFIGMAPS]))
        expected = (
            f'User \\"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}\\" cannot create '
            f'resource \\"secrets\\" in API group \\"\\" in the namespace \\"{namespace}\\"'
        )

        def refused() -> list[str]:
            key = identity_key(namespace, "unprivileged")
            lines = image_operator.log()[logged:].splitlines()
            return [line for line in lines if key in line and expected in line]

        wait_until(refused, 30, "the operator to log the permission it lacks")
        obj = kube.get("AppIdentity", namespace, "unprivileged")
        assert condition(obj, "Ready").get("status") != "True"
    finally:
        restore = [{"op": "add", "path": f"/rules/{index}", "value": role["rules"][index]}]
        cluster.run_kubectl(
            "patch", "clusterrole", OPERATOR_SA, "--type=json", "-p", json.dumps(restore)
        )
    # With the rule back, the same operator finishes the job: the rule was the only thing missing.
    wait_ready(kube, namespace, "unprivileged", timeout=60)


def test_sigterm_stops_it_within_the_grace_period(image_operator: ImageOperator) -> None:
    logged = len(image_operator.log())
    took = image_operator.stop()
    print(f"\nSIGTERM: stopped in {took:.1f} s (grace period {GRACE_SECONDS} s)")
    try:
        assert took < GRACE_SECONDS
        assert image_operator.exit_code == 0
        assert "Traceback" not in image_operator.log()[logged:]
    finally:
        image_operator.start()
