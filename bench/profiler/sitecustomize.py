"""Opt-in, in-process profiling of the operator for `bench/run.py --profile` (py-spy is not
available here). Loaded by Python at start-up because bench/run.py puts this directory first on
the operator's PYTHONPATH; does nothing unless APPID_BENCH_PROFILE names an output file.

It changes no operator code and adds two observers:

* a CPU sampler: every few milliseconds it reads each thread's CPU time from
  /proc/self/task/<tid>/stat and, for threads that used CPU since the last tick, the Python
  stack from sys._current_frames(); samples are weighted by the CPU each thread used, so the
  totals are CPU seconds, by thread group and by function (self and cumulative);
* an API call log: `appidentity.kube.Http.request` is wrapped to count each call by method
  and path shape with its latency (names and tokens are never recorded).

Both perturb what they measure a little; headline figures come from runs without --profile.
"""

from __future__ import annotations

import atexit
import cProfile
import json
import os
import pstats
import re
import sys
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

OUT = os.environ.get("APPID_BENCH_PROFILE", "")
INTERVAL = float(os.environ.get("APPID_BENCH_PROFILE_INTERVAL", "0.01"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
_SHAPE = re.compile(
    r"/namespaces/[^/]+|/(?:serviceaccounts|secrets|roles|rolebindings|appidentities|clusterroles|clusterrolebindings)/[^/?]+"
)


def _group(name: str) -> str:
    for prefix, group in (
        ("MainThread", "main (asyncio: kopf, aiohttp, handlers)"),
        ("reconcile", "reconcile workers"),
        ("ThreadPoolExecutor", "per-verification SSAR pools / kopf sync handlers"),
        ("asyncio", "asyncio default executor"),
        ("appid-profiler", "profiler"),
    ):
        if name.startswith(prefix):
            return group
    return "other: " + re.sub(r"[-_]?\d+", "", name)


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/appidentity/" in filename:
        return "appidentity"
    return "stdlib/other: " + os.path.basename(filename)


def _by_owner(snap: tracemalloc.Snapshot) -> list[tuple[str, float, int]]:
    """Live memory by the innermost frame of the operator's own code that led to it (else of
    kopf, else the allocation site): who keeps what, where the allocation site (json's decoder,
    a dataclass's __init__) does not say."""
    sizes: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    for stat in snap.statistics("traceback"):
        frames = list(reversed(stat.traceback))  # innermost first
        owner = next((f for f in frames if "/appidentity/" in f.filename), None)
        owner = owner or next((f for f in frames if "/kopf/" in f.filename), frames[0])
        where = f"{owner.filename.rsplit('site-packages/', 1)[-1].rsplit('/operator/', 1)[-1]}:{owner.lineno}"
        sizes[where][0] += stat.size
        sizes[where][1] += stat.count
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1][0])[:40]
    return [(k, round(v[0] / 2**20, 2), v[1]) for k, v in ranked]  # fmt: skip


def _shape(path: str) -> str:
    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        return text.rsplit("/", 1)[0] + "/*"

    return _SHAPE.sub(repl, path.split("?", 1)[0])


