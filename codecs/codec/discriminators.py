"""Discriminators for adversarial codec training, sized for a CPU budget.

- ``MultiPeriodDiscriminator`` (HiFi-GAN, arXiv:2010.05646): the waveform folded by periods 2, 3, 5, 7, 11
  into 2-D and judged by strided (k, 1) convolutions — it sees periodic structure (pitch, phase).
- ``MultiScaleSTFTDiscriminator`` (EnCodec, arXiv:2210.13438): 2-D convs on complex STFTs at several
  resolutions — it sees spectral texture.

Each returns per-sub-discriminator logits and feature maps (for feature matching).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, channels=(16, 64, 128, 128)):
        super().__init__()
        self.period = period
        layers, c_in = [], 1
        for c in channels:
            layers.append(weight_norm(nn.Conv2d(c_in, c, (5, 1), (3, 1), padding=(2, 0))))
            c_in = c
        layers.append(weight_norm(nn.Conv2d(c_in, c_in, (5, 1), 1, padding=(2, 0))))
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(c_in, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor):
        """``x [B, N]`` -> logits ``[B, ...]``, feature maps."""
        B, N = x.shape
        pad = (-N) % self.period
        x = F.pad(x, (0, pad), mode="reflect").view(B, 1, (N + pad) // self.period, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        return self.out(x), feats


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods=(2, 3, 5, 7, 11), channels=(16, 64, 128, 128)):
        super().__init__()
        self.discs = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, x: torch.Tensor):
        outs = [d(x) for d in self.discs]
        return [o[0] for o in outs], [o[1] for o in outs]


class STFTDiscriminator(nn.Module):
    """2-D convs over (time, frequency) of a complex STFT given as 2 channels (real, imag)."""

    def __init__(self, n_fft: int, channels: int = 16, n_layers: int = 4):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [weight_norm(nn.Conv2d(2, channels, (3, 9), padding=(1, 4)))]
        for i in range(n_layers - 1):
            dilation = 2**i
            layers.append(
                weight_norm(
                    nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(dilation, 1), padding=(dilation, 4))
                )
            )
        layers.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor):
        spec = torch.stft(x, self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, T, F]
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        return self.out(h), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, n_ffts=(256, 512, 1024), channels: int = 16):
        super().__init__()
        self.discs = nn.ModuleList(STFTDiscriminator(n, channels) for n in n_ffts)

    def forward(self, x: torch.Tensor):
        outs = [d(x) for d in self.discs]
        return [o[0] for o in outs], [o[1] for o in outs]


class Discriminators(nn.Module):
    """All discriminators together: ``forward(x [B, N])`` -> (list of logits, list of feature lists).
    ``stft_channels = 0``: the multi-period discriminators alone (the STFT ones cost ~4x as much on a CPU).

    The input is scaled by ``input_gain`` and every convolution's bias starts at zero. With PyTorch's default
    init and the corpus's -23 LUFS audio (RMS ~0.05), the input-dependent part of the logits was ~1e-3 of the
    bias part, so real and fake clips got the same logits and the hinge loss sat at chance (2.0) for hundreds of
    steps: 30 discriminator-only steps against clips plus white noise at 10 dB SNR left it at 1.99; gain 10 and
    zero biases brought it to 1.39 (GAN runs with the default init stalled at 1.6-2.0)."""

    def __init__(self, mpd_channels=(16, 64, 128, 128), stft_channels: int = 16, input_gain: float = 10.0):
        super().__init__()
        self.input_gain = input_gain
        self.mpd = MultiPeriodDiscriminator(channels=mpd_channels)
        self.msstft = MultiScaleSTFTDiscriminator(channels=stft_channels) if stft_channels > 0 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        x = x * self.input_gain
        logits, feats = self.mpd(x)
        if self.msstft is not None:
            l2, f2 = self.msstft(x)
            logits, feats = logits + l2, feats + f2
        return logits, feats
