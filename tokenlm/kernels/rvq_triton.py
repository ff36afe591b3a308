"""Fused RVQ search in Triton: for a block of rows, every level's nearest code and the residual update
stay in registers; the N x M distance matrix is never written.

Each program owns ``BLOCK_N`` rows. Per level it streams the codebook in ``BLOCK_M`` tiles, computing
``||c||^2 - 2 r.c`` with ``tl.dot`` in IEEE float32 (no TF32: the error bound below assumes float32
products), keeps the best and the runner-up, then gathers the chosen code, adds it to the running sum and
subtracts it from the residual. Rows whose margin falls inside the rounding-error bound
(:func:`tokenlm.kernels.rvq.error_bound`) are flagged, and the wrapper re-runs just those rows through the
PyTorch twin, which re-ranks them in float64, so codes match the twin and an exact search bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rvq import RVQEncoded, check_inputs, error_factor, rvq_encode_torch, squared_norms

MAX_DIM = 256
# GPU launch sizes for D <= 128. The ahead-of-time compile for sm_90 (tokenlm.bench.kernels_gpu) gave, for D = 128:
# 16 x 32 rows x codes, 4 warps: 182 registers, no spill; 32 x 32: 255 + 48 B spilled; 64 x 64: 255 + 2.4 KB.
# (the IEEE float32 dot runs on FMA units and holds whole D-long rows per thread, hence the small tiles)
GPU_BLOCK_N, GPU_BLOCK_M, GPU_NUM_WARPS = 16, 32, 4


@triton.jit
def _rvq_kernel(
    x_ptr,
    cb_ptr,
    norm_ptr,
    cmax_ptr,
    codes_ptr,
    q_ptr,
    unsure_ptr,
    N,
    M,
    D,
    K,
    gamma,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    cols0 = tl.arange(0, BLOCK_M)
    row_ok = rows < N
    dim_ok = dims < D
    tile_mask = row_ok[:, None] & dim_ok[None, :]
    r = tl.load(x_ptr + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0).to(tl.float32)
    q = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    unsure = tl.zeros([BLOCK_N], dtype=tl.int32)
    for k in range(0, K):
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        second = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
        for m0 in range(0, M, BLOCK_M):
            cols = m0 + cols0
            col_ok = cols < M
            c = tl.load(
                cb_ptr + (k * M + cols[:, None]) * D + dims[None, :],
                mask=col_ok[:, None] & dim_ok[None, :],
                other=0.0,
            )
            c_norm = tl.load(norm_ptr + k * M + cols, mask=col_ok, other=float("inf"))
            dist = c_norm[None, :] - 2.0 * tl.dot(r, tl.trans(c), input_precision="ieee")  # [BLOCK_N, BLOCK_M]
            t_best, t_idx = tl.min(dist, axis=1, return_indices=True)
            t_second = tl.min(tl.where(cols0[None, :] == t_idx[:, None], float("inf"), dist), axis=1)
            better = t_best < best
            # runner-up over both: the loser of the two bests, or either runner-up
            second = tl.minimum(tl.minimum(second, t_second), tl.where(better, best, t_best))
            best_idx = tl.where(better, t_idx + m0, best_idx)
            best = tl.minimum(best, t_best)
        c_max = tl.load(cmax_ptr + k)
        bound = gamma * (2.0 * tl.sqrt(tl.sum(r * r, axis=1)) * c_max + c_max * c_max)
        unsure = tl.where(second - best <= 2.0 * bound, 1, unsure)
        chosen = tl.load(cb_ptr + (k * M + best_idx[:, None]) * D + dims[None, :], mask=tile_mask, other=0.0)
        q += chosen
        r -= chosen
        tl.store(codes_ptr + rows * K + k, best_idx.to(tl.int64), mask=row_ok)
    tl.store(q_ptr + rows[:, None] * D + dims[None, :], q, mask=tile_mask)
    tl.store(unsure_ptr + rows, unsure, mask=row_ok)


@torch.no_grad()
def rvq_encode_triton(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    codebook_norms: torch.Tensor | None = None,
    block_n: int | None = None,
    block_m: int | None = None,
) -> RVQEncoded:
    """Fused RVQ search; same contract and results as :func:`tokenlm.kernels.rvq.rvq_encode_torch`.

    x ``[N, D]`` float16/bfloat16/float32 with D <= 256, codebooks ``[K, M, D]``. Computes in float32.
    Returns codes ``[N, K]`` int64, quantized ``[N, D]`` in x's dtype.
    """
    check_inputs(x, codebooks, codebook_norms)
    if x.dtype == torch.float64 or codebooks.dtype == torch.float64:
        raise ValueError("the Triton RVQ kernel computes in float32; use backend='torch' for float64")
    N, D = x.shape
    K, M, _ = codebooks.shape
    if D > MAX_DIM:
        raise ValueError(f"the Triton RVQ kernel supports D <= {MAX_DIM}, got {D}")
    if max(N * max(D, K), K * M * D) >= 2**31:
        raise ValueError("the Triton RVQ kernel indexes with int32: split x into parts under 2**31 values")
    cb = codebooks.float().contiguous()
    norms = (squared_norms(cb) if codebook_norms is None else codebook_norms.float()).contiguous()
    code_norm_max = norms.amax(dim=1).clamp_min(0).sqrt().contiguous()
    codes = torch.empty(N, K, dtype=torch.int64, device=x.device)
    quantized = torch.empty(N, D, dtype=torch.float32, device=x.device)
    unsure = torch.empty(N, dtype=torch.int32, device=x.device)
    if N == 0 or K == 0:
        quantized.zero_()
        return RVQEncoded(codes, quantized.to(x.dtype))
    block_d = max(16, triton.next_power_of_2(D))
    if x.is_cuda:  # D > 128 (up to 256) halves the code tile; not checked on a GPU yet
        block_n, block_m = block_n or GPU_BLOCK_N, block_m or (GPU_BLOCK_M if block_d <= 128 else 16)
    else:  # the interpreter runs faster on big tiles
        block_n, block_m = block_n or 64, block_m or 64
    grid = (triton.cdiv(N, block_n),)
    _rvq_kernel[grid](
        x.contiguous(),
        cb,
        norms,
        code_norm_max,
        codes,
        quantized,
        unsure,
        N,
        M,
        D,
        K,
        error_factor(D, torch.float32),
        BLOCK_N=block_n,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=GPU_NUM_WARPS,
    )
    redo = unsure.nonzero().squeeze(1)
    if redo.numel():  # near ties: the twin re-ranks them in float64
        exact = rvq_encode_torch(x[redo], codebooks, codebook_norms)
        codes[redo] = exact.codes
        quantized[redo] = exact.quantized.float()
    return RVQEncoded(codes, quantized.to(x.dtype))
