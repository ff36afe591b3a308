"""ONNX export of the codec: ``encoder.onnx`` (samples -> codes) and ``decoder.onnx`` (codes -> samples).

The exported graphs compute the FFTs as matrix products with fixed DFT bases (``DFTFrontEnd``,
``DFTHead``), which every ONNX runtime supports; they are numerically the same functions as the PyTorch
model. ``verify`` runs both with onnxruntime against PyTorch and reports the largest differences.

``--int8`` quantizes the ConvNeXt blocks' MLPs (~90% of the FLOPs) dynamically with onnxruntime: int8
weights, activations quantized per call, int8 x int8 products with int32 sums (MLAS kernels; on an AVX2 CPU
about twice the multiply rate of fp32). Projections, DFT bases and the RVQ search stay fp32 (``INT8_SCOPES``).
``--kbps`` exports an encoder that searches only the codebooks of that rate (the decoder takes any prefix).
``OnnxCodec`` runs an exported folder with the ``encode``/``decode`` calls of ``Codec``, so the eval and the
bench measure it exactly like the PyTorch model.

    python -m tokenlm.codecs.codec.export codec-16k -o codec-onnx/ [--int8] [--kbps 1.5]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tokenlm.errors import TokenlmError
from tokenlm.utils import atomic_write_text

from .model import Codec
from .modules import frame_signal, frames_for, overlap_add

META_FILE = "onnx.json"
# the MatMuls quantized by --int8: the ConvNeXt blocks' MLPs (~90% of the FLOPs). Measured on 12 held-out speech
# clips (PESQ-WB at 1.5 / 6 kbps): fp32 1.471 / 2.307, MLPs int8 1.467 / 2.293, MLPs and the input/output
# projections int8 1.441 / 2.200 (the projections carry the spectra's wide dynamic range). DFT bases and the
# RVQ's distances stay fp32 too: rounding there would flip code choices.
INT8_SCOPES = ("/stack/",)


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
        self.head, self.n_bins, win = head, head.n_bins, head.win
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
        log_mag, re, im = self.head.spectra(x)
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
        self.sub_hop = dec.head.sub_hop
        self.register_buffer("flat", q.codebooks.detach().reshape(-1, q.dim).clone())
        self.codebook_size = q.codebook_size

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        K = codes.shape[1]
        offsets = torch.arange(K, device=codes.device)[None, :, None] * self.codebook_size
        z = self.flat[codes + offsets].sum(dim=1)  # [1, T, D]
        h, _ = self.stack(self.proj_in(z))
        return overlap_add(self.head(h), hop=self.sub_hop)[0]


def export(codec: Codec, out_dir: Path, n_q: int | None = None, int8: bool = False) -> tuple[Path, Path]:
    """Write ``encoder.onnx`` (``n_q`` codebooks; default all), ``decoder.onnx`` and ``onnx.json`` to
    ``out_dir``; ``int8``: int8 ConvNeXt MLPs (see the module docstring). The graphs are written under temporary
    names and renamed when complete; ``onnx.json`` comes last (a folder without it is not an export)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)
    n_q = n_q or codec.n_q
    paths = {name: out_dir / f"{name}.onnx" for name in ("encoder", "decoder")}
    tmp = {name: path.with_suffix(".onnx.tmp") for name, path in paths.items()}
    hop = codec.cfg.hop
    enc, dec = ExportEncoder(codec, n_q).eval(), ExportDecoder(codec).eval()
    wav = torch.randn(1, 51 * hop) * 0.1
    codes = torch.randint(0, codec.codebook_size, (1, n_q, 50))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            enc,
            (wav,),
            tmp["encoder"],
            input_names=["wav"],
            output_names=["codes"],
            dynamic_axes={"wav": {1: "samples"}, "codes": {2: "frames"}},
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            dec,
            (codes,),
            tmp["decoder"],
            input_names=["codes"],
            output_names=["wav"],
            dynamic_axes={"codes": {1: "n_q", 2: "frames"}, "wav": {1: "samples"}},
            opset_version=17,
            dynamo=False,
        )
    for name, path in tmp.items():
        if int8:
            quantize_int8(path)
        path.replace(paths[name])
    meta = {
        "sample_rate": codec.sample_rate,
        "hop": hop,
        "codebook_size": codec.codebook_size,
        "n_q": codec.n_q,
        "encoder_n_q": n_q,
        "precision": "int8" if int8 else "fp32",
        "source": str(getattr(codec, "pretrained_name", "")),
    }
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return paths["encoder"], paths["decoder"]


