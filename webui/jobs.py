"""The job runner: sampling in a worker thread, live previews, Stop.

A handler hands ``JobRunner.run`` a ``work(on_step)`` function that does the
sampling (one or several ``core.generate_images`` calls, passing
``on_step`` as their callback). The worker waits for a device slot (at most
``--concurrency`` jobs sample at once), and the handler's generator receives
``Tick`` (status text, sometimes preview images), then ``Done`` or
``Cancelled``. Stop (or a closed page) sets the job's event; the next step
raises ``JobCancelled`` in the worker, so a stopped job frees its slot within
one step.

The sampling itself runs on ``DeviceThreads``: a few long-lived threads, the only ones in the
process whose torch uses more than one CPU thread (why: ``DeviceThreads``).
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import core  # a lazy package: torch loads at the first preview, not when web.py starts
from webui.validation import format_eta


class JobCancelled(Exception):
    pass


@dataclass
class Tick:
    """An update for the page while a job runs: status text, and preview images now and then."""

    status: str
    preview: list | None = None  # gallery items [(uint8 image, caption)]
    step: int = 0
    total: int = 0


@dataclass
class Done:
    result: Any
    elapsed: float


@dataclass
class Cancelled:
    elapsed: float


class DeviceThreads:
    """Where the app's sampling runs: ``size`` long-lived threads whose torch uses ``threads`` CPU threads.

    Not a new thread per job, and not more than one CPU thread anywhere else: PyTorch's CPU kernels run
    on GNU OpenMP, which keeps a team of threads for every thread that starts parallel work, and stops
    spin-waiting between parallel regions once the process holds more OpenMP threads than cores. With a
    model loaded on the main thread and sampling on a worker, every short kernel then pays a wake-up:
    1.6x slower on 2 cores (``benchmarks/bench_threads.py``). So these threads set their own thread
    count, and every other thread (the main thread, gradio's handlers) keeps torch's default of one
    and starts no team. ``threads`` None (a GPU): torch's settings are left alone."""

    def __init__(self, size: int = 1, threads: int | None = None):
        self.threads = threads
        self._tasks: "queue.Queue[tuple[Callable[..., Any], tuple, dict, Future]]" = queue.Queue()
        for i in range(size):  # daemons, unlike a ThreadPoolExecutor's: Ctrl-C never waits for a long job
            threading.Thread(target=self._serve, name=f"device-{i}", daemon=True).start()

    def _serve(self) -> None:
        if self.threads:
            import torch

            torch.get_num_threads()  # torch's first look in a thread copies its default: take it now, not later
            torch.set_num_threads(self.threads)  # this thread's OpenMP team; torch's default for new threads too,
            other = threading.Thread(target=torch.set_num_threads, args=(1,))  # so set that back to one, from a
            other.start()  # thread of its own (the setting is per thread: this one keeps its own)
            other.join()
        while True:
            fn, args, kwargs, future = self._tasks.get()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # raised again in the caller's thread
                future.set_exception(e)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on a device thread; its result, or its exception raised here."""
        future: Future = Future()
        self._tasks.put((fn, args, kwargs, future))
        return future.result()


class JobRunner:
    """Device slots and per-session stop events, shared by every tab that samples."""

    def __init__(self, concurrency: int = 1, threads: int | None = None):
        self.concurrency = concurrency
        self.slots = threading.BoundedSemaphore(concurrency)
        # one device thread per slot: a job holds its slot while it samples, so one is always free for it
        self.device = DeviceThreads(concurrency, threads)
        self._stops: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- stop handling
    def register(self, session: str, ev: threading.Event) -> None:
        with self._lock:
            self._stops.setdefault(session, set()).add(ev)

    def unregister(self, session: str, ev: threading.Event) -> None:
        with self._lock:
            evs = self._stops.get(session)
            if evs is not None:
                evs.discard(ev)
                if not evs:
                    del self._stops[session]

    def stop(self, session: str) -> str:
        with self._lock:
            evs = list(self._stops.get(session, ()))
        for ev in evs:
            ev.set()
        return "Stopping at the next step..." if evs else "Nothing is running."

    # ----------------------------------------------------------------- running
    def run(self, work: Callable[[Callable[[Any], None]], Any], *, session: str, total_steps: int,
            start_text: str, progress=None, preview_every: int | None = None) -> Iterator[Tick | Done | Cancelled]:
        """Run ``work(on_step)`` in a worker thread; yield ``Tick``s, then ``Done`` or ``Cancelled``.

        ``total_steps`` is the number of sampler steps over the whole job (a
        grid runs several samplers one after another); previews come every
        ``preview_every`` steps (default: about ten per job) and at the end.
        Errors in ``work`` are raised here, in the handler's thread.
        """
        stop = threading.Event()
        self.register(session, stop)
        try:
            yield from self._run(work, stop, session, max(1, total_steps), start_text, progress,
                                 preview_every or max(1, round(total_steps / 10)))
        finally:
            stop.set()  # a closed/cancelled generator stops its worker at the next step
            self.unregister(session, stop)

    def _run(self, work, stop: threading.Event, session: str, total: int, start_text: str, progress,
             preview_every: int) -> Iterator[Tick | Done | Cancelled]:
        events: "queue.Queue[tuple]" = queue.Queue()
        done_steps = [0]

        def on_step(info) -> None:
            if stop.is_set():
                raise JobCancelled()
            done_steps[0] += 1
            k = done_steps[0]
            last = info.step + 1 == info.num_steps
            if info.step == 0 or k % preview_every == 0 or last:
                events.put(("preview", k, info.timestep, core.to_uint8(info.x0_pred)))
            else:
                events.put(("step", k, info.timestep, None))

        def worker_main() -> None:
            try:
                while not self.slots.acquire(timeout=0.1):  # wait for the device (a stopped job frees it fast)
                    if stop.is_set():
                        raise JobCancelled()
                try:
                    if stop.is_set():
                        raise JobCancelled()
                    events.put(("start", time.monotonic()))
                    res = self.device.run(work, on_step)
                finally:
                    self.slots.release()
                events.put(("done", res))
            except JobCancelled:
                events.put(("cancelled",))
            except BaseException as e:  # reported to the generator below
                events.put(("error", e))

        worker = threading.Thread(target=worker_main, name=f"sample-{session[:8]}", daemon=True)
        t_click = time.monotonic()
        t_start = None
        status = f"Waiting for the device ({self.concurrency} job(s) at a time)..."
        last_status = status
        worker.start()
        yield Tick(status)
        while True:
            try:
                msg = events.get(timeout=0.25)
            except queue.Empty:
                if status != last_status:  # heartbeat: lets a cancel land within ~0.25 s
                    last_status = status
                    yield Tick(status)
                elif not worker.is_alive() and events.empty():
                    raise RuntimeError("the sampling thread ended unexpectedly")
                continue
            kind = msg[0]
            if kind == "start":
                t_start = msg[1]
                status = start_text
            elif kind in ("step", "preview"):
                _, k, t, x0 = msg
                now = time.monotonic()
                eta = (now - (t_start or t_click)) / k * max(0, total - k)
                status = f"Step {k}/{total} (t={t}) · {now - t_click:.1f} s elapsed · ETA {format_eta(eta)}"
                if progress is not None:
                    progress((min(k, total), total), desc=f"Sampling, ETA {format_eta(eta)}", unit="steps")
                if kind == "preview":
                    last_status = status
                    yield Tick(status, [(img, f"step {k}/{total}, t={t}") for img in x0], k, total)
            elif kind == "cancelled":
                yield Cancelled(time.monotonic() - t_click)
                return
            elif kind == "error":
                raise msg[1]
            elif kind == "done":
                yield Done(msg[1], time.monotonic() - t_click)
                return


def session_of(request: Any) -> str:
    """The browser session a request came from (each REST call without one is its own session)."""
    return getattr(request, "session_hash", None) or f"anon-{uuid.uuid4().hex}"
