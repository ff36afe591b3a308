"""``tokenlm bench codec``: encode and decode real-time factors, ours beside EnCodec's 24 kHz architecture.

EnCodec runs as transformers' ``EncodecModel`` from its default ``EncodecConfig`` (24 kHz, random weights:
speed does not depend on them). Both run in fp32 and under bf16 autocast (fast on CPUs with AVX-512 BF16).
Ours also runs exported to ONNX under onnxruntime, in fp32 and with int8 MLPs (``export --int8``:
the fast path on CPUs without native bf16), each with an encoder exported for the rate measured.
Each measurement runs in a fresh subprocess with the thread count set before torch does any work, and
reports the best of ``repeats`` runs (the machine may be shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenlm.utils import atomic_write_text, cpu_description, cpu_has_fast_bf16, log

SECONDS = 10.0

_WORKER = r"""
import json, sys, time, torch
threads, which, model, seconds, repeats, n_q, precision = sys.argv[1:8]
torch.set_num_threads(int(threads)); seconds = float(seconds)
if which == "tokenlm":
    from tokenlm import pretrained
    from tokenlm.codecs.codec.model import Codec, CodecConfig
    try:
        m = pretrained.load(model)
    except Exception:
        m = Codec(CodecConfig()).eval()  # same architecture, random weights: speed is the same
    sr = m.sample_rate
    m.precision = precision  # the codec's own autocast (an outer one would be switched off inside it)
    enc = lambda x: m.encode(x, int(n_q)); dec = lambda c: m.decode(c)
elif which == "onnx":
    from tokenlm.codecs.codec.export import OnnxCodec
    m = OnnxCodec(model, threads=int(threads)); sr = m.sample_rate
    enc = lambda x: m.encode(x, int(n_q)); dec = lambda c: m.decode(c)
else:
    from transformers import EncodecConfig, EncodecModel
    m = EncodecModel(EncodecConfig()).eval(); sr = 24000
    bw = float(n_q)
    enc = lambda x: m.encode(x, bandwidth=bw); dec = lambda e: m.decode(e.audio_codes, e.audio_scales)
x = torch.randn(1, 1, int(seconds * sr)) * 0.1
best_e = best_d = 1e9
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
    for _ in range(int(repeats)):
        t = time.perf_counter(); c = enc(x); t1 = time.perf_counter(); y = dec(c); t2 = time.perf_counter()
        best_e, best_d = min(best_e, t1 - t), min(best_d, t2 - t1)
print(json.dumps({"encode_s": best_e, "decode_s": best_d}))
"""


def measure(
    threads: int, which: str, model: str, n_q: str, repeats: int, seconds: float = SECONDS, precision: str = "fp32"
) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, str(threads), which, model, str(seconds), str(repeats), n_q, precision],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    total = r["encode_s"] + r["decode_s"]
    return {
        "encode_rtf": round(seconds / r["encode_s"], 1),
        "decode_rtf": round(seconds / r["decode_s"], 1),
        "encode_decode_rtf": round(seconds / total, 1),
    }


def export_variants(model: str, folder: Path) -> dict[str, Path]:
    """``{"onnx_fp32_3": path, "onnx_int8_3": ..., "onnx_fp32_12": ..., "onnx_int8_12": ...}`` (empty without
    onnxruntime): ``model`` exported with an encoder for 3 and 12 codebooks, in fp32 and int8."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime not installed (pip install 'tokenlm[eval]'): ONNX rows left out")
        return {}
    from tokenlm import pretrained
    from tokenlm.codecs.codec.export import export

    codec = pretrained.load(model)
    out = {}
    for prec in ("fp32", "int8"):
        for n_q in (3, 12):
            out[f"onnx_{prec}_{n_q}"] = folder / f"{prec}_{n_q}"
            export(codec, out[f"onnx_{prec}_{n_q}"], n_q, int8=prec == "int8")
    return out


def run(model: str = "codec-16k", quick: bool = False) -> dict:
    repeats = 2 if quick else 3
    seconds = 2.0 if quick else SECONDS
    results = {
        "audio_seconds": seconds,
        "repeats": repeats,
        "note": "x real time (higher is faster), best of repeats",
        "cpu": cpu_description(),
    }
    precisions = ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",)
    if len(precisions) == 1:  # emulated bf16 is slower than fp32 by an order of magnitude: nobody would run it
        results["bf16"] = "skipped: this CPU has no native bf16"
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_variants(model, Path(tmp))
        for threads in (1, 2):
            for prec in precisions:
                for name, which, n_q in (
                    ("tokenlm_1.5kbps", "tokenlm", "3"),
                    ("tokenlm_6kbps", "tokenlm", "12"),
                    ("encodec24k_1.5kbps", "encodec", "1.5"),
                ):
                    key = f"{name}_{prec}_threads{threads}"
                    results[key] = measure(threads, which, model, n_q, repeats, seconds, prec)
                results[f"speedup_vs_encodec_{prec}_threads{threads}"] = round(
                    results[f"tokenlm_1.5kbps_{prec}_threads{threads}"]["encode_decode_rtf"]
                    / results[f"encodec24k_1.5kbps_{prec}_threads{threads}"]["encode_decode_rtf"],
                    1,
                )
            for variant, folder in onnx.items():
                _, prec, n_q = variant.split("_")
                kbps = "1.5kbps" if n_q == "3" else "6kbps"
                key = f"tokenlm_{kbps}_onnx_{prec}_threads{threads}"
                results[key] = measure(threads, "onnx", str(folder), n_q, repeats, seconds)
    return results


def table(results: dict) -> str:
    rows = ["| system | threads | encode ×RT | decode ×RT | encode+decode ×RT |", "|---|---|---|---|---|"]
    for key, r in results.items():
        if isinstance(r, dict):
            name, threads = key.rsplit("_threads", 1)
            rows.append(f"| {name} | {threads} | {r['encode_rtf']} | {r['decode_rtf']} | {r['encode_decode_rtf']} |")
    return "\n".join(rows)


def cli(args) -> int:
    results = run(quick=args.quick)
    text = json.dumps(results, indent=2)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    print(text if args.json else table(results))
    log.info("done")
    return 0
