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

from .model import CodecOutput, quantize
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
    time next to their offset (measured on speech: 23x less with this init, 37x less with transformers'), and
    training from there never left codebook collapse: the trainer follows with ``data_dependent_init``."""
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


@torch.no_grad()
def data_dependent_init(module: nn.Module, run, final_std: float | None = None) -> None:
    """Weight normalisation's data-dependent initialisation (Salimans & Kingma, 2016, sec. 3): one forward
    pass ``run()`` in which every weight-normed convolution of ``module``, in the order it runs, rescales its
    gain ``g`` and bias so that its output channels have zero mean and unit variance over the batch (the last
    one to ``final_std`` instead, when given). The architecture is unchanged; only the starting point moves.

    Why the peer needs it: with PyTorch's default init a fresh SEANet encoder's latents vary over time ~15x
    less than their offset (measured: std over frames 0.0013, mean 0.02), the k-means-fitted codebooks see
    one blob, and training stayed in codebook collapse (perplexity 1-8) for 1,400 steps."""
    from torch.nn.utils import parametrize

    convs = [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    convs = [m for m in convs if parametrize.is_parametrized(m, "weight")]
    if not convs:
        return

    def hook(conv, _inputs, out):
        dims = (0, 2)
        mean, std = out.mean(dims, keepdim=True), out.std(dims, keepdim=True).clamp_min(1e-8)
        if isinstance(conv, nn.ConvTranspose1d):
            # its gain g is per *input* channel (weight [C_in, C_out, k] normed over dims 1-2): one scale for all
            std = std.mean().expand_as(std)
        scale = (final_std if conv is convs[-1] and final_std is not None else 1.0) / std
        g = conv.parametrizations.weight.original0  # [C_out, 1, 1], or [C_in, 1, 1] for ConvTranspose1d
        ch = scale.reshape(-1)
        g.mul_(ch[0] if isinstance(conv, nn.ConvTranspose1d) else ch.reshape(g.shape))
        if conv.bias is not None:
            conv.bias.sub_(mean.reshape(-1)).mul_(ch)
        return (out - mean) * scale

    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        run()
    finally:
        for h in handles:
            h.remove()


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

    def data_init(self, wav: torch.Tensor) -> None:
        """Data-dependent init of a fresh model from a batch ``wav [B, 1, N]``: unit-variance latents, and a
        decoder whose output starts at the batch's level."""
        data_dependent_init(self.encoder, lambda: self.latents(wav))
        z = self.latents(wav).detach()
        data_dependent_init(self.decoder, lambda: self._decode_latents(z), final_std=float(wav.std()))

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
