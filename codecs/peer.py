"""The EnCodec-architecture peer: EnCodec's SEANet encoder and decoder (transformers' ``EncodecModel``,
random init, never the ``encodec`` package) around the same residual VQ as ours, trained by the same
trainer on the same data for the same wall time. It is the same-budget baseline of ``tokenlm eval codec``.

At 16 kHz with ratios 8·5·4·2 it makes 50 frames/s of 128-d latents, exactly like ``Codec``, so the two
differ only in architecture: sample-rate convolutions (EnCodec) vs frame-rate ConvNeXt blocks (ours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .codec import CodecOutput, quantize
from .rvq import ResidualVQ


@dataclass(frozen=True)
class EncodecPeerConfig:
    sample_rate: int = 16000
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    num_filters: int = 32
    latent_dim: int = 128
    n_q: int = 12
    codebook_size: int = 1024
    ema_decay: float = 0.99
    dead_threshold: float = 1.0

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)


def _torch_default_init(module: nn.Module) -> None:
    """PyTorch's default initialisation, which the original EnCodec (audiocraft) trains from.

    transformers' ``EncodecModel`` initialises for loading checkpoints, and its Conv1d init cannot reach the
    weight-normed convolutions' parameters. Either way a fresh SEANet encoder's latents vary little over
    time next to their offset (measured on speech: 23x less with this init, 37x less with transformers'), so
    the first hundred steps run with one or two live codes until the encoder learns to spread them."""
    from torch.nn.utils import parametrizations, parametrize

    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            normed = parametrize.is_parametrized(m, "weight")
            if normed:
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            m.reset_parameters()
            if normed:
                parametrizations.weight_norm(m)
        elif isinstance(m, nn.LSTM):
            m.reset_parameters()


class EncodecPeer(nn.Module):
    """AudioTokenizer with EnCodec's encoder/decoder; same methods as ``Codec``."""

    config_class = EncodecPeerConfig

    def __init__(self, cfg: EncodecPeerConfig):
        super().__init__()
        from transformers import EncodecConfig, EncodecModel

        hf = EncodecModel(
            EncodecConfig(
                sampling_rate=cfg.sample_rate,
                upsampling_ratios=list(cfg.ratios),
                num_filters=cfg.num_filters,
                hidden_size=cfg.latent_dim,
                codebook_dim=cfg.latent_dim,
                codebook_size=cfg.codebook_size,
                audio_channels=1,
                use_causal_conv=True,
            )
        )
        self.cfg = cfg
        self.encoder, self.decoder = hf.encoder, hf.decoder
        _torch_default_init(self.encoder)
        _torch_default_init(self.decoder)
        self.quantizer = ResidualVQ(cfg.latent_dim, cfg.n_q, cfg.codebook_size, cfg.ema_decay, cfg.dead_threshold)

    sample_rate = property(lambda self: self.cfg.sample_rate)
    frame_rate = property(lambda self: self.cfg.sample_rate / self.cfg.hop)
    n_q = property(lambda self: self.cfg.n_q)
    codebook_size = property(lambda self: self.cfg.codebook_size)

    def latents(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [B, C, N]`` -> ``[B, ceil(N / hop), latent_dim]``."""
        x = wav.mean(1, keepdim=True)
        T = max(1, math.ceil(x.shape[-1] / self.cfg.hop))
        x = nn.functional.pad(x, (0, T * self.cfg.hop - x.shape[-1]))
        return self.encoder(x).transpose(1, 2)

    def _decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.transpose(1, 2))  # [B, 1, T*hop]

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        return self.quantizer.encode(self.latents(wav), n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        wav = self._decode_latents(self.quantizer.decode(codes))
        return wav[..., :length] if length is not None else wav

    def forward(self, wav: torch.Tensor, n_q: int | None = None, frozen_tokens: bool = False) -> CodecOutput:
        quant = quantize(self, wav, n_q, frozen_tokens)
        return CodecOutput(self._decode_latents(quant.quantized)[..., : wav.shape[-1]], quant)
