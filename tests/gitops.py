"""What GitOps tools make of an AppIdentity, asked of the tools' own code: kstatus (the Go
library Flux uses, compiled by hack/build-kstatus.sh) and Argo CD's Lua health check
(deploy/argocd/health.lua, run in a real Lua 5.1 like Argo CD's)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
HEALTH_LUA = REPO / "deploy" / "argocd" / "health.lua"
ARGOCD_CM = REPO / "deploy" / "argocd" / "argocd-cm.yaml"
HEALTH_KEY = "resource.customizations.health.appidentity.dev_AppIdentity"
FIXTURES = REPO / "tests" / "fixtures" / "argocd"
HEALTH_TESTS = FIXTURES / "health_test.yaml"
RECORD_ENV = "APPID_RECORD_ARGOCD_FIXTURES"


@cache
def kstatus_binary() -> str:
    """hack/build-kstatus.sh's binary: compiled once into the cache, then found at once."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "build-kstatus.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"hack/build-kstatus.sh failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def kstatus(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) as kstatus' status.Compute judges the object."""
    done = subprocess.run(
        [kstatus_binary()],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    verdict = json.loads(done.stdout)
    return verdict["status"], verdict["message"]


def argocd_health(obj: Mapping[str, Any], script: str | None = None) -> tuple[str, str]:
    """(status, message) from the health check, run as Argo CD runs it: the object as the global
    `obj`, the script's return value as the result."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=False)
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return str(result["status"]), str(result["message"])


def record_fixture(case: str, obj: Mapping[str, Any], status: str, message: str) -> None:
    """With APPID_RECORD_ARGOCD_FIXTURES=1, keeps a live object and its health as a fixture for
    the unit tests (like Argo CD's own testdata and health_test.yaml)."""
    if os.environ.get(RECORD_ENV) != "1":
        return
    meta = obj["metadata"]
    kept = {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {k: meta[k] for k in ("name", "namespace", "generation") if k in meta},
        "spec": obj.get("spec", {}),
        "status": obj.get("status", {}),
    }
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / f"{case}.yaml").write_text(yaml.safe_dump(kept, sort_keys=False))
    tests = yaml.safe_load(HEALTH_TESTS.read_text()) if HEALTH_TESTS.exists() else {}
    entries = [t for t in (tests or {}).get("tests", []) if t["inputPath"] != f"{case}.yaml"]
    entries.append(
        {"healthStatus": {"status": status, "message": message}, "inputPath": f"{case}.yaml"}
    )
    entries.sort(key=lambda t: t["inputPath"])
    HEALTH_TESTS.write_text(yaml.safe_dump({"tests": entries}, sort_keys=False, width=200))
