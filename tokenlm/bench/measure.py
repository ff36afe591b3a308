"""Measuring for the benchmarks: best-of-N wall and CPU time, peak resident memory, and workers that run
each measurement in a fresh interpreter (``tokenlm.bench.worker``) so that its peak memory is its own."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path


def ratio(a: float, b: float, digits: int = 2) -> float | None:
    """a / b rounded, or None when b is zero (a run too short for the clock)."""
    return round(a / b, digits) if b > 0 else None


def bench_threads() -> int:
    """Threads per benchmark process: $TOKENLM_BENCH_THREADS, default 1.

    Why 1: this machine's 2 cores are shared with training jobs; a multi-threaded op waits at a barrier
    for a thread that is not scheduled, which punishes many small ops (our search) far more than a few big
    ones (the matmuls) and makes the comparison meaningless. One thread compares the algorithms.
    """
    import os

    return int(os.environ.get("TOKENLM_BENCH_THREADS", "1"))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(fn, repeats: int) -> dict:
    """Run ``fn`` ``repeats`` times: best and all wall times (s), best CPU time of the process (s), and the
    peak extra RSS of the first run (MB)."""
    gc.collect()
    exact_peak = _reset_peak()
    base = _status_kb("VmRSS")
    times, cpu = [], []
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if i == 0:
            peak = _status_kb("VmHWM") - base
        del result
    return {
        "time_s": round(min(times), 6),
        "cpu_s": round(min(cpu), 6),
        "times_s": [round(t, 6) for t in times],
        "peak_mb": round(peak / 1024, 1),
        "peak_exact": exact_peak,
    }


def spawn(kind: str, spec: dict, env: dict | None = None) -> dict:
    """Run the worker ``kind`` (``tokenlm.bench.worker.WORKERS``) in a fresh interpreter; its last stdout line
    is the JSON result. A failed worker gives ``{"error": <its last stderr line>}``."""
    cmd = [sys.executable, "-m", "tokenlm.bench.worker", kind, json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])
