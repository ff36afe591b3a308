"""``tokenlm bench demo``: the demo under load. N concurrent loopback requests (default 20) to its compression
endpoint, then N to one task endpoint (speech recognition): errors, p50/p95 latency, and the server's memory.

The server runs as ``tokenlm demo`` in a process of its own, so the peak resident memory read from its
/proc status is the server's alone; the requests come from gradio_client threads in this process, to
127.0.0.1 only, all released at once. The demo's queue runs the codec two requests at a time and the LM one
at a time, so latency grows with the queue and memory does not (that is the point of the queue).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tokenlm.errors import TokenlmError

SPEECH = Path(__file__).resolve().parent.parent / "examples" / "speech.flac"
START_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict:
    """Resident memory of process ``pid`` now and at its peak, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[f].split()[0]) / 1024, 1) for k, f in (("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"))}


def start_server(model: str, port: int) -> subprocess.Popen:
    """``tokenlm demo`` on 127.0.0.1:``port``; returns once the page answers."""
    cmd = [sys.executable, "-m", "tokenlm.cli", "demo", "--host", "127.0.0.1", "--port", str(port), "--model", model]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads would stall a chatty server
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            last = (log.read().strip().splitlines() or ["no output"])[-1]
            raise TokenlmError(f"the demo server stopped: {last}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TokenlmError(f"the demo server did not answer within {START_TIMEOUT_S:g} s")


def load(client, api_name: str, args: tuple, n: int) -> dict:
    """``n`` concurrent calls of ``api_name`` (released together): errors, latency percentiles (s), wall time."""
    gate = threading.Barrier(n)

    def one(_):
        gate.wait()
        t0 = time.perf_counter()
        try:
            client.predict(*args, api_name=api_name)
            return time.perf_counter() - t0, None
        except Exception as e:  # a failed request is counted, and its message kept, not raised
            return time.perf_counter() - t0, f"{type(e).__name__}: {e}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        rows = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    ok = [t for t, err in rows if err is None]
    errors = [err for _, err in rows if err is not None]
    pct = lambda q: round(float(np.percentile(ok, q)), 3) if ok else None  # noqa: E731
    return {
        "requests": n,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_s": pct(50),
        "p95_s": pct(95),
        "max_s": round(max(ok), 3) if ok else None,
        "wall_s": round(wall, 3),
    }


def run(model: str = "tokenlm-small", requests: int = 20) -> dict:
    import soundfile as sf
    from gradio_client import Client, handle_file

    from tokenlm.utils import cpu_description

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    port = free_port()
    proc = start_server(model, port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        started = memory_mb(proc.pid)
        out = {"model": model, "requests": requests, "cpu": cpu_description(), "server_after_start": started}
        out["compress"] = load(client, "/compress", (handle_file(str(SPEECH)), "1.5"), requests)
        try:  # one call first: a demo without its LM answers every task with "the model is not available"
            client.predict(handle_file(str(SPEECH)), api_name="/asr")
            out["asr"] = load(client, "/asr", (handle_file(str(SPEECH)),), requests)
        except Exception as e:
            out["asr"] = {"skipped": str(e)}
        out["server_peak"] = memory_mb(proc.pid)
        out["clip_s"] = round(float(sf.info(str(SPEECH)).duration), 2)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def table(r: dict) -> str:
    lines = [
        f"demo under {r['requests']} concurrent requests per endpoint ({r['clip_s']} s clip), LM {r['model']}",
        f"server memory: {r['server_after_start']['rss_mb']} MB after start, peak {r['server_peak']['peak_rss_mb']} MB",
        "| endpoint | errors | p50 s | p95 s | max s | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("compress", "asr"):
        row = r[name]
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} | | | | |")
        else:
            lines.append(
                f"| {name} | {row['errors']} | {row['p50_s']} | {row['p95_s']} | {row['max_s']} | {row['wall_s']} |"
            )
    return "\n".join(lines)


def cli(args) -> int:
    from tokenlm.utils import atomic_write_text

    n = 5 if args.quick else args.requests
    if n < 1:
        raise TokenlmError(f"--requests {n}: give at least 1")
    results = run(args.model, n)
    text = json.dumps(results, indent=2)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    print(text if args.json else table(results))
    return 0
