"""The AudioTokenizer interface shared by the codec and the semantic tokenizer."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AudioTokenizer(Protocol):
    """Audio <-> discrete codes. ``encode(wav [B, C, N]) -> codes [B, K, T]`` int64; ``decode`` inverts it
    (the semantic tokenizer cannot decode and says so). ``frame_rate`` codes per second per codebook."""

    sample_rate: int
    frame_rate: float
    n_q: int
    codebook_size: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...
