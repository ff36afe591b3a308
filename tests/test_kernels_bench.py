"""The kernel benchmarks' plumbing on tiny shapes (workers run in-process here; the CLI spawns them)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tokenlm.bench import kernels as bench
from tokenlm.bench import worker


@pytest.fixture
def in_process(monkeypatch):
    """Run workers in this process and shrink the quick shapes, so the whole report takes seconds."""

    def spawn(kind, spec):
        if kind == "interp-worker":  # needs a process where triton is not imported yet; tested elsewhere
            return {"skipped": "in-process test"}
        return worker.run(kind, spec)

    monkeypatch.setattr(bench, "spawn", spawn)
    monkeypatch.setattr(bench, "RVQ_QUICK", dict(N=300, K=2, M=64, D=16))
    monkeypatch.setattr(bench, "ATTN_QUICK", dict(B=1, H=2, T=32, D=16, decode_T=64))


def test_measure_reports_time_and_peak():
    # A fresh process: in this one the buffer can come from memory an earlier test freed but the allocator kept
    # resident, which adds nothing to the RSS (CI once measured 0.0 MB here). Filled with b"x" so every page is touched.
    code = (
        "import json; from tokenlm.bench.measure import measure; "
        "print(json.dumps(measure(lambda: b'x' * (50 * 2**20), 2)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(r["times_s"]) == 2 and r["time_s"] == min(r["times_s"]) and r["cpu_s"] >= 0
    if r["peak_exact"]:
        assert r["peak_mb"] >= 45  # the 50 MB buffer shows in the peak


def test_rvq_goals_from_numbers():
    methods = {
        "tokenlm": {"time_s": 1.0, "cpu_s": 1.2, "peak_mb": 50.0},
        "vector_quantize_pytorch": {"time_s": 8.0, "cpu_s": 8.4, "peak_mb": 1000.0},
        "matmul_chunked": {"time_s": 0.9, "cpu_s": 1.0},
        "matmul_full": {"time_s": 0.8, "cpu_s": 1.1},
    }
    out = bench._rvq_goals(methods)
    assert out["ratios"]["cpu_s_vs_bare_matmul"] == 1.2 and out["ratios"]["cpu_s_speedup_vs_vqp"] == 7.0
    assert out["goals"] == {
        "within_1.3x_of_bare_matmul": True,
        "6x_faster_than_vqp": True,
        "quarter_of_vqp_peak": True,
    }


def test_bench_rvq_cli_quick(in_process, tmp_path, capsys):
    out = tmp_path / "rvq.json"
    assert bench.cli_rvq(SimpleNamespace(json=True, out=str(out), quick=True)) == 0
    report = json.loads(out.read_text())
    assert report["methods"]["tokenlm"]["time_s"] > 0
    assert "skipped" in report["gpu"] or "triton" in report["gpu"]
    if bench._vqp_installed():
        assert report["codes_equal_to_vqp"] > 0.99  # same codebooks: only float32 near ties may differ
    assert json.loads(capsys.readouterr().out) == report


def test_bench_attention_cli_quick(in_process, capsys):
    assert bench.cli_attention(SimpleNamespace(json=False, out=None, quick=True)) == 0
    table = capsys.readouterr().out
    assert "| fwd_bwd |" in table and "| decode |" in table and "gpu:" in table
