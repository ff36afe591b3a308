"""GPU sections of the kernel benchmarks, and an ahead-of-time compile check for machines without a GPU.

Where CUDA exists: the Triton kernels against SDPA (FlashAttention backend) and against the PyTorch RVQ twin
and vector-quantize-pytorch on the GPU, timed with ``triton.testing.do_bench`` (median of many runs).
Where it does not: each kernel is compiled for an H100 (sm_90) with Triton's own compiler and ptxas, in a
subprocess without the interpreter, and the register, spill (stack) and shared-memory use of the cubin is
reported. That proves the kernels are valid GPU Triton (the interpreter accepts more), not their speed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import torch

from .inputs import rvq_data, vqp_encoder
from .measure import spawn

ATTN_GPU_CASES = [(1024, 64), (1024, 128), (4096, 64), (4096, 128), (8192, 128)]


def _tflops(flops: float, ms: float) -> float:
    return round(flops / (ms * 1e-3) / 1e12, 1)


def attention_gpu(quick: bool) -> dict:
    """Triton vs SDPA on CUDA, fp16 causal: forward, forward+backward, and a decode step (ms, TFLOP/s)."""

    cases = ATTN_GPU_CASES[:2] if quick else ATTN_GPU_CASES
    rows = [_attention_case(T, D) for T, D in cases]
    return {"dtype": "float16", "causal": True, "cases": rows, "decode": _decode_gpu()}


def _attention_case(T: int, D: int) -> dict:
    """One shape: forward and forward+backward time of Triton and SDPA, fp16, causal, 16k tokens per batch."""
    import torch.nn.functional as F
    from triton.testing import do_bench

    from tokenlm.kernels import attention

    B, H = max(1, 16384 // T), 16
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    flops = 2 * 2 * B * H * T * T * D / 2  # two matmuls, half the square under the causal mask
    row = {"B": B, "H": H, "T": T, "D": D}
    impls = {
        "triton": lambda: attention(q, k, v, backend="triton"),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    for name, fn in impls.items():
        fwd = do_bench(fn)
        out = fn()
        bwd = do_bench(lambda out=out: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
        row[name] = {
            "fwd_ms": round(fwd, 3),
            "fwd_tflops": _tflops(flops, fwd),
            "fwd_bwd_ms": round(fwd + bwd, 3),
            "fwd_bwd_tflops": _tflops(3.5 * flops, fwd + bwd),
        }
    return row


def _decode_gpu() -> dict:
    """One new query against an 8k-token cache, B=8, H=16, D=128."""
    import torch.nn.functional as F
    from triton.testing import do_bench

    from tokenlm.kernels import attention

    q = torch.randn(8, 16, 1, 128, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(8, 16, 8192, 128, device="cuda", dtype=torch.float16) for _ in range(2))
    with torch.no_grad():
        ours = do_bench(lambda: attention(q, k, v, backend="triton"))
        sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, k, v))
    gbytes = 2 * k.numel() * 2 / 1e9  # K and V read once
    return {
        "Tk": 8192,
        "triton_ms": round(ours, 4),
        "sdpa_ms": round(sdpa, 4),
        "triton_GBps": round(gbytes / (ours * 1e-3), 1),
        "sdpa_GBps": round(gbytes / (sdpa * 1e-3), 1),
    }


def rvq_gpu(shape: dict) -> dict:
    """RVQ on CUDA: Triton kernel, PyTorch twin and (if installed) vector-quantize-pytorch; ms and peak MB."""
    from triton.testing import do_bench

    from tokenlm.kernels import rvq_encode

    x, codebooks = (t.cuda() for t in rvq_data(**shape))
    methods = {
        "triton": lambda: rvq_encode(x, codebooks, backend="triton"),
        "torch_twin": lambda: rvq_encode(x, codebooks, backend="torch"),
    }
    vqp = None
    try:
        encode = vqp_encoder(codebooks)
        methods["vector_quantize_pytorch"] = lambda: encode(x)
    except ImportError:
        vqp = "not installed"
    out = {}
    with torch.no_grad():
        for name, fn in methods.items():
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = do_bench(fn)
            out[name] = {
                "ms": round(ms, 3),
                "peak_mb": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1),
            }
        out["codes_equal_triton_vs_twin"] = bool(torch.equal(methods["triton"]().codes, methods["torch_twin"]().codes))
    if vqp:
        out["vector_quantize_pytorch"] = vqp
    return out


# ---- ahead-of-time compile for an H100, without a GPU ----


def _signature(fn, types: dict) -> dict:
    return {name: types.get(name, "constexpr") for name in fn.arg_names}


def _aot_cases():
    """(name, kernel, argument types, constexprs) for each kernel, at the sizes the wrappers use on a GPU."""
    from tokenlm.kernels import attention_triton as A
    from tokenlm.kernels import rvq_triton as R

    ptr = lambda t: f"*{t}"
    rvq_types = {n: ptr("fp32") for n in ("x_ptr", "cb_ptr", "norm_ptr", "cmax_ptr", "q_ptr")}
    rvq_types.update(codes_ptr=ptr("i64"), unsure_ptr=ptr("i32"), N="i32", M="i32", D="i32", K="i32", gamma="fp32")
    cases = [
        (
            "rvq D=128",
            R._rvq_kernel,
            rvq_types,
            dict(BLOCK_N=R.GPU_BLOCK_N, BLOCK_M=R.GPU_BLOCK_M, BLOCK_D=128),
            R.GPU_NUM_WARPS,
        )
    ]
    ints = {
        n: "i32"
        for n in (
            "sqb",
            "sqh",
            "sqt",
            "sqd",
            "skb",
            "skh",
            "skt",
            "skd",
            "svb",
            "svh",
            "svt",
            "svd",
            "H",
            "Tq",
            "Tk",
            "D",
            "split_size",
            "causal_off",
        )
    }
    for D in (64, 128):
        bm, bn, bd, warps = A.launch_config(D, torch.float16, on_gpu=True)
        meta = dict(CAUSAL=True, F32=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
        fwd = dict(ints, Q="*fp16", K="*fp16", V="*fp16", Out="*fp16", LSE="*fp32", qk_scale="fp32")
        cases.append((f"attention fwd fp16 D={D}", A._fwd_kernel, fwd, meta, warps))
        decode = dict(meta, BLOCK_M=16)  # the decode step's tile of queries
        cases.append((f"attention decode fp16 D={D}", A._fwd_kernel, fwd, decode, warps))
        bwd = dict(
            Q="*fp16",
            K="*fp16",
            V="*fp16",
            DO="*fp16",
            LSE="*fp32",
            DELTA="*fp32",
            DK="*fp16",
            DV="*fp16",
            DQ="*fp16",
            qk_scale="fp32",
            sm_scale="fp32",
            H="i32",
            Tq="i32",
            Tk="i32",
            D="i32",
            causal_off="i32",
        )
        cases.append((f"attention bwd dk/dv fp16 D={D}", A._bwd_dkdv_kernel, bwd, meta, warps))
        cases.append((f"attention bwd dq fp16 D={D}", A._bwd_dq_kernel, bwd, meta, warps))
    return cases


def _res_usage(cubin: bytes) -> str:
    from triton.backends import nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    return next((line.strip() for line in text.splitlines() if "REG:" in line), "?")


def aot_worker(spec: dict) -> dict:
    """Subprocess body (no interpreter): compile every kernel for sm_90 and read its resource use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    report = {}
    for name, fn, types, constexprs, warps in _aot_cases():
        if spec.get("only") and spec["only"] not in name:
            continue
        t0 = time.perf_counter()
        try:
            src = ASTSource(fn, _signature(fn, types), constexprs)
            kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            usage = " ".join(_res_usage(kernel.asm["cubin"]).split()[:2])
            report[name] = {
                "ok": True,
                "usage": f"{usage} dynamic-shared:{kernel.metadata.shared}",
                "warps": warps,
                "constexprs": constexprs,
                "s": round(time.perf_counter() - t0),
            }
        except Exception as e:  # report, do not hide: a kernel that does not compile is a finding
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return report


def aot_report(only: str | None = None) -> dict:
    """Compile the kernels for sm_90 in a subprocess (Triton's interpreter must be off there)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return spawn("aot-worker", {"only": only}, env=env)


def gpu_section(kind: str, quick: bool, shape: dict | None = None) -> dict:
    """The GPU part of a bench report: measurements on CUDA, else the compile check (skipped with --quick)."""
    if torch.cuda.is_available():
        return attention_gpu(quick) if kind == "attention" else rvq_gpu(shape)
    note = {"skipped": "no CUDA device on this machine: GPU timings not measured"}
    if quick:
        return note | {"aot_sm90": "not run with --quick"}
    return note | {"aot_sm90": aot_report(only="attention" if kind == "attention" else "rvq")}
