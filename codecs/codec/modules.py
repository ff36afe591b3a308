"""Frame-rate building blocks of the codec: causal ConvNeXt blocks with carried streaming state,
and the STFT framing / overlap-add that turn samples into frames and back.

Everything after the framing runs at the frame rate (50 Hz for 16 kHz audio with hop 320), which is
what makes the codec cheap enough to train and run on a CPU (Vocos, WavTokenizer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
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
    """Frame features ``[B, T, C]`` -> windowed frames ``[B, T * overlap, win]`` (magnitude and phase predicted
    apart), ``win = 2 * hop``, to be overlap-added at ``sub_hop = hop / overlap``.

    ``overlap = 1``: one frame per codec frame, hann windows at 50% overlap. ``overlap = 2``: two frames per codec
    frame at 75% overlap (Vocos's hop = n_fft / 4): every output sample is the sum of four frames instead of two
    (on codec-16k's trunk it measured no better than 1: configs/experiments/codec/small_ola2.yaml). The phase comes
    from a predicted 2-vector normalised to unit length, which has no wrap-around discontinuity (Vocos predicts an
    angle through cos/sin for the same reason).
    """

    def __init__(self, dim: int, hop: int, overlap: int = 1):
        super().__init__()
        if hop % overlap:
            raise ValueError(f"head overlap {overlap} must divide the hop ({hop})")
        self.hop, self.win, self.overlap, self.sub_hop = hop, 2 * hop, overlap, hop // overlap
        self.n_bins = self.win // 2 + 1
        self.proj = nn.Linear(dim, overlap * 3 * self.n_bins)
        # periodic hann windows at hop win / (2 * overlap) sum to ``overlap``
        self.register_buffer("window", torch.hann_window(self.win, periodic=True) / overlap, persistent=False)

    def spectra(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, T, C]`` -> log-magnitude, real and imaginary parts, each ``[B, T * overlap, n_bins]``."""
        p = rearrange(self.proj(x), "b t (s c) -> b (t s) c", s=self.overlap)
        return p.split(self.n_bins, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the projection may run in bf16 under autocast; the spectrum and the inverse FFT stay in fp32
        log_mag, re, im = (v.float() for v in self.spectra(x))
        mag = torch.exp(log_mag.clamp(max=6.0))
        norm = torch.sqrt(re * re + im * im + 1e-9)
        spec = torch.complex(mag * re / norm, mag * im / norm)
        return torch.fft.irfft(spec, n=self.win, dim=-1) * self.window  # [B, T * overlap, win]


def widen_head(weight: torch.Tensor, bias: torch.Tensor, hop: int, overlap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection of a 1-frame ``ISTFTHead`` (``weight [3 * n_bins, C]``, ``bias``) as that of an ``overlap``-frame
    one: sub-frame ``s`` starts ``s * hop / overlap`` samples later, so it gets the same magnitudes and the phases
    advanced by that shift (a rotation of each bin's (re, im) pair, linear in the weights). A warm start for
    changing the head of a trained codec; the decoder then needs a short fine-tune."""
    n_bins = weight.shape[0] // 3
    win = 2 * hop
    ws, bs = [], []
    for s in range(overlap):
        ang = 2 * math.pi * torch.arange(n_bins, dtype=torch.float64) * (s * hop / overlap) / win
        c, si = torch.cos(ang).to(weight.dtype)[:, None], torch.sin(ang).to(weight.dtype)[:, None]
        (wm, wr, wi), (bm, br, bi) = weight.split(n_bins), bias[:, None].split(n_bins)
        ws.append(torch.cat([wm, c * wr - si * wi, si * wr + c * wi]))
        bs.append(torch.cat([bm, c * br - si * bi, si * br + c * bi])[:, 0])
    return torch.cat(ws), torch.cat(bs)


def overlap_add(
    frames: torch.Tensor, carry: torch.Tensor | None = None, hop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed frames ``[B, M, W]`` at ``hop`` (default ``W / 2``) -> samples ``[B, M * hop]`` and the carry
    ``[B, W / hop - 1, hop]``: the parts of the last frames that belong to later output.

    Output block ``j`` (``hop`` samples) is the sum of block ``i`` of frame ``j - i`` over ``i < W / hop``, plus
    what ``carry`` holds for it (zeros for the first call). A sum of shifted copies (pads, no scatter), which
    exports to ONNX.
    """
    B, M, W = frames.shape
    hop = hop or W // 2
    k = W // hop
    blocks = frames.reshape(B, M, k, hop)
    out = sum(F.pad(blocks[:, :, i], (0, 0, i, k - 1 - i)) for i in range(k))  # [B, M + k - 1, hop]
    if carry is not None:
        out = out + F.pad(carry, (0, 0, 0, M))
    return out[:, :M].reshape(B, M * hop), out[:, M:]


def frame_signal(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """``[B, (T+1)*hop]`` -> overlapping frames ``[B, T, 2*hop]`` (a reshape, no unfold: exports to ONNX)."""
    blocks = wav.reshape(wav.shape[0], -1, hop)  # [B, T+1, hop]
    return torch.cat([blocks[:, :-1], blocks[:, 1:]], dim=-1)


def frames_for(num_samples: int, hop: int) -> int:
    """Number of codec frames for ``num_samples`` samples (the last partial block counts)."""
    return max(1, math.ceil(num_samples / hop))
