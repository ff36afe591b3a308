"""Audio I/O: any file in, mono float32 at the model rate out; atomic writes.

``load_audio`` reads wav/flac/ogg/mp3 (and anything else libsndfile or ffmpeg can decode), mixes to
the requested channel count, resamples with a polyphase filter (``scipy.signal.resample_poly``) and
optionally normalises loudness (ITU-R BS.1770 via pyloudnorm). Bad input raises ``AudioError`` with
a one-line reason; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from tokenlm.errors import TokenlmError
from tokenlm.utils import atomic_path

WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


class AudioError(TokenlmError):
    """A file that is not usable audio."""


@dataclass(frozen=True)
class Audio:
    """Samples ``[C, N]`` float32 in [-1, 1] at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    channels: int = 1,
    loudness_db: float | None = None,
) -> Audio:
    """Read ``path`` -> ``Audio`` with ``channels`` channels at ``sample_rate`` (None keeps the file's).

    ``loudness_db`` (e.g. -23.0 LUFS) normalises integrated loudness; clips too short to measure
    (< 0.4 s) are RMS-normalised to the same level instead. Peaks are kept below 1.0.
    """
    path = Path(path)
    _check_path(path)
    samples, sr = _decode(path)
    if samples.size == 0 or samples.shape[-1] == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    samples = mix_channels(samples, channels)
    if sample_rate is not None and sample_rate != sr:
        samples = resample(samples, sr, sample_rate)
        sr = sample_rate
    if loudness_db is not None:
        samples = normalize_loudness(samples, sr, loudness_db)
    return Audio(np.ascontiguousarray(samples, dtype=np.float32), int(sr))


def _check_path(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: is empty (0 bytes)")


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """-> (samples [C, N] float32, rate); soundfile first, ffmpeg for what libsndfile cannot read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return data.T, int(sr)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass
    return _decode_ffmpeg(path)


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise AudioError(f"{path}: not a readable audio file (libsndfile cannot read it and ffmpeg is not installed)")
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate,channels",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    fields = probe.stdout.strip().split(",")
    if probe.returncode != 0 or len(fields) != 2 or not all(f.strip().isdigit() for f in fields):
        raise AudioError(f"{path}: not a readable audio file")
    sr, ch = int(fields[0]), int(fields[1])
    out = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-f",
            "f32le",
            "-acodec",
            "pcm_f32le",
            "-",
        ],
        capture_output=True,
    )
    if out.returncode != 0:
        raise AudioError(f"{path}: ffmpeg could not decode it")
    data = np.frombuffer(out.stdout, dtype="<f4")
    n = data.size // ch
    return data[: n * ch].reshape(n, ch).T.copy(), sr


def mix_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """``[C, N]`` -> ``[channels, N]``: average to mono, or repeat mono to more channels."""
    c = samples.shape[0]
    if c == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=0, keepdims=True)
    if c == 1:
        return np.repeat(samples, channels, axis=0)
    raise AudioError(f"cannot map {c} channels to {channels}")


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR) along the last axis; exact rational ratio."""
    if orig_sr == target_sr:
        return samples
    ratio = Fraction(int(target_sr), int(orig_sr))
    out = resample_poly(samples, ratio.numerator, ratio.denominator, axis=-1, window=("kaiser", 8.0))
    return out.astype(np.float32, copy=False)


def normalize_loudness(samples: np.ndarray, sample_rate: int, target_db: float = -23.0) -> np.ndarray:
    """Scale to ``target_db`` LUFS (BS.1770); silent input is returned unchanged; peak kept < 1."""
    import pyloudnorm

    x = samples.T.astype(np.float64)  # pyloudnorm wants [N, C]
    loud = -math.inf
    if x.shape[0] >= int(0.4 * sample_rate):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loud = pyloudnorm.Meter(sample_rate).integrated_loudness(x)
    if not math.isfinite(loud):  # too short or gated away: fall back to RMS
        rms = float(np.sqrt(np.mean(x**2)))
        if rms < 1e-6:
            return samples
        loud = 20 * math.log10(rms) - 0.691 + 3.0  # rough RMS->LUFS offset for speech-like signals
    gain = 10 ** ((target_db - loud) / 20)
    out = samples * gain
    peak = float(np.abs(out).max())
    if peak > 0.999:
        out = out * (0.999 / peak)
    return out.astype(np.float32)


def save_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> Path:
    """Write ``samples`` (``[N]`` or ``[C, N]``, float in [-1, 1]) to wav/flac/ogg atomically."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(
            f"{path}: cannot write {path.suffix or 'files without an extension'} (use .wav, .flac or .ogg)"
        )
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[-1] == 0:
        raise AudioError(f"{path}: nothing to write (shape {tuple(x.shape)})")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    x = np.clip(x, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x.T, int(sample_rate), format=fmt[0], subtype=fmt[1])
    return path
