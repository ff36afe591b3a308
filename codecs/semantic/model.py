"""Semantic tokenizer: a HuBERT-style speech encoder + k-means -> one stream of units ``[B, 1, T]``.

HuBERT (Hsu et al., 2021) learns speech representations by *masked prediction of cluster targets*:
frames are masked and the Transformer predicts the k-means unit of each masked frame from context.
Iteration 1 clusters MFCCs (+ deltas); iteration 2 clusters an intermediate layer of the iteration-1
model. The tokenizer then quantises one layer's output with a final k-means (``centroids``, part of the
state dict), which is what downstream models see as "semantic units".

Sized for a CPU: instead of HuBERT's sample-rate CNN, the front end is a log-mel spectrogram with the
codec's hop (320 samples at 16 kHz -> 50 Hz, one unit per codec frame) and two 1-D convolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenlm.errors import TokenlmError

from ..kmeans import nearest

# frames per mini-batch step when fitting the k-means of targets and units (``tokenlm.codecs.kmeans``)
KMEANS_BATCH = 8192


@dataclass(frozen=True)
class SemanticConfig:
    """The encoder and its unit k-means. ``frame_rate = sample_rate / hop_length`` (50 Hz by default)."""

    sample_rate: int = 16000
    hop_length: int = 320
    n_fft: int = 512
    win_length: int = 400
    n_mels: int = 80
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 4
    ff_mult: int = 4
    conv_pos_kernel: int = 31
    dropout: float = 0.1
    n_targets: int = 100  # classes of the masked-prediction head (k-means of the training targets)
    codebook_size: int = 100  # semantic units of the tokenizer
    unit_layer: int = 4  # 1-based Transformer layer whose output is clustered into units
    # "cmvn": per-utterance mean/variance normalisation over time of the layer's output before the k-means (removes
    # what stays constant over a clip, much of it the voice; +0.01 PNMI and same-sentence distance 0.53 -> 0.50 on
    # semantic-16k v2's layers 4-5), "none": the raw output
    unit_norm: str = "none"


# --------------------------------------------------------------------------- features


class LogMel(nn.Module):
    """Waveform ``[B, N]`` -> log-mel ``[B, n_mels, T]`` with ``T = ceil(N / hop_length)``.

    Frame ``t`` is centred on sample ``t * hop + hop / 2``, i.e. it describes ``[t*hop, (t+1)*hop)``,
    the same span as codec frame ``t``.
    """

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        fb = mel_filter_bank(
            num_frequency_bins=cfg.n_fft // 2 + 1,
            num_mel_filters=cfg.n_mels,
            min_frequency=20.0,
            max_frequency=cfg.sample_rate / 2,
            sampling_rate=cfg.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("fbank", torch.tensor(fb, dtype=torch.float32).T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        self.hop, self.n_fft, self.win = cfg.hop_length, cfg.n_fft, cfg.win_length

    def forward(self, wav: torch.Tensor, warp: torch.Tensor | None = None) -> torch.Tensor:
        """``warp`` [B]: vocal-tract-length perturbation (Jaitly & Hinton, 2013), the power spectrum read at
        ``f / warp`` (formants move up by the factor for warp > 1); training only."""
        B, N = wav.shape
        T = max(1, math.ceil(N / self.hop))
        left = self.n_fft // 2 - self.hop // 2
        right = T * self.hop - N + (self.n_fft - self.hop - left)
        x = F.pad(wav, (left, right))
        spec = torch.stft(x, self.n_fft, self.hop, self.win, self.window, center=False, return_complex=True)
        power = spec.real**2 + spec.imag**2  # [B, F, T]
        if warp is not None:
            power = warp_frequency(power, warp)
        mel = torch.einsum("mf,bft->bmt", self.fbank, power[..., :T])
        return torch.log(mel + 1e-6)


def warp_frequency(power: torch.Tensor, warp: torch.Tensor) -> torch.Tensor:
    """``power`` [B, F, T] -> the same spectra with frequency ``f`` taking the value at ``f / warp[b]``
    (linear interpolation between bins; past Nyquist the top bin repeats)."""
    n = power.shape[1]
    src = (torch.arange(n, device=power.device, dtype=power.dtype)[None] / warp[:, None].to(power.dtype)).clamp(
        max=n - 1
    )  # [B, F]
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (src - lo)[..., None]
    T = power.shape[-1]
    take = lambda idx: power.gather(1, idx[..., None].expand(-1, -1, T))  # noqa: E731
    return take(lo) * (1 - frac) + take(hi) * frac


def cmvn(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance mean/variance normalisation over time of ``[B, D, T]`` (removes channel and level)."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, correction=0) + eps)


def deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas along time of ``[B, D, T]`` (the HTK formula, edges replicated)."""
    pad = F.pad(x, (width, width), mode="replicate")
    T = x.shape[-1]
    num = sum(
        n * (pad[..., width + n : width + n + T] - pad[..., width - n : width - n + T]) for n in range(1, width + 1)
    )
    return num / (2 * sum(n * n for n in range(1, width + 1)))


