"""Benchmarks for the kernels: ``tokenlm bench rvq`` and ``tokenlm bench attention``.

RVQ: our search beside vector-quantize-pytorch's ``ResidualVQ`` (same codebooks, eval mode) and the bare
matrix products the distances need. Every method runs in a fresh subprocess so that its peak memory is its
own: the peak resident set (VmHWM, reset through /proc/self/clear_refs) minus the resident set before the
call, data already in place. Times are the best of several repeats because this machine's cores are shared.

Attention: the PyTorch twin (SDPA) beside a naive implementation on the CPU; a GPU section (Triton kernel
vs SDPA) that runs only where CUDA exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tokenlm.utils import atomic_write_text

from .inputs import rvq_data, vqp_encoder
from .kernels_gpu import gpu_section
from .measure import bench_threads, measure, ratio, spawn

RVQ_FULL = dict(N=50_000, K=8, M=1024, D=128)
RVQ_QUICK = dict(N=4_000, K=4, M=256, D=64)
VQP_MISSING = "vector-quantize-pytorch is not installed (pip install vector-quantize-pytorch, in tokenlm[eval])"


# ---- RVQ ----


def _bare_matmuls(x, codebooks, chunk_rows):
    """The products the distances need, K x (N x D x M), in chunks of rows (or all rows when chunk_rows=0)."""
    step = chunk_rows or x.shape[0]
    out = torch.empty(min(step, x.shape[0]), codebooks.shape[1])

    def run():
        for cb in codebooks:
            for s in range(0, x.shape[0], step):
                rows = x[s : s + step]
                torch.mm(rows, cb.t(), out=out[: rows.shape[0]])
        return None

    return run


def _rvq_method(method: str, x, codebooks):
    """A no-argument callable for one method; returns codes [N, K] (or None for the bare products)."""
    from tokenlm.kernels import rvq_encode
    from tokenlm.kernels.rvq import CHUNK_ROWS

    if method == "tokenlm":
        return lambda: rvq_encode(x, codebooks, backend="torch").codes
    if method == "vector_quantize_pytorch":
        encode = vqp_encoder(codebooks)
        return lambda: encode(x)
    if method == "matmul_chunked":
        return _bare_matmuls(x, codebooks, CHUNK_ROWS)
    if method == "matmul_full":
        return _bare_matmuls(x, codebooks, 0)
    raise ValueError(method)


def rvq_worker(spec: dict) -> dict:
    """Subprocess body: build the data, measure one method, save its codes for the agreement check."""
    torch.set_num_threads(spec["threads"])
    x, codebooks = rvq_data(**spec["shape"])
    with torch.no_grad():
        fn = _rvq_method(spec["method"], x, codebooks)
        fn_codes = {}

        def keep():
            fn_codes["codes"] = fn()
            return fn_codes["codes"]

        result = measure(keep, spec["repeats"])
    if fn_codes.get("codes") is not None and spec.get("codes_out"):
        import numpy as np

        np.save(spec["codes_out"], fn_codes["codes"].numpy().astype(np.int16))
    return result


def _vqp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vector_quantize_pytorch") is not None


RVQ_METHODS = ("tokenlm", "vector_quantize_pytorch", "matmul_chunked", "matmul_full")


def merge_rounds(rounds: list[dict]) -> dict:
    """Combine one method's rounds: best wall and CPU time, largest first-run peak."""
    ok = [r for r in rounds if "time_s" in r]
    if not ok:
        return rounds[-1]
    return {
        "time_s": min(r["time_s"] for r in ok),
        "cpu_s": min(r["cpu_s"] for r in ok),
        "times_s": [t for r in ok for t in r["times_s"]],
        "peak_mb": max(r["peak_mb"] for r in ok),
        "peak_exact": all(r["peak_exact"] for r in ok),
    }


def bench_rvq(quick: bool = False, rounds: int | None = None, threads: int | None = None) -> dict:
    """Time and peak memory of every RVQ method on the same data, each run in its own process.

    The methods take turns, ``rounds`` times, two runs per process, so that a burst of load from the
    other jobs on this machine does not land on one method only.
    """
    import tempfile

    import numpy as np

    shape = RVQ_QUICK if quick else RVQ_FULL
    rounds = rounds or (1 if quick else 3)
    threads = threads or bench_threads()
    methods = [m for m in RVQ_METHODS if m != "vector_quantize_pytorch" or _vqp_installed()]
    results = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for m in methods:
                spec = dict(method=m, shape=shape, repeats=2, threads=threads, codes_out=f"{tmp}/{m}.npy")
                results[m].append(spawn("rvq-worker", spec))
        codes = {m: np.load(f"{tmp}/{m}.npy") for m in methods if Path(f"{tmp}/{m}.npy").exists()}
    merged = {m: merge_rounds(r) for m, r in results.items()}
    if not _vqp_installed():
        merged["vector_quantize_pytorch"] = {"skipped": VQP_MISSING}
    report = {
        "shape": shape,
        "threads": threads,
        "rounds": rounds,
        "methods": merged,
        "timing": f"best of {2 * rounds} runs ({rounds} rounds, methods taking turns, a fresh process each); "
        "the CPU is shared, so times are noisy",
        "peak": "peak RSS of a process's first run minus its RSS before it (inputs already allocated)",
    }
    if "tokenlm" in codes and "vector_quantize_pytorch" in codes:
        ours, theirs = (torch.from_numpy(codes[m]).long() for m in ("tokenlm", "vector_quantize_pytorch"))
        report["codes_equal_to_vqp"] = float((ours == theirs).float().mean())
        report["disagreements_with_vqp"] = judge_disagreements(ours, theirs, *rvq_data(**shape))
    report.update(_rvq_goals(merged))
    report["gpu"] = gpu_section("rvq", quick, shape)
    return report


