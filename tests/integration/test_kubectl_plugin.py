"""`kubectl appid` against the real cluster, dispatched by kubectl itself: the status table of a
namespace, colour only on a terminal, the context's namespace by default, and the commands the
main program has (check, kubeconfig, rotate)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from appidentity.kube import Kube
from support import (
    READ_CONFIGMAPS,
    Cluster,
    Token,
    conflicting_identity,
    create,
    events_for,
    identity,
    secret_token,
    wait_ready,
    wait_until,
    whoami_status,
)

pytestmark = pytest.mark.usefixtures("operator")
ANSI = re.compile(r"\033\[\d+m")


def plugin_env(kubeconfig: Path) -> dict[str, str]:
    """kubectl finds plugins on PATH and hands them its environment, KUBECONFIG included."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["KUBECONFIG"] = str(kubeconfig)
    env.pop("NO_COLOR", None)
    return env


def kubectl_appid(
    cluster: Cluster, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cluster.kubectl, "appid", *args],
        env=plugin_env(kubeconfig or cluster.kubeconfig),
        capture_output=True,
        text=True,
        timeout=120,
    )


def on_a_terminal(cluster: Cluster, *args: str) -> str:
    """The plugin's output when its standard output is a terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [cluster.kubectl, "appid", *args],
        env=plugin_env(cluster.kubeconfig),
        stdout=follower,
        stderr=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the other end is closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode()


@pytest.fixture
def two_identities(kube: Kube, namespace: str) -> str:
    create(kube, identity("reader", namespace, rules=[READ_CONFIGMAPS]))
    conflicting_identity(kube, namespace, "taken")
    wait_ready(kube, namespace, "reader")

    def reported() -> bool:
        obj = kube.get("AppIdentity", namespace, "taken") or {}
        return any(
            c.get("reason") == "Conflict" for c in (obj.get("status") or {}).get("conditions", [])
        )

    wait_until(reported, 60, "the conflict reported")
    return namespace


def test_status_lists_every_identity_of_the_namespace(
    cluster: Cluster, kube: Kube, two_identities: str
) -> None:
    done = kubectl_appid(cluster, "status", "-n", two_identities)
    assert done.returncode == 1, done.stderr  # not every identity is Ready
    assert not ANSI.search(done.stdout)  # not a terminal: no colour
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "READY", "VERIFIED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    obj = kube.get("AppIdentity", two_identities, "reader") or {}
    ver = obj["status"]["verification"]
    assert rows["reader"][:7] == [
        "reader",
        "True",
        "True",
        str(ver["allowedChecks"]),
        str(ver["deniedChecks"]),
        "0",
        "0",
    ]
    assert rows["reader"][7] == "in" and rows["reader"][-1] == "AccessVerified"
    assert rows["taken"][1] == "False" and rows["taken"][-1] == "Conflict"

    one = kubectl_appid(cluster, "status", "reader", "-n", two_identities)
    assert one.returncode == 0, one.stderr
    assert [line.split()[0] for line in one.stdout.splitlines()] == ["NAME", "reader"]


def test_status_is_coloured_on_a_terminal_only(cluster: Cluster, two_identities: str) -> None:
    shown = on_a_terminal(cluster, "status", "-n", two_identities)
    assert "\033[32mTrue\033[0m" in shown
    assert "\033[31mFalse\033[0m" in shown


def test_without_n_the_contexts_namespace_is_used(
    cluster: Cluster, two_identities: str, tmp_path: Path
) -> None:
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    for ctx in config["contexts"]:
        ctx["context"]["namespace"] = two_identities
    own = tmp_path / "kubeconfig"
    own.write_text(yaml.safe_dump(config))
    done = kubectl_appid(cluster, "status", kubeconfig=own)
    assert {line.split()[0] for line in done.stdout.splitlines()[1:]} == {"reader", "taken"}


def test_check_and_kubeconfig_come_from_the_main_program(
    cluster: Cluster, two_identities: str, tmp_path: Path
) -> None:
    check = kubectl_appid(cluster, "check", "reader", "-n", two_identities)
    assert check.returncode == 0, check.stderr
    assert "-> VERIFIED" in check.stdout
    kubeconfig = kubectl_appid(cluster, "kubeconfig", "reader", "-n", two_identities)
    assert kubeconfig.returncode == 0, kubeconfig.stderr
    path = tmp_path / "reader.kubeconfig"
    path.write_text(kubeconfig.stdout)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    ask = [cluster.kubectl, "--kubeconfig", str(path), "auth", "can-i", "-n", two_identities]
    allowed = subprocess.run([*ask, "list", "configmaps"], env=env, capture_output=True, text=True)
    denied = subprocess.run([*ask, "list", "secrets"], env=env, capture_output=True, text=True)
    assert (allowed.stdout.strip(), denied.stdout.strip()) == ("yes", "no")


def test_kubectl_lists_the_plugin(cluster: Cluster) -> None:
    done = subprocess.run(
        [cluster.kubectl, "plugin", "list", "--name-only"],
        env=plugin_env(cluster.kubeconfig),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "kubectl-appid" in done.stdout


def test_rotate_revokes_the_token_and_the_operator_mints_and_proves_a_new_one_at_once(
    kube: Kube, cluster: Cluster, namespace: str, token_api: Callable[[Token], Any]
) -> None:
    create(kube, identity("rotated", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "rotated")
    old = secret_token(kube, namespace, "rotated-token")
    assert old is not None and whoami_status(token_api, old) == 200

    done = kubectl_appid(cluster, "rotate", "rotated", "-n", namespace)
    assert done.returncode == 0, done.stderr
    assert "old token revoked" in done.stdout and "new token valid until" in done.stdout
    assert "AccessVerified True" in done.stdout
    new = secret_token(kube, namespace, "rotated-token")
    assert new is not None and new != old
    assert old.value.rsplit(".", 1)[-1] not in done.stdout + done.stderr
    assert new.value.rsplit(".", 1)[-1] not in done.stdout + done.stderr
    assert whoami_status(token_api, new) == 200
    # Revoked with its Secret; the API server caches a token it accepted for up to 10 s.
    wait_until(lambda: whoami_status(token_api, old) == 401, 20, "the old token refused")

    obj = kube.get("AppIdentity", namespace, "rotated") or {}
    asked = obj["metadata"]["annotations"]["appidentity.dev/rotate"]
    assert obj["status"]["token"]["rotation"] == asked
    events = {e["reason"]: e["message"] for e in events_for(kube, namespace, "rotated")}
    assert asked in events["TokenRevoked"]
    assert "new token minted (rotation requested)" in events["TokenIssued"]


def test_a_token_secret_deleted_by_hand_is_said_so_when_its_token_is_minted_again(
    kube: Kube, namespace: str
) -> None:
    create(kube, identity("deleted", namespace, rules=[READ_CONFIGMAPS]))
    wait_ready(kube, namespace, "deleted")
    kube.delete("Secret", namespace, "deleted-token")

    def reissued() -> str:
        events = {e["reason"]: e["message"] for e in events_for(kube, namespace, "deleted")}
        return events.get("TokenIssued", "")

    message = wait_until(reissued, 60, "a TokenIssued Event")
    assert "the token Secret was deleted or emptied, revoking its token" in message
