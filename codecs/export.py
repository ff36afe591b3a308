"""ONNX export of the codec: ``encoder.onnx`` (samples -> codes) and ``decoder.onnx`` (codes -> samples).

The exported graphs compute the FFTs as matrix products with fixed DFT bases (``DFTFrontEnd``,
``DFTHead``), which every ONNX runtime supports; they are numerically the same functions as the PyTorch
model. ``verify`` runs both with onnxruntime against PyTorch and reports the largest differences.

    python -m tokenlm.codecs.export codec-16k -o codec-onnx/
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .codec import Codec
from .modules import frame_signal


def _dft_bases(win: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.arange(win, dtype=torch.float64)
    k = torch.arange(win // 2 + 1, dtype=torch.float64)
    ang = 2 * math.pi * n[:, None] * k[None] / win  # [win, bins]
    return torch.cos(ang).float(), (-torch.sin(ang)).float()


class DFTFrontEnd(nn.Module):
    """``STFTFrontEnd`` with the rfft as two matmuls."""

    def __init__(self, frontend):
        super().__init__()
        self.hop = frontend.hop
        cos, sin = _dft_bases(frontend.win)
        self.register_buffer("cos", frontend.window[:, None] * cos)
        self.register_buffer("sin", frontend.window[:, None] * sin)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = frame_signal(wav, self.hop)
        re, im = frames @ self.cos, frames @ self.sin
        mag = torch.sqrt(re * re + im * im).clamp_min(1e-7)
        scale = mag.pow(-0.7)
        return torch.cat([re * scale, im * scale, torch.log(mag)], dim=-1)


class DFTHead(nn.Module):
    """``ISTFTHead`` with the irfft as two matmuls (imaginary parts of DC and Nyquist ignored, as irfft)."""

    def __init__(self, head):
        super().__init__()
        self.proj, self.n_bins, win = head.proj, head.n_bins, head.win
        n = torch.arange(win, dtype=torch.float64)
        k = torch.arange(self.n_bins, dtype=torch.float64)
        weight = torch.full((self.n_bins,), 2.0, dtype=torch.float64)
        weight[0] = weight[-1] = 1.0
        ang = 2 * math.pi * k[:, None] * n[None] / win  # [bins, win]
        cos = weight[:, None] * torch.cos(ang) / win
        sin = weight[:, None] * torch.sin(ang) / win
        sin[0] = sin[-1] = 0.0
        self.register_buffer("icos", (cos * head.window.double()[None]).float())
        self.register_buffer("isin", (sin * head.window.double()[None]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_mag, re, im = self.proj(x).split(self.n_bins, dim=-1)
        mag = torch.exp(log_mag.clamp(max=6.0))
        norm = torch.sqrt(re * re + im * im + 1e-9)
        return (mag * re / norm) @ self.icos - (mag * im / norm) @ self.isin  # [B, T, win]


class ExportEncoder(nn.Module):
    """``wav [1, (T+1)*hop]`` -> codes ``[1, n_q, T]``: encoder + greedy residual search over all levels."""

    def __init__(self, codec: Codec, n_q: int):
        super().__init__()
        enc = codec.encoder
        self.frontend, self.proj_in, self.stack, self.proj_out = (
            DFTFrontEnd(enc.frontend),
            enc.proj_in,
            enc.stack,
            enc.proj_out,
        )
        cb = codec.quantizer.codebooks[:n_q].detach().clone()
        self.register_buffer("codebooks", cb)
        self.register_buffer("norms", cb.pow(2).sum(-1))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        h, _ = self.stack(self.proj_in(self.frontend(wav)))
        residual = self.proj_out(h)[0]  # [T, D]
        codes = []
        for k in range(self.codebooks.shape[0]):
            idx = (self.norms[k] - 2 * residual @ self.codebooks[k].t()).argmin(dim=-1)
            codes.append(idx)
            residual = residual - self.codebooks[k][idx]
        return torch.stack(codes)[None]


class ExportDecoder(nn.Module):
    """codes ``[1, K, T]`` (any K <= n_q) -> ``wav [1, T*hop]``."""

    def __init__(self, codec: Codec):
        super().__init__()
        dec, q = codec.decoder, codec.quantizer
        self.proj_in, self.stack, self.head = dec.proj_in, dec.stack, DFTHead(dec.head)
        self.register_buffer("flat", q.codebooks.detach().reshape(-1, q.dim).clone())
        self.codebook_size = q.codebook_size

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        K = codes.shape[1]
        offsets = torch.arange(K, device=codes.device)[None, :, None] * self.codebook_size
        z = self.flat[codes + offsets].sum(dim=1)  # [1, T, D]
        h, _ = self.stack(self.proj_in(z))
        frames = self.head(h)
        hop = frames.shape[-1] // 2
        first, second = frames[..., :hop], frames[..., hop:]
        prev = torch.cat([torch.zeros_like(second[:, :1]), second[:, :-1]], dim=1)
        return (first + prev).reshape(1, -1)


def export(codec: Codec, out_dir: Path, n_q: int | None = None) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    n_q = n_q or codec.n_q
    hop = codec.cfg.hop
    enc, dec = ExportEncoder(codec, n_q).eval(), ExportDecoder(codec).eval()
    wav = torch.randn(1, 51 * hop) * 0.1
    codes = torch.randint(0, codec.codebook_size, (1, n_q, 50))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            enc,
            (wav,),
            out_dir / "encoder.onnx",
            input_names=["wav"],
            output_names=["codes"],
            dynamic_axes={"wav": {1: "samples"}, "codes": {2: "frames"}},
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            dec,
            (codes,),
            out_dir / "decoder.onnx",
            input_names=["codes"],
            output_names=["wav"],
            dynamic_axes={"codes": {1: "n_q", 2: "frames"}, "wav": {1: "samples"}},
            opset_version=17,
            dynamo=False,
        )
    return out_dir / "encoder.onnx", out_dir / "decoder.onnx"


def verify(codec: Codec, out_dir: Path, seconds: float = 3.0, seed: int = 0) -> dict:
    """Run the exported graphs with onnxruntime on a test signal; compare with PyTorch."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    hop, sr = codec.cfg.hop, codec.sample_rate
    T = int(seconds * sr) // hop
    t = torch.arange((T + 1) * hop) / sr
    wav = (0.2 * torch.sin(2 * math.pi * 220 * t) + 0.02 * torch.randn(t.shape, generator=g))[None]
    with torch.no_grad():
        ref_codes = codec.encode(wav[:, None, : T * hop])
        ref_wav = codec.decode(ref_codes)[:, 0]
    enc = ort.InferenceSession(str(out_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out_dir / "decoder.onnx"), providers=["CPUExecutionProvider"])
    codes = enc.run(None, {"wav": wav.numpy()})[0]
    out = dec.run(None, {"codes": ref_codes.numpy()})[0]
    return {
        "frames": T,
        "code_agreement": float(np.mean(codes == ref_codes.numpy())),
        "decoder_max_abs_diff": float(np.abs(out - ref_wav.numpy()).max()),
    }


def main(argv: list[str] | None = None) -> int:
    from tokenlm import pretrained

    p = argparse.ArgumentParser(description="export the codec to ONNX and check it with onnxruntime")
    p.add_argument("model", nargs="?", default="codec-16k")
    p.add_argument("-o", "--output", default="codec-onnx")
    args = p.parse_args(argv)
    codec = pretrained.load(args.model)
    out = Path(args.output)
    export(codec, out)
    print(verify(codec, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
