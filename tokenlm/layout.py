"""Codebook interleaving patterns, as data (after audiocraft's ``codebooks_patterns``).

A codec gives codes ``[B, K, T]``. The LM reads ``S`` steps of ``K_out`` parallel streams. A
``Pattern`` is an index table ``index [K_out, S]``: entry ``q * T + t`` says that step ``s`` of stream
``k`` carries code ``(q, t)``; ``-1`` marks a filler step (the ``fill`` id, never in the loss).
``build`` gathers through the table and ``revert`` scatters back, so every pattern round-trips.

Worked example, K = 3 codebooks, T = 4 frames, codes ``a0..a3`` (q=0), ``b..`` (q=1), ``c..`` (q=2)::

    delay (default, MusicGen): codebook q is shifted right by q steps, S = T + K - 1 = 6
        stream 0:  a0 a1 a2 a3 .  .
        stream 1:  .  b0 b1 b2 b3 .
        stream 2:  .  .  c0 c1 c2 c3
      step s predicts a_s, b_{s-1}, c_{s-2}: the coarse code of a frame is known before its fine codes.
    parallel: all codebooks of a frame at the same step, S = T
        stream q:  q0 q1 q2 q3
    flatten: one stream, frame by frame, S = K * T
        stream 0:  a0 b0 c0 a1 b1 c1 a2 b2 c2 a3 b3 c3

``.`` is the ``fill`` id. Property tests check ``revert(build(x)) == x`` for random shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import TokenlmError

FILLER = -1


@dataclass(frozen=True)
class Pattern:
    """An interleaving of ``n_q`` codebooks over ``n_frames`` frames: ``index [n_streams, n_steps]``."""

    name: str
    n_q: int
    n_frames: int
    index: torch.Tensor  # [K_out, S] int64, q * T + t or FILLER

    @property
    def n_streams(self) -> int:
        return self.index.shape[0]

    @property
    def n_steps(self) -> int:
        return self.index.shape[1]

    def valid(self) -> torch.Tensor:
        """Bool ``[K_out, S]``: True where a step carries a code (False on fillers)."""
        return self.index >= 0

    def frames_done(self, step: int) -> int:
        """How many whole frames are known once steps ``0..step`` are generated."""
        idx = self.index[:, : step + 1]
        seen = torch.zeros(self.n_q * self.n_frames, dtype=torch.bool)
        seen[idx[idx >= 0]] = True
        per_frame = seen.view(self.n_q, self.n_frames).all(0)
        return int(per_frame.cumprod(0).sum())


def delay_pattern(n_q: int, n_frames: int, delays: tuple[int, ...] | None = None) -> Pattern:
    """Codebook q shifted right by ``delays[q]`` steps (default ``q``)."""
    delays = tuple(range(n_q)) if delays is None else tuple(delays)
    if len(delays) != n_q or min(delays) < 0:
        raise TokenlmError(f"delay pattern needs {n_q} non-negative delays, got {delays}")
    S = n_frames + max(delays)
    index = torch.full((n_q, S), FILLER, dtype=torch.long)
    t = torch.arange(n_frames)
    for q, d in enumerate(delays):
        index[q, d : d + n_frames] = q * n_frames + t
    return Pattern("delay", n_q, n_frames, index)


def parallel_pattern(n_q: int, n_frames: int) -> Pattern:
    """All codebooks of a frame in one step."""
    return Pattern("parallel", n_q, n_frames, delay_pattern(n_q, n_frames, (0,) * n_q).index)


def flatten_pattern(n_q: int, n_frames: int) -> Pattern:
    """One stream, codebooks of a frame in order: ``(t, q)`` at step ``t * n_q + q``."""
    q, t = torch.meshgrid(torch.arange(n_q), torch.arange(n_frames), indexing="ij")
    order = (q * n_frames + t).T.reshape(1, -1)  # [1, T*K], frame-major
    return Pattern("flatten", n_q, n_frames, order.clone())


PATTERNS = {"delay": delay_pattern, "parallel": parallel_pattern, "flatten": flatten_pattern}


def make_pattern(name: str, n_q: int, n_frames: int) -> Pattern:
    if name not in PATTERNS:
        raise TokenlmError(f"unknown codebook pattern {name!r} (known: {', '.join(PATTERNS)})")
    return PATTERNS[name](n_q, n_frames)


def build(codes: torch.Tensor, pattern: Pattern, fill: int) -> torch.Tensor:
    """Codes ``[B, K, T]`` -> interleaved ``[B, K_out, S]``; filler steps hold ``fill``."""
    B, K, T = codes.shape
    if (K, T) != (pattern.n_q, pattern.n_frames):
        raise TokenlmError(f"pattern is for {pattern.n_q}x{pattern.n_frames} codes, got {K}x{T}")
    flat = codes.reshape(B, K * T)
    idx = pattern.index.clamp(min=0).view(1, -1).expand(B, -1)
    out = flat.gather(1, idx).view(B, *pattern.index.shape)
    return out.masked_fill(~pattern.valid(), fill)


def revert(seq: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Interleaved ``[B, K_out, S]`` -> codes ``[B, K, T]`` (inverse of ``build``)."""
    B = seq.shape[0]
    if tuple(seq.shape[1:]) != tuple(pattern.index.shape):
        raise TokenlmError(f"sequence shape {tuple(seq.shape[1:])} does not match pattern {tuple(pattern.index.shape)}")
    valid = pattern.valid().view(-1)
    src = seq.reshape(B, -1)[:, valid]
    out = torch.empty(B, pattern.n_q * pattern.n_frames, dtype=seq.dtype, device=seq.device)
    out[:, pattern.index.view(-1)[valid]] = src
    return out.view(B, pattern.n_q, pattern.n_frames)