def judge_disagreements(ours: torch.Tensor, theirs: torch.Tensor, x: torch.Tensor, codebooks: torch.Tensor) -> dict:
    """Where two searches disagree, which code is really nearer (float64) at the first level that differs.

    ours/theirs: codes ``[N, K]``; the residual before that level is rebuilt from our (shared) earlier codes.
    """
    differ = (ours != theirs).any(dim=1).nonzero().squeeze(1)
    verdict = {"rows": int(differ.numel()), "ours_nearer": 0, "theirs_nearer": 0, "equal_distance": 0}
    for row in differ.tolist():
        k = int((ours[row] != theirs[row]).nonzero()[0])
        res = x[row].clone()
        for j in range(k):
            res -= codebooks[j, ours[row, j]]
        d = [float(((res.double() - codebooks[k, c[row, k]].double()) ** 2).sum()) for c in (ours, theirs)]
        key = "ours_nearer" if d[0] < d[1] else "theirs_nearer" if d[1] < d[0] else "equal_distance"
        verdict[key] += 1
    return verdict


def _rvq_goals(methods: dict) -> dict:
    """Ratios and the goals set for our search: >= 6x faster and <= 1/4 the peak of vqp, <= 1.3x the bare matmuls.

    Time ratios are given for wall time and for CPU time; the goals are judged on CPU time, which the
    other jobs on the shared cores disturb less (both use the same thread count).
    """
    ours = methods.get("tokenlm", {})
    if "time_s" not in ours:
        return {}
    bare = [methods[m] for m in ("matmul_chunked", "matmul_full") if "time_s" in methods.get(m, {})]
    ratios = {}
    for clock in ("cpu_s", "time_s"):
        ratios[f"{clock}_vs_bare_matmul"] = ratio(ours[clock], min(b[clock] for b in bare), 3)
    meets = lambda value, ok: None if value is None else ok(value)  # None: too fast to tell
    goals = {"within_1.3x_of_bare_matmul": meets(ratios["cpu_s_vs_bare_matmul"], lambda r: r <= 1.3)}
    vqp = methods.get("vector_quantize_pytorch", {})
    if "time_s" in vqp:
        for clock in ("cpu_s", "time_s"):
            ratios[f"{clock}_speedup_vs_vqp"] = ratio(vqp[clock], ours[clock])
        ratios["peak_fraction_of_vqp"] = ratio(ours["peak_mb"], vqp["peak_mb"], 4)
        goals["6x_faster_than_vqp"] = meets(ratios["cpu_s_speedup_vs_vqp"], lambda r: r >= 6)
        goals["quarter_of_vqp_peak"] = meets(ratios["peak_fraction_of_vqp"], lambda r: r <= 0.25)
    return {"ratios": ratios, "goals": goals}


def rvq_table(report: dict) -> str:
    """Markdown table of :func:`bench_rvq`."""
    s = report["shape"]
    lines = [
        f"RVQ encode, N={s['N']}, K={s['K']}, M={s['M']}, D={s['D']}, {report['threads']} threads ({report['timing']})",
        "",
        "| method | wall (s) | CPU (s) | peak extra RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in report["methods"].items():
        if "time_s" in r:
            lines.append(f"| {name} | {r['time_s']:.3f} | {r['cpu_s']:.3f} | {r['peak_mb']:.1f} |")
        else:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error')} | |")
    for key in ("codes_equal_to_vqp", "disagreements_with_vqp", "ratios", "goals", "gpu"):
        if key in report:
            lines.append(f"\n{key}: {json.dumps(report[key])}")
    return "\n".join(lines)


def _emit(report: dict, args, table) -> int:
    text = json.dumps(report, indent=2)
    if getattr(args, "out", None):
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else table(report))
    return 0


def cli_rvq(args) -> int:
    """``tokenlm bench rvq [--json] [--out FILE] [--quick]``."""
    return _emit(bench_rvq(quick=args.quick), args, rvq_table)


# ---- attention ----