def mfcc_features(logmel: torch.Tensor, n_mfcc: int = 13) -> torch.Tensor:
    """Log-mel ``[B, M, T]`` -> MFCC + delta + delta-delta ``[B, T, 3 * n_mfcc]``, per-utterance CMVN."""
    M = logmel.shape[1]
    n = torch.arange(M, dtype=logmel.dtype, device=logmel.device)
    k = torch.arange(n_mfcc, dtype=logmel.dtype, device=logmel.device)[:, None]
    dct = torch.cos(math.pi / M * (n + 0.5) * k) * math.sqrt(2.0 / M)  # DCT-II, orthonormal rows
    c = torch.einsum("km,bmt->bkt", dct, logmel)
    d1 = deltas(c)
    feats = torch.cat([c, d1, deltas(d1)], dim=1)
    return rearrange(cmvn(feats), "b d t -> b t d")


# --------------------------------------------------------------------------- encoder


@dataclass
class EncoderOutput:
    """``hidden`` [B, T, D] after the final norm; ``layers[i]`` [B, T, D] is the output of layer i + 1."""

    hidden: torch.Tensor
    layers: list[torch.Tensor]


class SemanticEncoder(nn.Module):
    """Log-mel -> conv front end -> (masking) -> conv positional embedding -> pre-norm Transformer."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.features = LogMel(cfg)
        self.frontend = nn.Sequential(
            nn.Conv1d(cfg.n_mels, cfg.dim, 3, padding=1), nn.GELU(), nn.Conv1d(cfg.dim, cfg.dim, 3, padding=1)
        )
        self.frontend_norm = nn.LayerNorm(cfg.dim)
        self.mask_emb = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        groups = math.gcd(16, cfg.dim)
        k = cfg.conv_pos_kernel
        self.pos_conv = nn.Conv1d(cfg.dim, cfg.dim, k, padding=k // 2, groups=groups)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.dim,
                cfg.n_heads,
                cfg.ff_mult * cfg.dim,
                cfg.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def frames(self, wav: torch.Tensor, warp: torch.Tensor | None = None) -> torch.Tensor:
        """Waveform ``[B, N]`` -> normalised log-mel ``[B, n_mels, T]`` (``warp``: see ``LogMel``)."""
        return cmvn(self.features(wav, warp))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None, upto: int | None = None) -> EncoderOutput:
        """``feats`` [B, n_mels, T]; ``mask`` [B, T] bool (True = replaced by the mask embedding);
        ``upto`` stops after that many layers (feature extraction needs no more)."""
        x = rearrange(self.frontend(feats), "b d t -> b t d")
        x = self.frontend_norm(x)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        x = x + F.gelu(rearrange(self.pos_conv(rearrange(x, "b t d -> b d t")), "b d t -> b t d"))
        outs = []
        for layer in self.layers[: upto or len(self.layers)]:
            x = layer(x)
            outs.append(x)
        return EncoderOutput(self.norm(x), outs)


def span_mask(B: int, T: int, prob: float, span: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """HuBERT/wav2vec 2.0 masking: each frame starts a masked span of ``span`` frames with ``prob``.

    -> ``[B, T]`` bool; at least one span per row so that every example has a loss.
    """
    starts = torch.rand(B, T, generator=generator) < prob
    starts[torch.arange(B), torch.randint(max(1, T - span + 1), (B,), generator=generator)] = True
    # frame t is masked when a span started in [t - span + 1, t]
    return F.max_pool1d(F.pad(starts.float()[:, None], (span - 1, 0)), span, stride=1)[:, 0] > 0


# --------------------------------------------------------------------------- the tokenizer


class SemanticTokenizer(nn.Module):
    """AudioTokenizer with ``n_q = 1``: ``encode(wav [B, C, N]) -> codes [B, 1, T]`` int64 at ``frame_rate``.

    Units are the nearest of ``codebook_size`` centroids to the output of Transformer layer
    ``unit_layer``. Semantic units carry no speaker or phase information, so ``decode`` is refused.
    """

    config_class = SemanticConfig

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        if not 1 <= cfg.unit_layer <= cfg.n_layers:
            raise TokenlmError(f"unit_layer {cfg.unit_layer} outside 1..{cfg.n_layers}")
        if cfg.unit_norm not in ("none", "cmvn"):
            raise TokenlmError(f"unit_norm must be 'none' or 'cmvn', got {cfg.unit_norm!r}")
        self.cfg = cfg
        self.encoder = SemanticEncoder(cfg)
        self.head = nn.Linear(cfg.dim, cfg.n_targets)
        self.register_buffer("centroids", torch.zeros(cfg.codebook_size, cfg.dim))

    sample_rate = property(lambda self: self.cfg.sample_rate)
    codebook_size = property(lambda self: self.cfg.codebook_size)
    frame_rate = property(lambda self: self.cfg.sample_rate / self.cfg.hop_length)
    n_q = 1

    def features(self, wav: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Mono ``wav`` [B, N] -> layer ``layer`` (default ``unit_layer``) output ``[B, T, dim]``, normalised as
        ``unit_norm`` says: the space the unit k-means lives in."""
        layer = layer or self.cfg.unit_layer
        h = self.encoder(self.encoder.frames(wav), upto=layer).layers[layer - 1]
        if self.cfg.unit_norm == "cmvn":
            h = rearrange(cmvn(rearrange(h, "b t d -> b d t")), "b d t -> b t d")
        return h

    def forward(self, wav: torch.Tensor, mask: torch.Tensor, warp: torch.Tensor | None = None) -> torch.Tensor:
        """Masked prediction (training): mono ``wav`` [B, N] with frames ``mask`` [B, T] hidden -> target logits
        ``[B, T, n_targets]``; ``warp`` [B] perturbs the input's vocal tract length (the targets come from the
        unwarped audio, so the model learns to ignore it). One module call, so that DDP sees the whole pass."""
        return self.head(self.encoder(self.encoder.frames(wav, warp), mask).hidden)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav`` [B, C, N] float at ``sample_rate`` (channels are averaged) -> ``codes`` [B, 1, T] int64,
        ``T = ceil(N / hop_length)``."""
        if wav.dim() != 3:
            raise TokenlmError(f"encode expects wav [B, C, N], got shape {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise TokenlmError("encode got an empty waveform")
        h = self.features(wav.float().mean(1))
        B, T, D = h.shape
        codes = nearest(h.reshape(B * T, D), self.centroids)
        return codes.view(B, 1, T)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise TokenlmError("semantic units cannot be decoded to audio; decode codec codes instead")
