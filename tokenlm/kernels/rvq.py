"""Residual vector quantisation search: the nearest code at every level plus the residual update.

For a residual ``r`` and a codebook ``C [M, D]`` the nearest code minimises
``||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2``; ``||r||^2`` is the same for every code, so the search only
needs ``||c||^2 - 2 r.c``, one ``addmm`` per level. This file holds the PyTorch twin (tuned for the CPU:
rows in cache-sized chunks, no N x M matrix for all rows at once) and the shared margin check.

Exactness: float32 distances can rank two codes whose true distances differ by less than the rounding
error in the wrong order. The search keeps the runner-up too, bounds the rounding error per row, and
re-ranks only the rows whose margin is inside that bound in float64 (about 1 row in 10^4 on random data,
every row whose nearest code has an exact duplicate). The codes are therefore those of an exact
(float64) nearest-code search of the float32 residual, whatever the summation order of the matmul.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RVQEncoded(NamedTuple):
    """Result of :func:`rvq_encode`: ``codes [N, K]`` int64 and ``quantized [N, D]`` (sum of the chosen codes)."""

    codes: torch.Tensor
    quantized: torch.Tensor


# Rows per chunk: a [rows, M=1024] float32 distance block of 512 KiB stays in this CPU's 1 MiB L2, so the
# min/argmin passes that follow the matmul read it from cache.
CHUNK_ROWS = 128


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype distances and residuals are computed in: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def squared_norms(codebooks: torch.Tensor) -> torch.Tensor:
    """``||c||^2`` per code: codebooks ``[K, M, D]`` -> ``[K, M]`` in the work dtype."""
    cb = codebooks.to(work_dtype(codebooks.dtype))
    return (cb * cb).sum(-1)


def check_inputs(x: torch.Tensor, codebooks: torch.Tensor, codebook_norms: torch.Tensor | None) -> None:
    """Raise ``ValueError`` on shapes or dtypes the search does not accept."""
    if x.dim() != 2 or codebooks.dim() != 3:
        raise ValueError(f"rvq_encode wants x [N, D] and codebooks [K, M, D], got {tuple(x.shape)} and "
                         f"{tuple(codebooks.shape)}")
    if x.shape[1] != codebooks.shape[2]:
        raise ValueError(f"rvq_encode: x has D={x.shape[1]} but the codebooks have D={codebooks.shape[2]}")
    if not (x.is_floating_point() and codebooks.is_floating_point()):
        raise ValueError("rvq_encode wants floating-point x and codebooks")
    if x.device != codebooks.device:
        raise ValueError(f"rvq_encode: x on {x.device} but codebooks on {codebooks.device}")
    if codebook_norms is not None and tuple(codebook_norms.shape) != tuple(codebooks.shape[:2]):
        raise ValueError(f"codebook_norms must be [K, M] = {tuple(codebooks.shape[:2])}, "
                         f"got {tuple(codebook_norms.shape)}")


def error_bound(res_norm: torch.Tensor, code_norm_max: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Bound on the rounding error of one computed ``||c||^2 - 2 r.c`` (same units as the distance).

    res_norm: ``||r||`` per row ``[n]``; code_norm_max: ``max ||c||`` of the level (scalar tensor).
    A dot product of length D in any summation order errs by at most ``gamma_D * sum|r_i c_i|``
    (``gamma_D = D u / (1 - D u)``), and ``sum|r_i c_i| <= ||r|| ||c||``; the same for ``||c||^2`` and one more
    rounding for the sum. Twice the bound separates a certain winner from a near tie.
    """
    u = torch.finfo(dtype).eps / 2
    gamma = (dim + 2) * u / (1 - (dim + 2) * u)
    return gamma * (2 * res_norm * code_norm_max + code_norm_max * code_norm_max) * 1.01


def exact_nearest(res: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code of each row by a float64 search: res ``[n, D]``, codebook ``[M, D]`` -> ``[n]`` int64."""
    r64, c64 = res.double(), codebook.double()
    dist = torch.addmm((c64 * c64).sum(-1), r64, c64.t(), alpha=-2.0)  # [n, M]
    return dist.argmin(dim=1)


def certify(dist: torch.Tensor, best: torch.Tensor, idx: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Rows whose winner is not certain: runner-up within ``2 * bound`` of the best. Overwrites ``dist``.

    dist ``[n, M]`` computed distances, best/idx ``[n]`` their min and argmin, bound ``[n]``. Returns ``[n]`` bool.
    """
    dist.scatter_(1, idx[:, None], float("inf"))
    runner_up = dist.amin(dim=1)
    return (runner_up - best) <= 2 * bound


@torch.no_grad()
def rvq_encode_torch(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    codebook_norms: torch.Tensor | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> RVQEncoded:
    """PyTorch RVQ search (the twin of the Triton kernel and the CPU path).

    x ``[N, D]`` float, codebooks ``[K, M, D]``, codebook_norms optional ``||c||^2 [K, M]``.
    Returns codes ``[N, K]`` int64 and quantized ``[N, D]`` in x's dtype: the chosen codes summed level by
    level in the work dtype (float32, float64 for float64 input), so the sum is reproducible bit for bit.
    """
    check_inputs(x, codebooks, codebook_norms)
    N, D = x.shape
    K, M, _ = codebooks.shape
    wd = work_dtype(x.dtype)
    cb = codebooks.to(wd).contiguous()
    norms = squared_norms(cb) if codebook_norms is None else codebook_norms.to(wd)
    cb_t = cb.transpose(1, 2)  # [K, D, M]: addmm reads it as the transposed operand, no copy
    code_norm_max = norms.amax(dim=1).clamp_min(0).sqrt()  # [K]
    codes = torch.empty(N, K, dtype=torch.int64, device=x.device)
    quantized = torch.empty(N, D, dtype=x.dtype, device=x.device)
    dist = torch.empty(min(chunk_rows, max(N, 1)), M, dtype=wd, device=x.device)
    for start in range(0, N, chunk_rows):
        stop = min(start + chunk_rows, N)
        q = _encode_chunk(x[start:stop].to(wd, copy=True), cb, cb_t, norms, code_norm_max, codes[start:stop],
                          dist[: stop - start])
        quantized[start:stop] = q
    return RVQEncoded(codes, quantized)


def _encode_chunk(res, cb, cb_t, norms, code_norm_max, codes_out, dist) -> torch.Tensor:
    """All K levels for one chunk of rows; ``res`` [n, D] is consumed as the residual. Returns quantized [n, D]."""
    q = torch.zeros_like(res)
    D = res.shape[1]
    for k in range(cb.shape[0]):
        torch.addmm(norms[k], res, cb_t[k], alpha=-2.0, out=dist)  # ||c||^2 - 2 r.c, [n, M]
        best, idx = dist.min(dim=1)
        bound = error_bound(torch.linalg.vector_norm(res, dim=1), code_norm_max[k], D, res.dtype)
        unsure = certify(dist, best, idx, bound).nonzero().squeeze(1)
        if unsure.numel():
            idx[unsure] = exact_nearest(res[unsure], cb[k])
        chosen = cb[k].index_select(0, idx)  # [n, D]
        q += chosen
        res -= chosen
        codes_out[:, k] = idx
    return q
