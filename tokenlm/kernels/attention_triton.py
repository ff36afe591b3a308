"""FlashAttention-2 style attention in Triton: forward, backward and a split-KV decode step.

Online softmax over key blocks, so no ``Tq x Tk`` matrix is stored; the forward saves one log-sum-exp
per query row (in log2 units) for the backward, which recomputes the probabilities block by block: one
kernel accumulates dK, dV over query blocks, one accumulates dQ over key blocks (no atomics). Causal masks
are bottom-right aligned (query i sees keys ``j <= i + Tk - Tq``), see :mod:`tokenlm.kernels.attention`.

Decode step (Tq <= 16 and no gradient wanted): the keys are cut into splits handled by separate programs,
each writing a normalised partial output and its log-sum-exp; :func:`_combine` merges them
(FlashDecoding), so a single query keeps the GPU busy however long the cache is.

Limits, asserted by the wrapper: head dim <= 128, float16/bfloat16/float32, Tk >= 1. Any T (edge blocks
are masked) and any head dim up to 128 (padded to a power of two inside the kernel).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .attention import check_inputs

MAX_HEAD_DIM = 128
DECODE_MAX_TQ = 16
LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _load_tile(base, rows, dims, stride_t, stride_d, n_rows, D, F32: tl.constexpr):
    """[len(rows), BLOCK_D] tile of a [T, D] matrix, zeros outside; float32 when F32 (interpreter, fp32)."""
    mask = (rows[:, None] < n_rows) & (dims[None, :] < D)
    tile = tl.load(base + rows[:, None] * stride_t + dims[None, :] * stride_d, mask=mask, other=0.0)
    if F32:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    qk_scale,
    sqb,
    sqh,
    sqt,
    sqd,
    skb,
    skh,
    skt,
    skd,
    svb,
    svh,
    svt,
    svd,
    H,
    Tq,
    Tk,
    D,
    split_size,
    causal_off,
    CAUSAL: tl.constexpr,
    F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m, bh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = bh // H, bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + b * sqb + h * sqh, rows, dims, sqt, sqd, Tq, D, F32)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    lo = split * split_size
    hi = tl.minimum(Tk, lo + split_size)
    if CAUSAL:  # the last key any row of this block may see
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + causal_off)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, cols, dims, skt, skd, hi, D, F32)
        v = _load_tile(v_base, cols, dims, svt, svd, hi, D, F32)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
        keep = cols[None, :] < hi
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None] + causal_off)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet stays all-zero
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    lse = tl.where(l_i > 0, m_i + tl.math.log2(l_i), float("-inf"))
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_rows = (split * tl.num_programs(1) + bh) * Tq + rows  # [S, B*H, Tq] row index
    tl.store(
        Out + o_rows[:, None] * D + dims[None, :],
        out.to(Out.dtype.element_ty),
        mask=(rows[:, None] < Tq) & (dims[None, :] < D),
    )
    tl.store(LSE + o_rows, lse, mask=rows < Tq)


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    qk_scale,
    sm_scale,
    H,
    Tq,
    Tk,
    D,
    causal_off,
    CAUSAL: tl.constexpr,
    F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dK, dV for one key block, looping over the query blocks that can see it. All tensors contiguous."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k = _load_tile(K + bh * Tk * D, cols, dims, D, 1, Tk, D, F32)
    v = _load_tile(V + bh * Tk * D, cols, dims, D, 1, Tk, D, F32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if CAUSAL:  # query i sees key j when i >= j - causal_off
        lo = tl.maximum(pid_n * BLOCK_N - causal_off, 0) // BLOCK_M * BLOCK_M
    for m0 in range(lo, Tq, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        q = _load_tile(Q + bh * Tq * D, rows, dims, D, 1, Tq, D, F32)
        do = _load_tile(DO + bh * Tq * D, rows, dims, D, 1, Tq, D, F32)
        lse = tl.load(LSE + bh * Tq + rows, mask=rows < Tq, other=0.0)
        delta = tl.load(DELTA + bh * Tq + rows, mask=rows < Tq, other=0.0)
        keep = (rows[None, :] < Tq) & (cols[:, None] < Tk)
        if CAUSAL:
            keep = keep & (cols[:, None] <= rows[None, :] + causal_off)
        p_t = tl.where(keep, tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :]), 0.0)  # [N, M]
        dv += tl.dot(p_t.to(do.dtype), do)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)
    mask = (cols[:, None] < Tk) & (dims[None, :] < D)
    offs = bh * Tk * D + cols[:, None] * D + dims[None, :]
    tl.store(DK + offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    qk_scale,
    sm_scale,
    H,
    Tq,
    Tk,
    D,
    causal_off,
    CAUSAL: tl.constexpr,
    F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dQ for one query block, looping over the key blocks it sees. All tensors contiguous."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + bh * Tq * D, rows, dims, D, 1, Tq, D, F32)
    do = _load_tile(DO + bh * Tq * D, rows, dims, D, 1, Tq, D, F32)
    lse = tl.load(LSE + bh * Tq + rows, mask=rows < Tq, other=0.0)
    delta = tl.load(DELTA + bh * Tq + rows, mask=rows < Tq, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = Tk
    if CAUSAL:
        hi = tl.minimum(Tk, (pid_m + 1) * BLOCK_M + causal_off)
    for n0 in range(0, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(K + bh * Tk * D, cols, dims, D, 1, Tk, D, F32)
        v = _load_tile(V + bh * Tk * D, cols, dims, D, 1, Tk, D, F32)
        keep = (rows[:, None] < Tq) & (cols[None, :] < Tk)
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None] + causal_off)
        p = tl.where(keep, tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    mask = (rows[:, None] < Tq) & (dims[None, :] < D)
    tl.store(
        DQ + bh * Tq * D + rows[:, None] * D + dims[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=mask,
    )


class Launch(NamedTuple):
    block_m: int
    block_n: int
    block_d: int
    num_warps: int


def launch_config(head_dim: int, dtype: torch.dtype, on_gpu: bool) -> Launch:
    """Tile sizes and warps. 64 x 64 tiles everywhere (bigger tiles also speed up the interpreter); on an
    sm_90 compile (tokenlm.bench.kernels_gpu) fp16 at D <= 64 with 4 warps and D = 128 with 8 warps use <= 255 registers
    without spills (4 warps at D = 128 spill 100-400 B). float32 at D = 128 needs smaller tiles (shared
    memory)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if on_gpu and block_d == 128 and dtype == torch.float32:
        return Launch(32, 32, block_d, 4)
    return Launch(64, 64, block_d, 8 if block_d > 64 else 4)


