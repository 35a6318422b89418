#!/usr/bin/env python3
"""Load on the Gradio app: N concurrent gradio_client clients, M generate
requests each, against web.py on a tiny 16 px untrained model (loopback only).

    python -m benchmarks.bench_web_load [--queues 8 64] [--clients 20] [--requests 3] [--steps 5]
                                        [--timeout 120] [--json results.json]

For each --max-queue value a fresh ``web.py --concurrency 1 --threads 1`` is
started in a temp model store (tests/web_helpers.py, the same tiny model the
tests use). All clients are created first, then released together (a barrier);
each sends its requests one after another (DPM-Solver++, 5 steps, 1 or 2
images, so the device time per job is well under a second). Every request ends
in exactly one of:
    ok          the job finished: "Done" and the right number of images
    queue full  refused at once with gradio's explicit "Queue is full" error
    other       any other error (a failure: nothing else is expected)
    hung        no answer within --timeout s (a failure: a lost request)

Printed per queue size: counts, wall time, latency percentiles (click to final
result, as the client sees it; refusals separately) and the server's memory
(VmRSS before the storm, the highest VmRSS sampled every 50 ms during it, and
the process's lifetime peak VmHWM, which includes the text encoder's load).

``run_storm`` is also used by tests/test_web_load.py, which asserts on it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gradio_client import Client

from benchmarks import app_server as wh


PROMPTS = ("a photo of a goldfish", "a photo of a jellyfish", "a photo of a ladybug")


@dataclass
class Outcome:
    client: int
    request: int
    kind: str  # "ok" | "queue_full" | "other" | "hung"
    latency_s: float
    detail: str = ""


@dataclass
class StormResult:
    clients: int
    per_client: int
    max_queue: int | None
    wall_s: float
    outcomes: list[Outcome]
    rss_before_mb: float | None = None
    rss_peak_mb: float | None = None
    hwm_mb: float | None = None
    extra: dict = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    @property
    def lost(self) -> int:
        return len(self.outcomes) - self.count("ok") - self.count("queue_full")

    def latencies(self, kind: str = "ok") -> list[float]:
        return sorted(o.latency_s for o in self.outcomes if o.kind == kind)

    def summary(self) -> dict[str, Any]:
        ok = percentiles(self.latencies("ok"))
        refused = percentiles(self.latencies("queue_full"))
        return {
            "max_queue": self.max_queue, "clients": self.clients, "per_client": self.per_client,
            "sent": len(self.outcomes), "ok": self.count("ok"), "queue_full": self.count("queue_full"),
            "other": self.count("other"), "hung": self.count("hung"), "lost": self.lost,
            "wall_s": round(self.wall_s, 2),
            "ok_latency_s": ok, "refusal_latency_s": refused,
            "rss_before_mb": self.rss_before_mb, "rss_peak_mb": self.rss_peak_mb, "hwm_mb": self.hwm_mb,
            "other_details": sorted({o.detail for o in self.outcomes if o.kind in ("other", "hung")})[:10],
            **self.extra,
        }


def percentiles(xs: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max by linear interpolation between ranks (numpy's default)."""
    if not xs:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    xs = sorted(xs)

    def q(p: float) -> float:
        k = (len(xs) - 1) * p
        lo = int(k)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"n": len(xs), "p50": round(q(0.5), 3), "p90": round(q(0.9), 3), "p99": round(q(0.99), 3),
            "max": round(xs[-1], 3)}


