"""Fused kernels with PyTorch twins and one dispatcher: attention and the RVQ nearest-code search.

    from tokenlm.kernels import attention, rvq_encode, RVQEncoded

``backend="auto"`` runs Triton for CUDA tensors (when triton imports) and the PyTorch twin otherwise;
``"torch"`` forces the twin, ``"triton"`` the kernel (Triton's interpreter for CPU tensors). Importing this
package does not import triton.
"""

from __future__ import annotations

import torch

from .attention import attention_torch
from .dispatch import use_triton
from .rvq import RVQEncoded, rvq_encode_torch

__all__ = ["RVQEncoded", "attention", "rvq_encode"]


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, backend: str = "auto"
) -> torch.Tensor:
    """Softmax attention, scale ``1/sqrt(D)``: q ``[B, H, Tq, D]``, k/v ``[B, H, Tk, D]`` -> ``[B, H, Tq, D]``

    Causal masks are bottom-right aligned (FlashAttention-2): with a KV cache (Tq < Tk) query i sees keys
    up to ``i + Tk - Tq``, so one new query sees every cached key. Differentiable on every backend.
    """
    if use_triton(q, backend):
        from .attention_triton import attention_triton

        return attention_triton(q, k, v, causal)
    return attention_torch(q, k, v, causal)


@torch.no_grad()
def rvq_encode(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    backend: str = "auto",
    codebook_norms: torch.Tensor | None = None,
) -> RVQEncoded:
    """Residual VQ search over all levels.

    x ``[N, D]`` float, codebooks ``[K, M, D]`` (pass ``codebooks[:k]`` for the first k levels),
    codebook_norms optional precomputed ``||c||^2 [K, M]``. Returns ``RVQEncoded(codes [N, K] int64,
    quantized [N, D])`` where quantized is the sum of the chosen codes. Codes equal an exact nearest-code
    search level by level (near ties are re-ranked in float64). No gradient.
    """
    if use_triton(x, backend):
        from .rvq_triton import rvq_encode_triton

        return rvq_encode_triton(x, codebooks, codebook_norms)
    return rvq_encode_torch(x, codebooks, codebook_norms)
