"""`make bench-usage`: `appidentity-operator usage` on a generated audit log of at least 1 GB
and at a tenth of that size (plain and gzipped): wall time, MB/s (of the log as read, after
gunzip) and peak RSS of the command, beside the targets.

The log is made from Events the local API server really wrote (templates: an audit log of
`hack/cluster.sh`, by default the 1.37.2 fixture under tests/fixtures/audit): each generated
Event is a template with other values, never another shape: another ServiceAccount (user,
groups, uid, credential id), namespace (objectRef and requestURI), object name, audit id and
time. About 1% of the Events are the measured identity's own, as in a cluster with many
workloads. Generated files go to .state/bench-usage/ (git-ignored) and are reused when present.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".state" / "bench-usage"
TEMPLATES = REPO / "tests" / "fixtures" / "audit" / "kube-apiserver-1.37.2.jsonl"
TARGET_MBPS, TARGET_RSS_MIB = 100.0, 150.0
IDENTITY_NS, IDENTITY = "bench", "app"
ALL = ["get", "list", "watch", "create", "update", "patch", "delete"]
SPEC = {
    "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ALL},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    ]
}
START = datetime(2026, 11, 1, tzinfo=UTC)
SPAN = timedelta(days=30)


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def retarget(event: dict[str, Any], ns: str, sa: str, at: datetime, rng: random.Random) -> str:
    """The template as if another ServiceAccount had made the request in another namespace."""
    e = json.loads(json.dumps(event))
    old_user = e["user"]["username"]
    old_ns = old_user.split(":")[2]
    e["user"]["username"] = f"system:serviceaccount:{ns}:{sa}"
    e["user"]["groups"] = [g.replace(old_ns, ns) for g in e["user"].get("groups", [])]
    e["user"]["uid"] = str(uuid.UUID(int=rng.getrandbits(128)))
    if "extra" in e["user"]:
        jti = uuid.UUID(int=rng.getrandbits(128))
        e["user"]["extra"]["authentication.kubernetes.io/credential-id"] = [f"JTI={jti}"]
    e["auditID"] = str(uuid.UUID(int=rng.getrandbits(128)))
    ref = e.get("objectRef") or {}
    if ref.get("namespace"):
        e["requestURI"] = e["requestURI"].replace(
            f"/namespaces/{ref['namespace']}/", f"/namespaces/{ns}/"
        )
        ref["namespace"] = ns
    if ref.get("name") and not ref.get("resource", "").startswith("selfsubject"):
        name = f"{ref['name'].split('-')[0]}-{rng.randrange(1000)}"
        e["requestURI"] = e["requestURI"].replace(f"/{ref['name']}", f"/{name}", 1)
        ref["name"] = name
    took = timedelta(microseconds=rng.randrange(200, 20_000))
    e["requestReceivedTimestamp"], e["stageTimestamp"] = stamp(at), stamp(at + took)
    return json.dumps(e, separators=(",", ":"))


def generate(path: Path, events: int, templates: list[dict[str, Any]], seed: int) -> None:
    """`events` Events, 1% of them the identity's own (its templates: those of one real SA)."""
    if path.exists() and path.stat().st_size > 0:
        return
    rng = random.Random(seed)
    own_user = max(
        {t["user"]["username"] for t in templates}, key=lambda u: ("kube-system" not in u, u)
    )
    own = [t for t in templates if t["user"]["username"] == own_user]
    others = [t for t in templates if t["user"]["username"] != own_user] + own
    namespaces = [f"team-{i}" for i in range(50)]
    step = SPAN / events
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for i in range(events):
            at = START + step * i
            if rng.random() < 0.01:
                line = retarget(rng.choice(own), IDENTITY_NS, IDENTITY, at, rng)
            else:
                ns = rng.choice(namespaces)
                line = retarget(rng.choice(others), ns, f"sa-{rng.randrange(20)}", at, rng)
            out.write(line + "\n")
    tmp.rename(path)