# --------------------------------------------------------------------------- server memory
def proc_status_mb(pid: int, key: str) -> float | None:
    """VmRSS / VmHWM of a process from /proc (Linux), in MiB; None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


class RssSampler:
    """Samples a process's VmRSS every ``every_s`` in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, pid: int | None, every_s: float = 0.05):
        self.pid, self.every_s = pid, every_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_mb(self.pid, "VmRSS") if self.pid else None
            if rss is not None:
                self.peak_mb = rss if self.peak_mb is None else max(self.peak_mb, rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- the storm
def generate_args(client: int, request: int, steps: int = 5, model: str = "tiny") -> list:
    """A small, valid generate request: DPM-Solver++, ``steps`` steps, 1 or 2 images."""
    return [PROMPTS[(client + request) % len(PROMPTS)], model, "DPM-Solver++", steps, 3.0,
            1000 * client + request, 1 + (client + request) % 2, False]


def classify(exc: BaseException) -> tuple[str, str]:
    from gradio_client.utils import QueueError

    msg = f"{type(exc).__name__}: {str(exc)[:200]}"
    if isinstance(exc, QueueError) and "queue is full" in str(exc).lower():
        return "queue_full", msg
    if isinstance(exc, TimeoutError):
        return "hung", msg
    return "other", msg


def run_storm(make_client: Callable[[], Any], *, clients: int = 20, per_client: int = 3, steps: int = 5,
              timeout_s: float = 120.0, server_pid: int | None = None, max_queue: int | None = None,
              model: str = "tiny") -> StormResult:
    """``clients`` threads, each with its own gradio_client Client, each sending
    ``per_client`` generate requests in a row; all start together. Bounded: a
    request that has no answer after ``timeout_s`` is cancelled and counted as
    hung, and the whole storm ends within about per_client * timeout_s."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(clients, 8)) as pool:  # connecting is not what is measured
        conns = list(pool.map(lambda _: make_client(), range(clients)))
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def one_client(i: int) -> None:
        c = conns[i]
        barrier.wait(timeout=60)
        for j in range(per_client):
            args = generate_args(i, j, steps, model)
            t0 = time.monotonic()
            job = None
            try:
                job = c.submit(*args, api_name="/generate")
                out = job.result(timeout=timeout_s)
                n = len(out[0] or [])
                if "Done" in str(out[1]) and n == args[6]:
                    kind, detail = "ok", ""
                else:
                    kind, detail = "other", f"unexpected result: {n} images, status {str(out[1])[:120]!r}"
            except BaseException as e:  # noqa: BLE001 - every outcome is recorded
                kind, detail = classify(e)
                if kind == "hung" and job is not None:
                    try:
                        job.cancel()
                    except Exception:  # noqa: BLE001
                        pass
            with lock:
                outcomes.append(Outcome(i, j, kind, time.monotonic() - t0, detail))

    threads = [threading.Thread(target=one_client, args=(i,), name=f"load-client-{i}", daemon=True)
               for i in range(clients)]
    rss_before = proc_status_mb(server_pid, "VmRSS") if server_pid else None
    for t in threads:
        t.start()
    with RssSampler(server_pid) as sampler:
        barrier.wait(timeout=60)
        t0 = time.monotonic()
        deadline = t0 + per_client * (timeout_s + 10)
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        wall = time.monotonic() - t0
    with lock:
        got = list(outcomes)
    done = {(o.client, o.request) for o in got}
    for i in range(clients):  # a thread still stuck past the deadline: its remaining requests are lost
        for j in range(per_client):
            if (i, j) not in done:
                got.append(Outcome(i, j, "hung", wall, "no outcome before the storm's deadline"))
    for c in conns:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass
    hwm = proc_status_mb(server_pid, "VmHWM") if server_pid else None
    return StormResult(clients, per_client, max_queue, wall, sorted(got, key=lambda o: (o.client, o.request)),
                       rss_before_mb=rss_before, rss_peak_mb=sampler.peak_mb, hwm_mb=hwm)


def format_table(results: list[StormResult]) -> str:
    def f(x) -> str:
        return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))

    head = ("| max-queue | sent | ok | queue full | lost (other+hung) | wall s | ok p50 s | p90 s | p99 s | max s "
            "| refusal p50 s | refusal max s | RSS before MB | RSS peak MB | VmHWM MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s = r.summary()
        ok, rf = s["ok_latency_s"], s["refusal_latency_s"]
        lines.append(
            f"| {r.max_queue} | {s['sent']} | {s['ok']} | {s['queue_full']} | {s['lost']} "
            f"({s['other']}+{s['hung']}) | {f(s['wall_s'])} | {f(ok['p50'])} | {f(ok['p90'])} | {f(ok['p99'])} "
            f"| {f(ok['max'])} | {f(rf['p50'])} | {f(rf['max'])} | {f(s['rss_before_mb'])} "
            f"| {f(s['rss_peak_mb'])} | {f(s['hwm_mb'])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queues", type=int, nargs="+", default=[8, 64], help="--max-queue values to try")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    p.add_argument("--download", action="store_true",
                   help="clients download the result files too (default: no, as in tests/test_web_load.py: the "
                        "latency is the server's answer, not copying PNGs on a busy machine)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_web_load_") as tmp:
        apps = [wh._launch(Path(tmp) / f"q{q}", ["--max-queue", str(q), "--concurrency", "1"])
                for q in a.queues]
        try:
            for q, app in zip(a.queues, apps):
                app.server.wait_ready()
                print(f"[bench] max-queue {q}: server pid {app.server.proc.pid} ready after "
                      f"{app.server.ready_after_s:.1f} s", flush=True)
            for q, app in zip(a.queues, apps):
                dl = str(Path(tmp) / f"downloads-q{q}") if a.download else False

                def make_client(app=app, dl=dl):
                    return Client(app.url, verbose=False, analytics_enabled=False, download_files=dl)

                load = round(os.getloadavg()[0], 2)
                r = run_storm(make_client, clients=a.clients, per_client=a.requests, steps=a.steps,
                              timeout_s=a.timeout, server_pid=app.server.proc.pid, max_queue=q)
                after = app.client().predict(*generate_args(0, 99, a.steps), api_name="/generate")
                r.extra["loadavg_before"] = load
                r.extra["after_storm_ok"] = "Done" in str(after[1])
                r.extra["server_alive"] = app.server.proc.poll() is None
                results.append(r)
                print(f"[bench] max-queue {q}: {json.dumps(r.summary())}", flush=True)
        finally:
            for app in apps:
                app.server.stop()
    print()
    print(f"{a.clients} clients x {a.requests} requests, DPM-Solver++ {a.steps} steps, 1-2 images of 16 px, "
          f"web.py --concurrency 1 --threads 1, loopback, result files "
          f"{'downloaded' if a.download else 'not downloaded'}; {os.cpu_count()} CPUs, load average before each "
          f"storm: {', '.join(str(r.extra['loadavg_before']) for r in results)}")
    print(format_table(results))
    if a.json:
        Path(a.json).write_text(json.dumps([r.summary() for r in results], indent=2))
    bad = [r for r in results if r.lost or not r.extra.get("after_storm_ok")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