def _forward(q, k, v, causal: bool, n_splits: int = 1, block_m: int | None = None):
    """Run the forward kernel. Returns (out ``[S, B*H, Tq, D]``, lse ``[S, B*H, Tq]`` float32, log2 units);
    with one split, out is in q's dtype and already final."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    bm, bn, bd, warps = launch_config(D, q.dtype, q.is_cuda)
    bm = block_m or bm
    split_size = triton.cdiv(triton.cdiv(Tk, n_splits), bn) * bn
    n_splits = triton.cdiv(Tk, split_size)
    out_dtype = q.dtype if n_splits == 1 else torch.float32
    out = torch.empty(n_splits, B * H, Tq, D, dtype=out_dtype, device=q.device)
    lse = torch.empty(n_splits, B * H, Tq, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(Tq, bm), B * H, n_splits)
    _fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        LOG2E / math.sqrt(D),
        *q.stride(),
        *k.stride(),
        *v.stride(),
        H,
        Tq,
        Tk,
        D,
        split_size,
        Tk - Tq,
        CAUSAL=causal,
        F32=_interpreting() or q.dtype == torch.float32,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        num_warps=warps,
    )
    return out, lse


def _combine(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Merge splits: out ``[S, BH, Tq, D]`` (each normalised), lse ``[S, BH, Tq]`` -> ``[BH, Tq, D]``."""
    total = torch.logsumexp(lse * math.log(2), dim=0) / math.log(2)  # log2 units
    weight = torch.exp2(lse - total).nan_to_num_(0.0)  # a split that saw no key has lse = -inf
    return (weight[..., None] * out).sum(0)


def _backward(q, k, v, o, lse, do, causal: bool):
    """Gradients (dq, dk, dv) in the inputs' dtypes; every tensor made contiguous ``[B, H, T, D]``."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    q, k, v, do = (t.contiguous() for t in (q, k, v, do))
    delta = (o.float() * do.float()).sum(-1).reshape(B * H, Tq).contiguous()  # rowsum(dO * O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    bm, bn, bd, warps = launch_config(D, q.dtype, q.is_cuda)
    args = (LOG2E / math.sqrt(D), 1 / math.sqrt(D), H, Tq, Tk, D, Tk - Tq)
    meta = dict(
        CAUSAL=causal,
        F32=_interpreting() or q.dtype == torch.float32,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        num_warps=warps,
    )
    _bwd_dkdv_kernel[(triton.cdiv(Tk, bn), B * H)](q, k, v, do, lse, delta, dk, dv, *args, **meta)
    _bwd_dq_kernel[(triton.cdiv(Tq, bm), B * H)](q, k, v, do, lse, delta, dq, *args, **meta)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Differentiable wrapper: forward saves q, k, v, out and the log-sum-exp, backward recomputes."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool):
        out, lse = _forward(q, k, v, causal)
        B, H, Tq, D = q.shape
        out = out.reshape(B, H, Tq, D)
        ctx.causal = causal
        ctx.save_for_backward(q, k, v, out, lse[0])
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, do, ctx.causal)
        return dq, dk, dv, None


def check_limits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """The kernels' limits on top of the shape contract; ``ValueError`` outside them."""
    check_inputs(q, k, v, causal)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"Triton attention supports float16/bfloat16/float32, got {q.dtype}")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"Triton attention supports head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}")
    if k.shape[2] == 0:
        raise ValueError("Triton attention needs at least one key")
    if max(q.numel(), k.numel()) >= 2**31:
        raise ValueError("Triton attention indexes with int32: q and k must have fewer than 2**31 elements")


def decode_splits(q: torch.Tensor, Tk: int) -> int:
    """How many key splits a decode step uses: enough programs to fill the GPU, none on the interpreter."""
    if not q.is_cuda:
        return 1
    B, H = q.shape[:2]
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(triton.cdiv(Tk, 256), triton.cdiv(2 * sms, B * H)))


def attention_decode(q, k, v, causal: bool = True, n_splits: int | None = None) -> torch.Tensor:
    """Decode step without autograd: q ``[B, H, Tq<=16, D]`` against the whole cache k/v ``[B, H, Tk, D]``."""
    check_limits(q, k, v, causal)
    B, H, Tq, D = q.shape
    n_splits = n_splits or decode_splits(q, k.shape[2])
    out, lse = _forward(q, k, v, causal, n_splits, block_m=16)
    if out.shape[0] > 1:
        out = _combine(out, lse).to(q.dtype)
    return out.reshape(B, H, Tq, D)


def attention_triton(q, k, v, causal: bool = True) -> torch.Tensor:
    """Triton attention, same contract as :func:`tokenlm.kernels.attention.attention_torch`."""
    check_limits(q, k, v, causal)
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if q.shape[2] <= DECODE_MAX_TQ and not wants_grad:
        return attention_decode(q, k, v, causal)
    return FlashAttention.apply(q, k, v, causal)
