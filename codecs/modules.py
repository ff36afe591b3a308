"""Frame-rate building blocks of the codec: causal ConvNeXt blocks with carried streaming state,
and the STFT framing / overlap-add that turn samples into frames and back.

Everything after the framing runs at the frame rate (50 Hz for 16 kHz audio with hop 320), which is
what makes the codec cheap enough to train and run on a CPU (Vocos, WavTokenizer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalConvNeXtBlock(nn.Module):
    """Depthwise causal conv (kernel k over frames) -> LayerNorm -> pointwise MLP -> layer scale, residual.

    Works on ``[B, T, C]``. ``forward(x, state)`` takes the last ``k - 1`` input frames of the previous
    chunk (``[B, k-1, C]``, zeros at the start) and returns the output and the new state, so chunked calls
    equal one call on the concatenation.
    """

    def __init__(self, dim: int, mlp_ratio: float = 3.0, kernel_size: int = 7, layer_scale: float = 1e-2):
        super().__init__()
        self.kernel_size = kernel_size
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            state = self.initial_state(x)
        xp = torch.cat([state, x], dim=1)  # [B, k-1+T, C]
        h = self.dwconv(xp.transpose(1, 2)).transpose(1, 2)  # [B, T, C]
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + self.gamma * h, xp[:, xp.shape[1] - (self.kernel_size - 1) :]


class ConvNeXtStack(nn.Module):
    """``n`` causal ConvNeXt blocks, then LayerNorm; state is a list with one tensor per block."""

    def __init__(self, dim: int, n: int, mlp_ratio: float, kernel_size: int):
        super().__init__()
        self.blocks = nn.ModuleList(CausalConvNeXtBlock(dim, mlp_ratio, kernel_size) for _ in range(n))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, state: list[torch.Tensor] | None = None):
        new_state = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else state[i])
            new_state.append(s)
        return self.norm(x), new_state


def sqrt_hann(win: int, device=None) -> torch.Tensor:
    return torch.hann_window(win, periodic=True, device=device).sqrt()


class STFTFrontEnd(nn.Module):
    """Samples -> per-frame spectral features ``[B, T, 3 * (win // 2 + 1)]``.

    Frame ``t`` covers samples ``[t * hop, t * hop + win)`` (win = 2 * hop): it sees exactly the two output
    blocks it helps reconstruct, so the codec needs no lookahead beyond one window. Features are the
    power-law compressed complex spectrum (|X|^0.3 e^{i phi}: real and imaginary) and log |X|, which keep
    the phase the decoder has to rebuild.
    """

    def __init__(self, hop: int):
        super().__init__()
        self.hop, self.win = hop, 2 * hop
        self.register_buffer("window", sqrt_hann(self.win), persistent=False)

    @property
    def n_features(self) -> int:
        return 3 * (self.win // 2 + 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [B, L]`` with ``L = (T + 1) * hop`` -> features ``[B, T, F]``."""
        frames = frame_signal(wav, self.hop) * self.window  # [B, T, win]
        spec = torch.fft.rfft(frames, dim=-1)  # [B, T, win/2+1]
        mag = spec.abs().clamp_min(1e-7)
        comp = spec * mag.pow(-0.7)  # |X|^0.3 e^{i phi}
        return torch.cat([comp.real, comp.imag, torch.log(mag)], dim=-1)


class ISTFTHead(nn.Module):
    """Frame features ``[B, T, C]`` -> windowed frames ``[B, T, win]`` (magnitude and phase predicted apart).

    The phase comes from a predicted 2-vector normalised to unit length, which has no wrap-around
    discontinuity (Vocos predicts an angle through cos/sin for the same reason).
    """

    def __init__(self, dim: int, hop: int):
        super().__init__()
        self.hop, self.win = hop, 2 * hop
        self.n_bins = self.win // 2 + 1
        self.proj = nn.Linear(dim, 3 * self.n_bins)
        self.register_buffer("window", torch.hann_window(self.win, periodic=True), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the projection may run in bf16 under autocast; the spectrum and the inverse FFT stay in fp32
        log_mag, re, im = self.proj(x).float().split(self.n_bins, dim=-1)
        mag = torch.exp(log_mag.clamp(max=6.0))
        norm = torch.sqrt(re * re + im * im + 1e-9)
        spec = torch.complex(mag * re / norm, mag * im / norm)
        return torch.fft.irfft(spec, n=self.win, dim=-1) * self.window  # [B, T, win]


def overlap_add(frames: torch.Tensor, carry: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed frames ``[B, T, 2*hop]`` -> samples ``[B, T*hop]`` and the carried second half of the last frame.

    Output block ``j`` is the first half of frame ``j`` plus the second half of frame ``j - 1`` (``carry``
    for ``j = 0``): hann windows at 50% overlap sum to one, so the blocks cross-fade.
    """
    B, T, W = frames.shape
    hop = W // 2
    first, second = frames[..., :hop], frames[..., hop:]
    prev = torch.cat([carry if carry is not None else frames.new_zeros(B, 1, hop), second[:, :-1]], dim=1)
    return (first + prev).reshape(B, T * hop), second[:, -1:]


def frame_signal(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """``[B, (T+1)*hop]`` -> overlapping frames ``[B, T, 2*hop]`` (a reshape, no unfold: exports to ONNX)."""
    blocks = wav.reshape(wav.shape[0], -1, hop)  # [B, T+1, hop]
    return torch.cat([blocks[:, :-1], blocks[:, 1:]], dim=-1)


def frames_for(num_samples: int, hop: int) -> int:
    """Number of codec frames for ``num_samples`` samples (the last partial block counts)."""
    return max(1, math.ceil(num_samples / hop))