class Profiler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True, name="appid-profiler")
        self.cpu_by_group: defaultdict[str, float] = defaultdict(float)
        self.self_time: defaultdict[str, float] = defaultdict(float)
        self.cum_time: defaultdict[str, float] = defaultdict(float)
        self.stacks: defaultdict[str, float] = defaultdict(float)
        self.last: dict[int, float] = {}
        self.ticks = 0
        self.started = time.monotonic()
        self.api_calls: Counter[str] = Counter()
        self.api_seconds: defaultdict[str, float] = defaultdict(float)
        self.api_lock = threading.Lock()

    @staticmethod
    def _thread_cpu(tid: int) -> float | None:
        """CPU seconds of one thread: schedstat has nanoseconds, stat only clock ticks."""
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def run(self) -> None:
        me = threading.get_ident()
        while True:
            time.sleep(INTERVAL)
            self.ticks += 1
            frames = sys._current_frames()
            threads = {t.ident: t for t in threading.enumerate()}
            for ident, frame in frames.items():
                thread = threads.get(ident)
                if thread is None or thread.native_id is None:
                    continue
                cpu = self._thread_cpu(thread.native_id)
                if cpu is None:
                    continue
                used = cpu - self.last.get(thread.native_id, cpu)
                self.last[thread.native_id] = cpu
                if used <= 0:
                    continue
                group = _group(thread.name)
                self.cpu_by_group[group] += used
                if ident == me:
                    continue
                names = []
                f: Any = frame
                while f is not None:
                    code = f.f_code
                    mod = os.path.basename(code.co_filename)
                    names.append(f"{mod}:{code.co_name}")
                    f = f.f_back
                if not names:
                    continue
                self.self_time[names[0]] += used
                for name in set(names):
                    self.cum_time[name] += used
                self.stacks[group + " | " + " < ".join(names[:6])] += used

    def record_call(self, method: str, path: str, seconds: float) -> None:
        key = f"{method} {_shape(path)}"
        with self.api_lock:
            self.api_calls[key] += 1
            self.api_seconds[key] += seconds

    def dump(self) -> None:
        def top(c: dict[str, float], n: int) -> list[tuple[str, float]]:
            return [(k, round(v, 3)) for k, v in sorted(c.items(), key=lambda kv: -kv[1])[:n]]

        data = {
            "wall_seconds": round(time.monotonic() - self.started, 2),
            "ticks": self.ticks,
            "cpu_by_thread_group": top(self.cpu_by_group, 20),
            "self": top(self.self_time, 80),
            "cumulative": top(self.cum_time, 200),
            "stacks": top(self.stacks, 40),
            "api_calls": {
                k: {"count": v, "seconds": round(self.api_seconds[k], 3)}
                for k, v in self.api_calls.most_common()
            },
        }
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            snap = tracemalloc.take_snapshot()
            by_file = snap.statistics("filename")
            packages: defaultdict[str, float] = defaultdict(float)
            for stat in by_file:
                packages[_package(stat.traceback[0].filename)] += stat.size
            data["python_heap"] = {
                "traced_mib_at_exit": round(current / 2**20, 1),
                "traced_peak_mib": round(peak / 2**20, 1),
                "by_package_mib": [
                    (k, round(v / 2**20, 2)) for k, v in sorted(packages.items(), key=lambda kv: -kv[1])[:15]
                ],
                "by_line": [
                    (f"{s.traceback[0].filename.rsplit('site-packages/', 1)[-1]}:{s.traceback[0].lineno}", round(s.size / 2**20, 2), s.count)
                    for s in snap.statistics("lineno")[:30]
                ],
                "by_owner": _by_owner(snap),
            }  # fmt: skip
        if CPROFILE:
            data["cprofile"] = _cprofile_summary()
        with open(OUT, "w") as f:
            json.dump(data, f, indent=1)


CPROFILE = bool(os.environ.get("APPID_BENCH_CPROFILE"))
_profiles: dict[str, list[cProfile.Profile]] = defaultdict(list)
_local = threading.local()


def _thread_profile(group: str) -> cProfile.Profile:
    """One deterministic profiler per thread, timing that thread's CPU (thread_time)."""
    prof: cProfile.Profile | None = getattr(_local, "prof", None)
    if prof is None:
        prof = cProfile.Profile(timer=time.thread_time)
        _local.prof = prof
        _profiles[group].append(prof)
    return prof


def _profiled(group: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kw: Any) -> Any:
        prof = _thread_profile(group)
        prof.enable()
        try:
            return fn(*args, **kw)
        finally:
            prof.disable()

    return wrapper


def _cprofile_summary() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group, profs in _profiles.items():
        for prof in profs:
            prof.disable()
        stats = pstats.Stats(*profs)
        rows = []
        for (filename, line, func), (
            _cc,
            ncalls,
            tottime,
            cumtime,
            _callers,
        ) in stats.stats.items():  # type: ignore[attr-defined]
            where = filename.rsplit("site-packages/", 1)[-1].rsplit("/operator/", 1)[-1]
            rows.append((f"{where}:{line}:{func}", ncalls, round(tottime, 3), round(cumtime, 3)))
        out[group] = {
            "total_cpu_seconds": round(sum(r[2] for r in rows), 2),
            "by_self": sorted(rows, key=lambda r: -r[2])[:40],
            "by_cumulative": sorted(rows, key=lambda r: -r[3])[:80],
        }
    return out


def _install() -> None:
    if os.environ.get("APPID_BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["APPID_BENCH_TRACEMALLOC"]))
    profiler = Profiler()
    profiler.start()
    atexit.register(profiler.dump)
    if CPROFILE:
        _thread_profile("main thread (kopf, asyncio)").enable()
    try:
        from appidentity import kube, turns
        from appidentity.verify import run as verify_run
    except Exception:  # not the operator's interpreter: profile CPU only
        return
    if CPROFILE:
        turns.cycle = _profiled("reconcile (turns.cycle)", turns.cycle)
        verify_run._ask = _profiled("SSAR pool (verify._ask)", verify_run._ask)
    original = kube.Http.request

    def request(self: Any, method: str, path: str, **kw: Any) -> Any:
        started = time.monotonic()
        try:
            return original(self, method, path, **kw)
        finally:
            profiler.record_call(method, path, time.monotonic() - started)

    kube.Http.request = request  # type: ignore[method-assign]


if OUT:
    _install()
