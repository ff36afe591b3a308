"""Attention: the PyTorch twin (scaled_dot_product_attention) and the shared mask convention.

Causal masking is bottom-right aligned, as in FlashAttention-2: query i of Tq attends to keys
``j <= i + (Tk - Tq)``. With Tq == Tk that is the usual lower triangle; with a KV cache (Tq < Tk) the
new queries are the last Tq positions, so a single decode-step query sees every cached key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEAD_DIMS = (16, 32, 64, 128)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """Raise ``ValueError`` unless q ``[B, H, Tq, D]``, k/v ``[B, H, Tk, D]`` agree (Tq <= Tk if causal)."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            f"attention wants q [B, H, Tq, D] and k, v [B, H, Tk, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} differ in B, H or D")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(
            f"causal attention needs Tq <= Tk (queries are the last Tq positions), "
            f"got Tq={q.shape[2]} > Tk={k.shape[2]}"
        )


def causal_mask(Tq: int, Tk: int, device=None) -> torch.Tensor:
    """Bottom-right aligned causal mask ``[Tq, Tk]`` bool, True where attending is allowed."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """The twin: SDPA with the bottom-right causal mask.

    q ``[B, H, Tq, D]``, k/v ``[B, H, Tk, D]`` -> ``[B, H, Tq, D]``.
    """
    check_inputs(q, k, v, causal)
    Tq, Tk = q.shape[2], k.shape[2]
    if not causal or Tq == 0:
        return F.scaled_dot_product_attention(q, k, v)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if Tq == 1:  # one decode step sees the whole cache: no mask needed
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk, q.device))


def attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Textbook attention that builds the full ``[B, H, Tq, Tk]`` score matrix (for tests and benches)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)
