"""Inputs shared by the CPU and GPU sections of the kernel benchmarks."""

from __future__ import annotations

import torch


def rvq_data(N: int, K: int, M: int, D: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs ``[N, D]`` and codebooks ``[K, M, D]``, scale shrinking per level as in a trained RVQ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    codebooks = torch.randn(K, M, D, generator=g) * (0.7 ** torch.arange(K).float())[:, None, None]
    return x, codebooks


def vqp_encoder(codebooks: torch.Tensor):
    """vector-quantize-pytorch ResidualVQ holding our codebooks, eval mode (no EMA updates)."""
    from vector_quantize_pytorch import ResidualVQ

    K, M, D = codebooks.shape
    rvq = ResidualVQ(dim=D, num_quantizers=K, codebook_size=M).eval()
    for layer, cb in zip(rvq.layers, codebooks):
        layer._codebook.embed.data.copy_(cb[None])
        layer._codebook.initted.data.fill_(True)
    return lambda x: rvq(x[None])[1][0]  # indices [N, K]
