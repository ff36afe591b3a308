"""Mixtures for separation, target-speech extraction and multi-event captioning, reproducible from a seed.

Mixture types (target first, then the interferer): ``speech+speech`` (two different speakers),
``speech+music``, ``speech+sound`` and ``sound+sound`` (captioned as two events). Both sources come from
the same split, so an eval mixture holds only eval speakers/tracks/clips.

Each mixture ``i`` draws everything from ``Random(f"{seed}:{type}:{split}:{i}")``, so it can be rebuilt
alone. Files (mono, ``sample_rate``): ``<out>/<type>/<split>/<i>/{mix,s0,s1}.flac`` where ``s0`` is the target
and ``s1`` the interferer exactly as mixed (scaled, aligned): ``mix = s0 + s1``. ``snr_db`` is the power
ratio of ``s0`` to ``s1`` in dB. For speech targets ``extra["enrollment"]`` is another clip of the target
speaker (for target-speech extraction). ``clip.json`` is written last and marks the mixture finished.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlm.codecs.audio import load_audio, save_audio
from tokenlm.corpus.manifest import Clip
from tokenlm.utils import atomic_write_text

MIXTURE_TYPES = {  # type -> (target kinds, interferer kinds, SNR range in dB)
    "speech+speech": (("speech_real", "speech_synthetic"), ("speech_real", "speech_synthetic"), (-5.0, 5.0)),
    "speech+music": (("speech_real", "speech_synthetic"), ("music",), (0.0, 15.0)),
    "speech+sound": (("speech_real", "speech_synthetic"), ("sounds",), (0.0, 15.0)),
    "sound+sound": (("sounds",), ("sounds",), (-5.0, 5.0)),
}


@dataclass(frozen=True)
class MixSpec:
    type: str
    split: str
    index: int
    seconds: float = 6.0
    sample_rate: int = 16000
    seed: int = 0


def _pool(clips: list[Clip], kinds, split: str, min_s: float = 1.0) -> list[Clip]:
    return sorted(
        (c for c in clips if c.kind in kinds and c.split == split and c.duration >= min_s), key=lambda c: c.id
    )


def crop_or_tile(x: np.ndarray, n: int, rng: random.Random) -> np.ndarray:
    """``n`` samples of ``x``: a random window if longer, repeated (with a short gap) if shorter."""
    if len(x) >= n:
        start = rng.randint(0, len(x) - n)
        return x[start : start + n]
    gap = np.zeros(len(x) // 4 + 1, dtype=x.dtype)
    reps = int(np.ceil(n / (len(x) + len(gap)))) + 1
    return np.concatenate([np.concatenate([x, gap])] * reps)[:n]


def mix_at_snr(target: np.ndarray, interferer: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``interferer`` to power(target)/power(interferer) = ``snr_db``; both scaled to keep peaks < 1."""
    pt, pi = float(np.mean(target**2)) + 1e-12, float(np.mean(interferer**2)) + 1e-12
    s1 = interferer * np.sqrt(pt / (pi * 10 ** (snr_db / 10)))
    peak = float(np.abs(target + s1).max())
    g = 0.9 / peak if peak > 0.9 else 1.0
    return (target * g).astype(np.float32), (s1 * g).astype(np.float32)


def _speech_targets_differ(target: Clip, other: Clip) -> bool:
    return target.speaker is None or other.speaker != target.speaker


def make_mixture(spec: MixSpec, clips: list[Clip], out_dir: Path, by_speaker: dict | None = None) -> Clip | None:
    """Build (or reuse) mixture ``spec`` from ``clips`` -> its Clip, or None if a pool is empty."""
    folder = out_dir / spec.type / spec.split / f"{spec.index:05d}"
    done = folder / "clip.json"
    if done.is_file():
        return Clip.from_json(json.loads(done.read_text()))
    target_kinds, other_kinds, (lo, hi) = MIXTURE_TYPES[spec.type]
    rng = random.Random(f"{spec.seed}:{spec.type}:{spec.split}:{spec.index}")
    targets, others = _pool(clips, target_kinds, spec.split), _pool(clips, other_kinds, spec.split, 0.3)
    if not targets or not others:
        return None
    target = rng.choice(targets)
    candidates = [c for c in others if c.id != target.id and _speech_targets_differ(target, c)]
    if not candidates:
        return None
    other, snr = rng.choice(candidates), round(rng.uniform(lo, hi), 2)
    sr = spec.sample_rate
    x0 = load_audio(target.path, sr).samples[0]
    n = min(len(x0), int(spec.seconds * sr)) if target.kind != "sounds" else int(spec.seconds * sr)
    x0 = x0[:n] if target.kind != "sounds" else crop_or_tile(x0, n, rng)
    x1 = crop_or_tile(load_audio(other.path, sr).samples[0], n, rng)
    s0, s1 = mix_at_snr(x0, x1, snr)
    paths = [save_audio(folder / f"{name}.flac", sig, sr) for name, sig in (("mix", s0 + s1), ("s0", s0), ("s1", s1))]
    clip = _mixture_clip(spec, target, other, snr, paths, n / sr, rng, by_speaker)
    atomic_write_text(done, json.dumps(clip.to_json(), ensure_ascii=False))
    return clip


def _mixture_clip(spec, target: Clip, other: Clip, snr, paths, duration, rng, by_speaker) -> Clip:
    from tokenlm.corpus.sounds import caption

    extra = {
        "mixture_type": spec.type,
        "source_ids": [target.id, other.id],
        "speakers": [s for s in (target.speaker, other.speaker) if s],
    }
    text = target.text
    if spec.type == "sound+sound":
        text = caption([target.labels[0], other.labels[0]], rng)
    if target.speaker and by_speaker:
        pool = [c for c in by_speaker.get(target.speaker, []) if c.id != target.id]
        if pool:
            extra["enrollment"] = rng.choice(pool).path
    labels = (spec.type, *(lab for lab in (target.labels[:1] + other.labels[:1])))
    return Clip(
        id=f"mix/{spec.type}/{spec.split}/{spec.index:05d}",
        path=str(paths[0].resolve()),
        duration=round(duration, 4),
        sample_rate=spec.sample_rate,
        kind="mixture",
        language=target.language,
        speaker=target.speaker,
        text=text,
        text_en=target.text_en,
        labels=labels,
        split=spec.split,
        source="mixture",
        group=f"mix/{spec.type}/{spec.split}/{spec.index:05d}",
        sources=(str(paths[1].resolve()), str(paths[2].resolve())),
        snr_db=snr,
        extra=extra,
    )


def speakers_index(clips: list[Clip]) -> dict[str, list[Clip]]:
    index: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        if c.speaker and c.kind.startswith("speech") and c.duration >= 1.5:
            index[c.speaker].append(c)
    return index
