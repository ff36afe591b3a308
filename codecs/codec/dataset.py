"""Training audio for the codec: every clip of a manifest decoded once to 16 kHz mono int16 in one
memory-mapped array (cached by content hash), and random fixed-length crops drawn from it.

Crops are drawn by kind with fixed weights (speech / music / sounds), from a NumPy generator seeded by
(seed, step): a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenlm.errors import TokenlmError
from tokenlm.utils import atomic_path, cache_dir, log, progress

from ..audio import AudioError, load_audio


@dataclass(frozen=True)
class DataConfig:
    kinds: tuple[str, ...] = ("speech_real", "speech_synthetic", "music", "sounds")
    kind_weights: tuple[float, ...] = (0.5, 0.15, 0.25, 0.1)
    segment_seconds: float = 1.0
    batch_size: int = 16
    gain_db_range: tuple[float, ...] = (-12.0, 6.0)  # random gain around -23 LUFS-ish clips
    root: str | None = None  # corpus root (default ~/.cache/tokenlm/data)


class AudioPool:
    """All clips of one kind at ``sample_rate``: ``audio`` (int16 memmap) and clip ``[start, end)`` offsets."""

    def __init__(self, audio: np.ndarray, offsets: np.ndarray, kind: str):
        self.audio, self.offsets, self.kind = audio, offsets, kind

    @property
    def hours(self) -> float:
        return float((self.offsets[:, 1] - self.offsets[:, 0]).sum()) / 16000 / 3600

    @classmethod
    def build(cls, clips, kind: str, sample_rate: int) -> AudioPool:
        key = hashlib.sha256(json.dumps([[c.path, c.duration] for c in clips] + [sample_rate]).encode()).hexdigest()[
            :16
        ]
        folder = cache_dir() / "pools"
        folder.mkdir(parents=True, exist_ok=True)
        data_path, off_path = folder / f"{kind}-{key}.i16", folder / f"{kind}-{key}.offsets.npy"
        if not (data_path.exists() and off_path.exists()):
            cls._write(clips, sample_rate, data_path, off_path, kind)
        offsets = np.load(off_path)
        audio = np.memmap(data_path, dtype=np.int16, mode="r")
        return cls(audio, offsets, kind)

    @staticmethod
    def _write(clips, sample_rate, data_path: Path, off_path: Path, kind: str) -> None:
        offsets, pos = [], 0
        with atomic_path(data_path) as tmp, open(tmp, "wb") as f:
            for c in progress(clips, desc=f"decoding {kind}", unit="clip"):
                try:
                    x = load_audio(c.path, sample_rate=sample_rate, loudness_db=-23.0).samples[0]
                except AudioError as e:
                    log.warning("skipping %s", e)
                    continue
                pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
                f.write(pcm.tobytes())
                offsets.append((pos, pos + len(pcm)))
                pos += len(pcm)
        with atomic_path(off_path) as tmp:
            np.save(tmp, np.array(offsets, dtype=np.int64).reshape(-1, 2))


class CropSampler:
    """Random ``segment`` crops ``[B, N]`` float32 from weighted pools; deterministic in (seed, step)."""

    def __init__(
        self,
        pools: list[AudioPool],
        weights: list[float],
        segment: int,
        batch_size: int,
        gain_db_range=(-12.0, 6.0),
        seed: int = 0,
    ):
        if not pools:
            raise TokenlmError("no training audio: build the corpus first (tokenlm data build)")
        self.pools, self.segment, self.batch_size = pools, segment, batch_size
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.gain_db_range, self.seed = gain_db_range, seed
        # clips at least half a segment long; shorter ones are padded with zeros
        self.usable = [np.flatnonzero(p.offsets[:, 1] - p.offsets[:, 0] >= segment // 2) for p in pools]

    def batch(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        out = np.zeros((self.batch_size, self.segment), dtype=np.float32)
        which = rng.choice(len(self.pools), size=self.batch_size, p=self.weights)
        for i, k in enumerate(which):
            pool = self.pools[k]
            start, end = pool.offsets[rng.choice(self.usable[k])]
            n = min(self.segment, end - start)
            s = start + rng.integers(0, end - start - n + 1)
            out[i, :n] = pool.audio[s : s + n] / 32768.0
        gain = 10 ** (rng.uniform(*self.gain_db_range, size=(self.batch_size, 1)) / 20)
        sign = rng.choice([-1.0, 1.0], size=(self.batch_size, 1))
        return torch.from_numpy(np.clip(out * gain * sign, -1, 1).astype(np.float32))


def build_sampler(cfg: DataConfig, sample_rate: int, split: str = "train", seed: int = 0) -> CropSampler:
    from tokenlm.corpus.manifest import load_clips

    pools, weights = [], []
    for kind, w in zip(cfg.kinds, cfg.kind_weights):
        try:
            clips = load_clips(cfg.root, kinds=[kind], split=split)
        except TokenlmError:
            clips = []
        if not clips:
            log.warning("no %s clips in the %s split; skipping that kind", kind, split)
            continue
        pool = AudioPool.build(clips, kind, sample_rate)
        log.info("%s: %d clips, %.2f h", kind, len(pool.offsets), pool.hours)
        pools.append(pool)
        weights.append(w)
    segment = int(cfg.segment_seconds * sample_rate)
    return CropSampler(pools, weights, segment, cfg.batch_size, cfg.gain_db_range, seed)