def measure(log: Path, identity: Path) -> dict[str, Any]:
    """One run of the command as a user would run it; its peak RSS from its own rusage (the
    child is reaped with wait4, so no other process counts)."""
    argv = [
        sys.executable,
        "-m",
        "appidentity",
        "usage",
        IDENTITY,
        "-n",
        IDENTITY_NS,
        "-f",
        str(identity),
        "--audit-log",
        str(log),
        "--force",
        "-o",
        "json",
    ]
    report_file = OUT / "report.json"
    with report_file.open("wb") as out:
        began = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out)
        _pid, status, rusage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"usage exited {proc.returncode} on {log}")
    report = json.loads(report_file.read_text())
    size = report["events"]["bytes"]  # as read: a gzipped file's uncompressed bytes
    return {
        "file": str(log.relative_to(REPO)),
        "file_bytes": log.stat().st_size,
        "bytes": size,
        "events": report["events"]["read"],
        "identity_requests": sum(e["count"] for e in report["entries"])
        + sum(d["count"] for d in report["denied"])
        + sum(o["count"] for o in report["outsideSpec"]),
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / 1e6 / seconds, 1),
        "peak_rss_mib": round(rusage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=1_100_000, help="Events in the large log")
    p.add_argument(
        "--templates",
        type=Path,
        default=TEMPLATES,
        help="an audit log of the local API server (JSON lines) to take shapes from",
    )
    p.add_argument("--seed", type=int, default=21)
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    templates = [json.loads(line) for line in args.templates.read_text().splitlines() if line]
    identity = OUT / "identity.json"
    meta = {"name": IDENTITY, "namespace": IDENTITY_NS, "creationTimestamp": stamp(START)}
    identity.write_text(json.dumps({"kind": "AppIdentity", "metadata": meta, "spec": SPEC}))
    load = Path("/proc/loadavg").read_text().split()[:3]
    rows = []
    for events in (args.events // 10, args.events):
        log = OUT / f"audit-{events}.jsonl"
        began = time.perf_counter()
        generate(log, events, templates, args.seed)
        print(
            f"{log.relative_to(REPO)}: {log.stat().st_size / 1e9:.2f} GB "
            f"(made or reused in {time.perf_counter() - began:.0f}s)",
            file=sys.stderr,
        )
        # Once to warm the page cache: the figure is the reader's, not the disk's.
        measure(log, identity)
        rows.append(measure(log, identity))
    small = OUT / f"audit-{args.events // 10}.jsonl"
    packed = small.with_suffix(".jsonl.gz")
    if not packed.exists():
        with small.open("rb") as src, gzip.open(packed.with_suffix(".tmp"), "wb", 6) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        packed.with_suffix(".tmp").rename(packed)
    measure(packed, identity)
    rows.append(measure(packed, identity))
    print(f"{'log':<34} {'events':>10} {'GB':>6} {'own':>7} {'s':>7} {'MB/s':>7} {'RSS MiB':>8}")
    for r in rows:
        print(
            f"{r['file']:<34} {r['events']:>10} {r['bytes'] / 1e9:>6.2f} {r['identity_requests']:>7} "
            f"{r['seconds']:>7.2f} {r['mb_per_s']:>7.1f} {r['peak_rss_mib']:>8.1f}"
        )
    # MB/s is judged on the >= 1 GB log; on the smaller ones the ~0.6 s start-up (interpreter,
    # imports) weighs in. RSS is judged at every size.
    worst_speed = rows[1]["mb_per_s"]
    worst_rss = max(r["peak_rss_mib"] for r in rows)
    print(
        f"target: >= {TARGET_MBPS:.0f} MB/s on the >= 1 GB log -> {worst_speed:.1f} {'ok' if worst_speed >= TARGET_MBPS else 'MISS'}; "
        f"peak RSS <= {TARGET_RSS_MIB:.0f} MiB -> {worst_rss:.1f} {'ok' if worst_rss <= TARGET_RSS_MIB else 'MISS'}; "
        f"RSS large/small {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}"
    )
    print(f"load average before the runs: {load}")
    (OUT / "results.json").write_text(json.dumps({"load": load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
