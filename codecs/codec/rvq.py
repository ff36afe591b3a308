"""Residual vector quantizer with EMA codebooks (SoundStream, arXiv:2107.03312; EnCodec, arXiv:2210.13438).

Tricks, all from those papers and DAC (arXiv:2306.06546):
- codebooks are updated by exponential moving averages of the assigned vectors, not by gradients;
- k-means initialisation from a sample of encoder outputs (``kmeans_init``) so no code starts dead;
- dead-code restart: a code whose EMA usage falls below ``dead_threshold`` is re-seeded from the batch;
- commitment loss pulls the encoder output towards its quantized value (straight-through gradient);
- quantizer dropout: the trainer picks ``n_q`` per batch, so the first k codebooks alone are a codec.

The nearest-code search for all levels is one call to ``tokenlm.kernels.rvq_encode`` (Triton on GPU,
a chunked matmul on CPU). Codes come out ``[B, K, T]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..kmeans import kmeans


@dataclass
class QuantizedResult:
    quantized: torch.Tensor  # [B, T, D], straight-through: gradients reach the encoder
    codes: torch.Tensor  # [B, K, T] int64
    commit_loss: torch.Tensor  # scalar
    perplexity: torch.Tensor  # [K] codebook usage perplexity of this batch


def _encode_fallback(x: torch.Tensor, codebooks: torch.Tensor, norms: torch.Tensor):
    """Plain chunked nearest-code search for all levels: x [N, D], codebooks [K, M, D] -> codes [N, K], quantized."""
    residual = x.clone()
    codes = x.new_empty(x.shape[0], codebooks.shape[0], dtype=torch.long)
    for k in range(codebooks.shape[0]):
        dist_ = torch.addmm(norms[k], residual, codebooks[k].t(), alpha=-2.0)  # [N, M] (||r||^2 is constant)
        codes[:, k] = dist_.argmin(dim=1)
        residual -= codebooks[k][codes[:, k]]
    return codes, x - residual


def rvq_search(x: torch.Tensor, codebooks: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Nearest codes at every level: x ``[N, D]``, codebooks ``[K, M, D]``
    -> (codes ``[N, K]``, quantized ``[N, D]``)."""
    try:
        from tokenlm.kernels import rvq_encode
    except ImportError:
        return _encode_fallback(x, codebooks, norms)
    out = rvq_encode(x, codebooks, codebook_norms=norms)
    return out.codes, out.quantized


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, n_q: int, codebook_size: int, decay: float = 0.99, dead_threshold: float = 1.0):
        super().__init__()
        self.dim, self.n_q, self.codebook_size = dim, n_q, codebook_size
        self.decay, self.dead_threshold = decay, dead_threshold
        self.register_buffer("codebooks", torch.randn(n_q, codebook_size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(n_q, codebook_size))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``z [B, T, D]`` -> codes ``[B, n_q, T]`` int64."""
        B, T, D = z.shape
        n_q = n_q or self.n_q
        cb = self.codebooks[:n_q]
        codes, _ = rvq_search(z.reshape(B * T, D).float(), cb, cb.pow(2).sum(-1))
        return codes.reshape(B, T, n_q).permute(0, 2, 1).contiguous()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, K, T]`` -> quantized latents ``[B, T, D]`` (sum of the K chosen codes)."""
        B, K, T = codes.shape
        if K > self.n_q:
            raise ValueError(f"{K} codebooks given, the quantizer has {self.n_q}")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError("code out of range")
        idx = codes + torch.arange(K, device=codes.device)[None, :, None] * self.codebook_size
        flat = self.codebooks[:K].reshape(K * self.codebook_size, self.dim)
        return F.embedding(idx, flat).sum(dim=1)  # [B, T, D]

    # ------------------------------------------------------------------ training
    def forward(self, z: torch.Tensor, n_q: int | None = None) -> QuantizedResult:
        """Quantize ``z [B, T, D]`` with the first ``n_q`` codebooks; in training mode also update the EMAs."""
        B, T, D = z.shape
        n_q = n_q or self.n_q
        flat = z.reshape(B * T, D)
        with torch.no_grad():
            cb = self.codebooks[:n_q]
            codes, _ = rvq_search(flat.detach().float(), cb, cb.pow(2).sum(-1))  # [N, n_q]
            chosen = cb[torch.arange(n_q, device=z.device)[None, :], codes]  # [N, n_q, D]
            # residual seen by level k = z - sum of the codes of the levels before it
            residuals = flat.detach()[:, None, :] - (chosen.cumsum(1) - chosen)  # [N, n_q, D]
        quantized = chosen.sum(1)
        commit = F.mse_loss(flat, quantized.detach()) if n_q else flat.new_zeros(())
        if self.training:
            self._ema_update(residuals, codes)
        counts = torch.stack([torch.bincount(codes[:, k], minlength=self.codebook_size) for k in range(n_q)])
        probs = counts.float() / max(codes.shape[0], 1)  # [n_q, M]
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum(-1))
        st = flat + (quantized - flat).detach()  # straight-through estimator
        return QuantizedResult(st.reshape(B, T, D), codes.reshape(B, T, n_q).permute(0, 2, 1), commit, perplexity)

    @torch.no_grad()
    def _ema_update(self, residuals: torch.Tensor, codes: torch.Tensor) -> None:
        N, K, D = residuals.shape
        counts = residuals.new_zeros(K, self.codebook_size)
        sums = residuals.new_zeros(K, self.codebook_size, D)
        for k in range(K):
            counts[k].index_add_(0, codes[:, k], residuals.new_ones(N))
            sums[k].index_add_(0, codes[:, k], residuals[:, k])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count[:K].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum[:K].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count[:K].sum(-1, keepdim=True)
        count = (self.ema_count[:K] + 1e-5) / (n + self.codebook_size * 1e-5) * n  # Laplace smoothing
        self.codebooks[:K].copy_(self.ema_sum[:K] / count[..., None])
        self._restart_dead(residuals)

    @torch.no_grad()
    def _restart_dead(self, residuals: torch.Tensor) -> None:
        N, K, D = residuals.shape
        for k in range(K):
            dead = self.ema_count[k] < self.dead_threshold
            n_dead = int(dead.sum())
            if n_dead == 0:
                continue
            pick = torch.randint(0, N, (n_dead,), device=residuals.device)
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(pick, 0)
            self.codebooks[k, dead] = residuals[pick, k]
            self.ema_sum[k, dead] = residuals[pick, k] * self.dead_threshold
            self.ema_count[k, dead] = self.dead_threshold

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, iters: int = 10) -> None:
        """Initialise every level by k-means on the residuals of a sample ``z [N, D]`` (N >= codebook_size)."""
        residual = z.float().clone()
        for k in range(self.n_q):
            centroids = kmeans(residual, self.codebook_size, iters)
            self.codebooks[k] = centroids
            codes, _ = _encode_fallback(residual, centroids[None], centroids.pow(2).sum(-1)[None])
            self.ema_sum[k] = centroids
            self.ema_count[k] = 1.0
            residual -= centroids[codes[:, 0]]
        self.initialized.fill_(True)
