"""``tokenlm eval codec``: held-out quality of our codec beside Opus, Codec2 and (when trained) an
EnCodec-architecture peer, all on the same clips in one run.

Speech clips come from the corpus eval split (speakers never trained on); music from eval tracks. Every
system gets the same 16 kHz mono input (loudness -23 LUFS) and returns 16 kHz audio; peers with a coding
delay are aligned by cross-correlation before the delay-sensitive metrics. Metrics: PESQ-WB, STOI, ViSQOL
(speech mode on speech at 16 kHz, audio mode on music at 48 kHz), log-mel distance and SI-SDR. Results go to
``<out>/codec_eval.json``, a Markdown table and a rate-quality plot.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tokenlm.errors import TokenlmError
from tokenlm.metrics import align, mel_distance, si_sdr
from tokenlm.utils import atomic_write_text, cache_dir, log, progress

from ..audio import load_audio, resample

SR = 16000
System = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- systems
def tokenlm_system(codec, n_q: int) -> System:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            w = torch.from_numpy(x)[None, None]
            return codec.decode(codec.encode(w, n_q), len(x))[0, 0].numpy()

    return run


def opus_system(kbps: float) -> System:
    def run(x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory() as d:
            sf.write(f"{d}/in.wav", x, SR, subtype="FLOAT")
            subprocess.run(
                [
                    "ffmpeg",
                    "-v",
                    "error",
                    "-y",
                    "-i",
                    f"{d}/in.wav",
                    "-c:a",
                    "libopus",
                    "-b:a",
                    f"{kbps}k",
                    f"{d}/x.opus",
                ],
                check=True,
            )
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", f"{d}/x.opus", "-ar", str(SR), "-ac", "1", f"{d}/out.wav"],
                check=True,
            )
            return sf.read(f"{d}/out.wav", dtype="float32")[0]

    return run


def codec2_system(mode: str = "3200") -> System:
    def run(x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory() as d:
            pcm = (np.clip(resample(x[None], SR, 8000)[0], -1, 1) * 32767).astype("<i2")
            Path(f"{d}/in.raw").write_bytes(pcm.tobytes())
            subprocess.run(["c2enc", mode, f"{d}/in.raw", f"{d}/x.c2"], check=True, capture_output=True)
            subprocess.run(["c2dec", mode, f"{d}/x.c2", f"{d}/out.raw"], check=True, capture_output=True)
            y = np.frombuffer(Path(f"{d}/out.raw").read_bytes(), dtype="<i2").astype(np.float32) / 32768
            return resample(y[None], 8000, SR)[0]

    return run


def rate_rows(prefix: str, codec) -> dict[str, tuple[float, System]]:
    """``{prefix@kbps: (kbps, function)}`` for the first 3 / 6 / 12 codebooks of ``codec``."""
    out = {}
    for n_q in (3, 6, 12):
        kbps = n_q * math.log2(codec.codebook_size) * codec.frame_rate / 1000
        out[f"{prefix}@{kbps:g}"] = (kbps, tokenlm_system(codec, n_q))
    return out


def systems(codec, peer=None, int8=None) -> dict[str, tuple[float, System]]:
    """name -> (kbps, function). Codec2 and Opus only where their binaries exist; ``int8``: the codec exported
    to ONNX with int8 MLPs (an ``OnnxCodec``), as rows ``tokenlm-int8@kbps``."""
    out = rate_rows("tokenlm", codec)
    if int8 is not None:
        out |= rate_rows("tokenlm-int8", int8)
    if peer is not None:
        out |= rate_rows("encodec-arch", peer)
    if shutil.which("ffmpeg"):
        out["opus@6"] = (6.0, opus_system(6))
        out["opus@12"] = (12.0, opus_system(12))
    else:
        log.warning("ffmpeg not found (apt-get install ffmpeg): Opus is left out of the table")
    if shutil.which("c2enc"):
        out["codec2@3.2"] = (3.2, codec2_system("3200"))
    else:
        log.warning("c2enc not found (apt-get install codec2): Codec2 is left out of the table")
    return out


# --------------------------------------------------------------------------- metrics
class Metrics:
    def __init__(self):
        from visqol import VisqolApi

        self.visqol_speech, self.visqol_audio = VisqolApi(), VisqolApi()
        self.visqol_speech.create(mode="speech")
        self.visqol_audio.create(mode="audio")

    def __call__(self, ref: np.ndarray, deg: np.ndarray, domain: str) -> dict[str, float]:
        from pesq import pesq
        from pystoi import stoi

        deg = align(ref, deg.astype(np.float32))
        row = {"mel_distance": mel_distance(deg, ref, SR), "si_sdr": si_sdr(deg, ref)}
        if domain == "speech":
            row["pesq_wb"] = float(pesq(SR, ref, deg, "wb"))
            row["stoi"] = float(stoi(ref, deg, SR, extended=False))
            row["visqol"] = float(
                self.visqol_speech.measure_from_arrays(ref.astype(np.float64), deg.astype(np.float64), SR).moslqo
            )
        else:
            r48, d48 = resample(ref[None], SR, 48000)[0], resample(deg[None], SR, 48000)[0]
            row["visqol"] = float(
                self.visqol_audio.measure_from_arrays(r48.astype(np.float64), d48.astype(np.float64), 48000).moslqo
            )
        return row


# --------------------------------------------------------------------------- data and run
def eval_clips(domain: str, limit: int, seconds: float = 6.0) -> list[np.ndarray]:
    from tokenlm.corpus.manifest import load_clips

    kind = "speech_real" if domain == "speech" else "music"
    clips = [c for c in load_clips(None, kinds=[kind], split="eval") if c.duration >= 2.0]
    if not clips:
        raise TokenlmError(f"no held-out {kind} clips: build the corpus first (tokenlm data build)")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(clips), size=min(limit, len(clips)), replace=False)
    return [load_audio(clips[i].path, SR, loudness_db=-23.0).samples[0, : int(seconds * SR)] for i in pick]


def evaluate(codec, peer=None, n_speech: int = 40, n_music: int = 12, int8=None) -> dict:
    metrics = Metrics()
    systems_ = systems(codec, peer, int8)
    results: dict = {"systems": {k: {"kbps": v[0]} for k, v in systems_.items()}}
    for domain, n in (("speech", n_speech), ("music", n_music)):
        clips = eval_clips(domain, n)
        rows: dict[str, list[dict]] = {k: [] for k in systems_}
        for x in progress(clips, desc=f"eval {domain}", unit="clip"):
            for name, (_, fn) in systems_.items():
                rows[name].append(metrics(x, fn(x), domain))
        for name, rs in rows.items():
            results["systems"][name][domain] = {m: round(float(np.mean([r[m] for r in rs])), 3) for m in rs[0]}
        results[f"{domain}_clips"] = len(clips)
    return results


def markdown(results: dict) -> str:
    cols = [
        ("speech", "pesq_wb"),
        ("speech", "stoi"),
        ("speech", "visqol"),
        ("speech", "mel_distance"),
        ("speech", "si_sdr"),
        ("music", "visqol"),
        ("music", "mel_distance"),
        ("music", "si_sdr"),
    ]
    head = "| system | kbps | " + " | ".join(f"{d} {m}" for d, m in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for name, r in results["systems"].items():
        vals = [str(r.get(d, {}).get(m, "–")) for d, m in cols]
        lines.append(f"| {name} | {r['kbps']:g} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (domain, metric) in zip(axes, [("speech", "pesq_wb"), ("speech", "visqol"), ("music", "visqol")]):
        families: dict[str, list] = {}
        for name, r in results["systems"].items():
            families.setdefault(name.split("@")[0], []).append((r["kbps"], r[domain][metric]))
        for fam, pts in families.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=fam)
        ax.set_xscale("log")
        ax.set_xlabel("kbps")
        ax.set_title(f"{domain} {metric}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_peer(spec: str = "auto"):
    if spec == "none":
        return None
    folder = cache_dir() / "runs" / "encodec-peer" / "model" if spec == "auto" else Path(spec)
    if not folder.exists():
        log.warning("EnCodec-architecture peer not trained yet (%s missing): row omitted", folder)
        return None
    from tokenlm import pretrained

    return pretrained.load(folder)


def cli(args) -> int:
    from tokenlm import pretrained

    codec = pretrained.load(args.model)
    n = args.limit or 40
    peer = load_peer(getattr(args, "peer", "auto"))
    with tempfile.TemporaryDirectory() as tmp:
        int8 = None
        if getattr(args, "int8", False):
            from .export import OnnxCodec, export

            export(codec, Path(tmp), int8=True)
            int8 = OnnxCodec(tmp, threads=torch.get_num_threads())
        results = evaluate(codec, peer, n_speech=n, n_music=max(4, n // 3), int8=int8)
    results["model"] = str(args.model)
    results["model_meta"] = getattr(codec, "pretrained_meta", {})
    if peer is not None:  # its steps and wall time, to check the "same budget" claim
        results["encodec_arch_meta"] = getattr(peer, "pretrained_meta", {})
    out = Path(args.out) if args.out else cache_dir() / "eval" / "codec"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "codec_eval.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "codec_eval.md", markdown(results) + "\n")
    plot(results, out / "rate_quality.png")
    print(json.dumps(results, indent=2) if args.json else markdown(results))
    log.info("report in %s", out)
    return 0