ATTN_FULL = dict(B=1, H=8, T=1024, D=64, decode_T=4096)
ATTN_QUICK = dict(B=1, H=4, T=256, D=64, decode_T=512)


def _attn_fns(impl: str):
    from tokenlm.kernels.attention import attention_naive, attention_torch

    return {"sdpa_twin": attention_torch, "naive": attention_naive}[impl]


def attn_worker(spec: dict) -> dict:
    """Subprocess body: one implementation, one case (forward, forward+backward or decode step)."""
    torch.set_num_threads(spec["threads"])
    s, fn = spec["shape"], _attn_fns(spec["impl"])
    g = torch.Generator().manual_seed(0)
    Tq = 1 if spec["case"] == "decode" else s["T"]
    Tk = s["decode_T"] if spec["case"] == "decode" else s["T"]
    grad = spec["case"] == "fwd_bwd"
    q, k, v = (torch.randn(s["B"], s["H"], T, s["D"], generator=g).requires_grad_(grad) for T in (Tq, Tk, Tk))

    def run():
        with torch.set_grad_enabled(grad):
            out = fn(q, k, v, True)
            if grad:
                out.sum().backward()
        return None

    # a decode step takes milliseconds: more repeats for a stable best
    return measure(run, spec["repeats"] * (10 if spec["case"] == "decode" else 1))


def interp_worker(spec: dict) -> dict:
    """Subprocess body: max abs error of out and grads of Triton attention (interpreter) and of SDPA in the
    input dtype, both against float32 SDPA."""
    from tokenlm.kernels import attention
    from tokenlm.kernels.attention import attention_torch
    from tokenlm.kernels.dispatch import import_triton

    import_triton(for_cpu=True)
    report = {}
    for dtype in ("float32", "float16", "bfloat16"):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 100, 64, generator=g).to(getattr(torch, dtype)) for _ in range(3))
        dout = torch.randn(1, 2, 100, 64, generator=g)
        runs = {
            "triton": lambda *t: attention(*t, causal=True, backend="triton"),
            "sdpa_same_dtype": lambda *t: attention_torch(*t, causal=True),
            "ref": lambda *t: attention_torch(*(x.float() for x in t), causal=True),  # same rounded inputs
        }
        results = {}
        for name, fn in runs.items():
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            out = fn(*leaves)
            grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
            results[name] = [t.detach().float() for t in (out, *grads)]
        report[dtype] = {
            name: {n: float((a - b).abs().max()) for n, a, b in zip(("out", "dq", "dk", "dv"), got, results["ref"])}
            for name, got in results.items()
            if name != "ref"
        }
    return {"shape": "B=1 H=2 T=100 D=64 causal", "max_abs_error_vs_fp32_sdpa_on_same_inputs": report}


def bench_attention(quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    """CPU: the twin (SDPA) beside naive attention; GPU: Triton vs SDPA where CUDA exists."""
    shape = ATTN_QUICK if quick else ATTN_FULL
    repeats = repeats or (2 if quick else 3)
    threads = threads or bench_threads()
    cpu = {}
    for case in ("fwd", "fwd_bwd", "decode"):
        cpu[case] = {
            impl: spawn("attn-worker", dict(impl=impl, case=case, shape=shape, repeats=repeats, threads=threads))
            for impl in ("sdpa_twin", "naive")
        }
        both = cpu[case]
        if all("time_s" in r for r in both.values()):
            both["naive_over_twin_time"] = ratio(both["naive"]["time_s"], both["sdpa_twin"]["time_s"])
    return {
        "shape": shape,
        "threads": threads,
        "repeats": repeats,
        "causal": True,
        "dtype": "float32",
        "timing": f"best of {repeats} runs, each in a fresh process; the CPU is shared, so times are noisy",
        "cpu": cpu,
        "interpreter_accuracy": spawn("interp-worker", {}),
        "gpu": gpu_section("attention", quick),
    }


def attention_table(report: dict) -> str:
    """Markdown table of :func:`bench_attention`."""
    s = report["shape"]
    lines = [
        f"Attention on the CPU, B={s['B']} H={s['H']} T={s['T']} D={s['D']} causal fp32 (decode: 1 query, "
        f"{s['decode_T']} keys), {report['threads']} threads ({report['timing']})",
        "",
        "| case | twin (SDPA) s | naive s | twin peak MB | naive peak MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, r in report["cpu"].items():
        t, n = r["sdpa_twin"], r["naive"]
        if "time_s" in t and "time_s" in n:
            times = f"{t['time_s']:.4f} | {n['time_s']:.4f}"
            lines.append(f"| {case} | {times} | {t['peak_mb']:.1f} | {n['peak_mb']:.1f} |")
    lines.append(f"\ngpu: {json.dumps(report['gpu'])}")
    return "\n".join(lines)


def cli_attention(args) -> int:
    """``tokenlm bench attention [--json] [--out FILE] [--quick]``."""
    return _emit(bench_attention(quick=args.quick), args, attention_table)
