"""The tokenlm neural codec: causal STFT-frame encoder -> residual VQ -> decoder with an iSTFT head.

Shapes: ``wav [B, 1, N]`` at ``sample_rate`` -> latents ``[B, T, latent_dim]`` with ``T = ceil(N / hop)``
-> codes ``[B, K, T]`` -> ``wav [B, 1, N]``. Bitrate with the first k codebooks is
``k * log2(codebook_size) * frame_rate`` bits/s (1.5 / 3 / 6 kbps at k = 3 / 6 / 12 for the 16 kHz model).

Everything is causal: ``StreamingEncoder`` / ``StreamingDecoder`` fed chunks of any size produce exactly
the codes and samples of the whole-file call (tests/test_codec.py proves it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .modules import ConvNeXtStack, ISTFTHead, STFTFrontEnd, frames_for, overlap_add
from .rvq import QuantizedResult, ResidualVQ


@dataclass(frozen=True)
class CodecConfig:
    sample_rate: int = 16000
    hop: int = 320  # samples per frame: 50 Hz at 16 kHz
    dim: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 8
    mlp_ratio: float = 3.0
    kernel_size: int = 7
    latent_dim: int = 128
    n_q: int = 12
    codebook_size: int = 1024
    ema_decay: float = 0.99
    dead_threshold: float = 1.0
    # iSTFT frames per codec frame (``ISTFTHead``): 1 = 50% overlap (codec-16k v1-v4), 2 = 75% overlap
    head_overlap: int = 1


@dataclass
class CodecOutput:
    wav: torch.Tensor  # [B, 1, N]
    quant: QuantizedResult


class Encoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.frontend = STFTFrontEnd(cfg.hop)
        self.proj_in = nn.Linear(self.frontend.n_features, cfg.dim)
        self.stack = ConvNeXtStack(cfg.dim, cfg.encoder_layers, cfg.mlp_ratio, cfg.kernel_size)
        self.proj_out = nn.Linear(cfg.dim, cfg.latent_dim)

    def forward(self, wav: torch.Tensor, state=None):
        """``wav [B, (T+1)*hop]`` -> latents ``[B, T, latent_dim]``, new stack state."""
        h, state = self.stack(self.proj_in(self.frontend(wav)), state)
        return self.proj_out(h), state


class Decoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.proj_in = nn.Linear(cfg.latent_dim, cfg.dim)
        self.stack = ConvNeXtStack(cfg.dim, cfg.decoder_layers, cfg.mlp_ratio, cfg.kernel_size)
        self.head = ISTFTHead(cfg.dim, cfg.hop, cfg.head_overlap)

    def forward(self, latents: torch.Tensor, state=None):
        """latents ``[B, T, latent_dim]`` -> windowed frames ``[B, T * head_overlap, 2*hop]``, new stack state."""
        h, state = self.stack(self.proj_in(latents), state)
        return self.head(h), state


class Codec(nn.Module):
    """Implements the AudioTokenizer interface (``tokenlm.codecs.base``)."""

    config_class = CodecConfig
    # Inference precision of encode/decode: "fp32" (default; chunked streaming equals the whole-file call
    # exactly) or "bf16" (autocast: ~2x faster on CPUs with AVX-512 BF16, same quality within noise, but
    # rounding may flip a rare near-tie code between chunkings). Training uses its own setting.
    precision: str = "fp32"

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVQ(cfg.latent_dim, cfg.n_q, cfg.codebook_size, cfg.ema_decay, cfg.dead_threshold)
        self.decoder = Decoder(cfg)

    # ------------------------------------------------------------------ AudioTokenizer
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.cfg.sample_rate / self.cfg.hop

    @property
    def n_q(self) -> int:
        return self.cfg.n_q

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    def n_q_for_kbps(self, kbps: float) -> int:
        """Codebooks needed for ``kbps`` (must be an exact multiple of one codebook's rate)."""
        per_q = math.log2(self.codebook_size) * self.frame_rate / 1000
        k = kbps / per_q
        if abs(k - round(k)) > 1e-6 or not 1 <= round(k) <= self.n_q:
            rates = ", ".join(f"{i * per_q:g}" for i in range(1, self.n_q + 1))
            raise ValueError(f"{kbps} kbps is not a rate of this codec (choose from {rates})")
        return round(k)

    def _pad(self, wav: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``wav [B, C, N]`` -> mono ``[B, (T+1)*hop]`` zero-padded, and T."""
        if wav.dim() != 3:
            raise ValueError(f"expected wav [B, C, N], got {tuple(wav.shape)}")
        x = wav.mean(1)
        T = frames_for(x.shape[-1], self.cfg.hop)
        return torch.nn.functional.pad(x, (0, (T + 1) * self.cfg.hop - x.shape[-1])), T

    def autocast(self):
        device = self.quantizer.codebooks.device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def latents(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [B, C, N]`` -> continuous latents ``[B, ceil(N / hop), latent_dim]`` (before the RVQ)."""
        z, _ = self.encoder(self._pad(wav)[0])
        return z

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``wav [B, C, N]`` -> codes ``[B, n_q, ceil(N / hop)]`` int64."""
        with self.autocast():
            z = self.latents(wav)
        return self.quantizer.encode(z, n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """codes ``[B, K, T]`` (any K <= n_q) -> ``wav [B, 1, T*hop]`` (or ``length`` samples)."""
        with self.autocast():
            frames, _ = self.decoder(self.quantizer.decode(codes))
        wav, _ = overlap_add(frames, hop=self.decoder.head.sub_hop)
        return wav[:, None, :length] if length is not None else wav[:, None]

    # ------------------------------------------------------------------ training
    def forward(self, wav: torch.Tensor, n_q: int | None = None, frozen_tokens: bool = False) -> CodecOutput:
        """Encode, quantize with ``n_q`` codebooks (training: quantizer dropout), decode; same length as input.

        ``frozen_tokens``: encoder and codebooks run without gradients or EMA updates, so only the decoder
        learns and the codes stay exactly those of the model so far (decoder-only fine-tuning)."""
        N = wav.shape[-1]
        quant = quantize(self, wav, n_q, frozen_tokens)
        frames, _ = self.decoder(quant.quantized)
        out, _ = overlap_add(frames, hop=self.decoder.head.sub_hop)
        return CodecOutput(out[:, None, :N], quant)


def quantize(model, wav: torch.Tensor, n_q: int | None, frozen_tokens: bool):
    """``model.quantizer(model.latents(wav), n_q)``; with ``frozen_tokens`` under no_grad and without EMA
    updates (shared by the codec and the EnCodec peer)."""
    if not frozen_tokens:
        return model.quantizer(model.latents(wav), n_q)
    was = model.quantizer.training
    model.quantizer.eval()
    try:
        with torch.no_grad():
            return model.quantizer(model.latents(wav), n_q)
    finally:
        model.quantizer.train(was)


class StreamingEncoder:
    """Feed samples in chunks of any size; get the codes of every completed frame.

    ``push(chunk [B, n])`` returns codes ``[B, K, t]`` (t may be 0); ``flush()`` pads the final partial
    block like ``Codec.encode`` does and returns the rest. The concatenation equals ``Codec.encode``.
    """

    def __init__(self, codec: Codec, n_q: int | None = None, batch_size: int = 1):
        self.codec, self.n_q = codec, n_q or codec.n_q
        self.hop = codec.cfg.hop
        self.buffer = torch.zeros(batch_size, 0)
        self.state = None
        self.total = 0  # samples pushed
        self.frames_done = 0

    @torch.no_grad()
    def _frames(self, n_frames: int) -> torch.Tensor:
        need = (n_frames + 1) * self.hop
        x, self.buffer = self.buffer[:, :need], self.buffer[:, n_frames * self.hop :]
        with self.codec.autocast():
            z, self.state = self.codec.encoder(x, self.state)
        self.frames_done += n_frames
        return self.codec.quantizer.encode(z, self.n_q)

    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        self.buffer = torch.cat([self.buffer, chunk], dim=1)
        self.total += chunk.shape[1]
        n_frames = self.buffer.shape[1] // self.hop - 1  # frame t needs samples up to (t + 2) * hop
        if n_frames <= 0:
            return torch.zeros(self.buffer.shape[0], self.n_q, 0, dtype=torch.long)
        return self._frames(n_frames)

    def flush(self) -> torch.Tensor:
        remaining = frames_for(self.total, self.hop) - self.frames_done
        if remaining <= 0:
            return torch.zeros(self.buffer.shape[0], self.n_q, 0, dtype=torch.long)
        pad = (remaining + 1) * self.hop - self.buffer.shape[1]
        self.buffer = torch.nn.functional.pad(self.buffer, (0, max(pad, 0)))
        return self._frames(remaining)


class StreamingDecoder:
    """Feed codes ``[B, K, t]`` in chunks of any number of frames; get ``t * hop`` samples back at once."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.state = None
        self.carry = None

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 0)
        with self.codec.autocast():
            frames, self.state = self.codec.decoder(self.codec.quantizer.decode(codes), self.state)
        wav, self.carry = overlap_add(frames, self.carry, self.codec.decoder.head.sub_hop)
        return wav