def quantize_int8(path: Path) -> None:
    """Replace ``path`` by its dynamically int8-quantized graph (the MatMuls under ``INT8_SCOPES``), atomically."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [
        n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul" and n.name.startswith(INT8_SCOPES)
    ]
    tmp = path.with_name(path.name + ".int8")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint for every call
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    finally:
        root.setLevel(level)
    tmp.replace(path)


class OnnxCodec:
    """An exported folder run by onnxruntime, with ``Codec``'s ``encode``/``decode`` (batch items one by one).

    ``threads``: onnxruntime's intra-op threads (default: its own choice, all cores)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        try:
            self.meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError) as e:
            raise TokenlmError(f"{folder}: not an exported codec ({META_FILE}: {e})") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.encoder, self.decoder = (
            ort.InferenceSession(str(folder / f), opts, providers=["CPUExecutionProvider"])
            for f in ("encoder.onnx", "decoder.onnx")
        )
        self.sample_rate, self.hop = self.meta["sample_rate"], self.meta["hop"]
        self.codebook_size, self.n_q = self.meta["codebook_size"], self.meta["encoder_n_q"]
        self.frame_rate = self.sample_rate / self.hop
        self.precision = self.meta["precision"]

    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``wav [B, C, N]`` -> codes ``[B, n_q, ceil(N / hop)]`` int64 (``n_q`` <= the exported encoder's)."""
        n_q = n_q or self.n_q
        if n_q > self.n_q:
            raise TokenlmError(f"this encoder was exported with {self.n_q} codebooks; {n_q} asked")
        x = wav.mean(1).float().numpy()
        T = frames_for(x.shape[-1], self.hop)
        x = np.pad(x, ((0, 0), (0, (T + 1) * self.hop - x.shape[-1])))
        codes = [self.encoder.run(None, {"wav": row[None]})[0][:, :n_q] for row in x]
        return torch.from_numpy(np.concatenate(codes)).long()

    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """codes ``[B, K, T]`` -> ``wav [B, 1, T*hop]`` (or ``length`` samples)."""
        c = codes.long().numpy()
        wav = np.stack([self.decoder.run(None, {"codes": row[None]})[0] for row in c])  # [B, 1, T*hop]
        wav = torch.from_numpy(wav)
        return wav[..., :length] if length is not None else wav


def verify(codec: Codec, out_dir: Path, seconds: float = 3.0, seed: int = 0) -> dict:
    """Run the exported graphs with onnxruntime on a test signal; compare with PyTorch (codes of the encoder's
    codebooks; the decoder on PyTorch's codes: largest difference and signal-to-difference ratio in dB)."""
    g = torch.Generator().manual_seed(seed)
    hop, sr = codec.cfg.hop, codec.sample_rate
    T = int(seconds * sr) // hop
    t = torch.arange(T * hop) / sr
    wav = (0.2 * torch.sin(2 * math.pi * 220 * t) + 0.02 * torch.randn(t.shape, generator=g))[None, None]
    onnx_codec = OnnxCodec(out_dir)
    n_q = onnx_codec.n_q
    with torch.no_grad():
        ref_codes = codec.encode(wav, n_q)
        ref_wav = codec.decode(ref_codes)
    codes = onnx_codec.encode(wav)
    out = onnx_codec.decode(ref_codes)
    diff = out - ref_wav
    return {
        "precision": onnx_codec.precision,
        "frames": T,
        "code_agreement": float((codes == ref_codes).float().mean()),
        "decoder_max_abs_diff": float(diff.abs().max()),
        "decoder_snr_db": round(float(10 * torch.log10(ref_wav.pow(2).sum() / diff.pow(2).sum().clamp_min(1e-20))), 1),
    }


def main(argv: list[str] | None = None) -> int:
    from tokenlm import pretrained

    p = argparse.ArgumentParser(description="export the codec to ONNX and check it with onnxruntime")
    p.add_argument("model", nargs="?", default="codec-16k")
    p.add_argument("-o", "--output", default="codec-onnx")
    p.add_argument("--int8", action="store_true", help="dynamically int8-quantize the ConvNeXt MLPs")
    p.add_argument("--kbps", type=float, help="an encoder for this rate only (default: all codebooks)")
    args = p.parse_args(argv)
    try:
        codec = pretrained.load(args.model)
        out = Path(args.output)
        export(codec, out, codec.n_q_for_kbps(args.kbps) if args.kbps else None, int8=args.int8)
    except (TokenlmError, ValueError, OSError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print(verify(codec, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
