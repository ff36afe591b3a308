"""``tokenlm compress`` / ``tokenlm decompress``: audio <-> .tlm files through the codec, in bounded memory.

Both stream: the encoder and decoder carry their state across chunks (they are causal), so a long file
never has to be held in memory as audio or codes, and the result equals the whole-file call.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tokenlm.checkpoint import WEIGHTS_FILE, sha256_file
from tokenlm.errors import TokenlmError
from tokenlm.utils import atomic_path, log, progress

from ..audio import AudioError, load_audio
from .container import Header, Writer, bitrate_of, read_blocks, read_header
from .model import Codec, StreamingDecoder, StreamingEncoder

CHUNK_SECONDS = 10.0
LONG_FILE_SECONDS = 1200.0  # longer inputs are decoded by ffmpeg in a stream instead of loaded whole


def load_codec(name_or_path: str, precision: str = "fp32") -> tuple[Codec, bytes]:
    """The codec and the first 8 bytes of its weights' sha256 (recorded in every .tlm file).

    ``precision``: "fp32", "bf16", or "auto" (bf16 where the CPU computes it natively)."""
    from tokenlm import pretrained
    from tokenlm.utils import cpu_has_fast_bf16

    folder = pretrained.resolve(name_or_path)
    model = pretrained.load(folder)
    if not isinstance(model, Codec):
        raise TokenlmError(f"{name_or_path} is not a codec")
    model.precision = ("bf16" if cpu_has_fast_bf16() else "fp32") if precision == "auto" else precision
    return model, bytes.fromhex(sha256_file(folder / WEIGHTS_FILE)[:16])


def _audio_chunks(path: Path, sample_rate: int) -> tuple[Iterator[np.ndarray], int]:
    """Mono float32 chunks at ``sample_rate`` and the total sample count."""
    try:
        info = sf.info(str(path))
        long = info.duration > LONG_FILE_SECONDS
    except Exception:
        long = False
    if not long:
        x = load_audio(path, sample_rate=sample_rate).samples[0]
        step = int(CHUNK_SECONDS * sample_rate)
        return (x[i : i + step] for i in range(0, len(x), step)), len(x)
    total = int(round(info.frames * sample_rate / info.samplerate))
    return _ffmpeg_stream(path, sample_rate), total


def _ffmpeg_stream(path: Path, sample_rate: int) -> Iterator[np.ndarray]:
    if shutil.which("ffmpeg") is None:
        raise TokenlmError("ffmpeg is needed to stream long inputs")
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-nostdin",
        "-i",
        str(path),
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-f",
        "f32le",
        "-",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as proc:
        step = int(CHUNK_SECONDS * sample_rate) * 4
        while chunk := proc.stdout.read(step):
            x = np.frombuffer(chunk[: len(chunk) // 4 * 4], dtype="<f4")
            if not np.isfinite(x).all():
                raise AudioError(f"{path}: contains NaN or infinite samples")
            yield x


def compress(
    inp: Path,
    out: Path,
    model: str = "codec-16k",
    kbps: float = 1.5,
    precision: str = "fp32",
    loaded: tuple[Codec, bytes] | None = None,
) -> Header:
    """``loaded``: ``load_codec(model)``'s result, for callers that keep the codec (a server loads it once)."""
    from ..audio import _check_path

    _check_path(Path(inp))  # bad input is reported before the model is loaded
    codec, mhash = loaded or load_codec(model, precision)
    try:
        n_q = codec.n_q_for_kbps(kbps)
    except ValueError as e:
        raise TokenlmError(str(e)) from None
    chunks, total = _audio_chunks(Path(inp), codec.sample_rate)
    from .modules import frames_for

    model_id = Path(model).name if Path(model).is_dir() else model  # decompress finds bundled models by id
    header = Header(
        n_q,
        int(np.log2(codec.codebook_size)),
        codec.sample_rate,
        codec.cfg.hop,
        frames_for(total, codec.cfg.hop),
        total,
        model_id,
        mhash,
    )
    enc = StreamingEncoder(codec, n_q)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        writer = Writer(f, header)
        bar = progress(
            total=total / codec.sample_rate, desc="compress", unit="s", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s"
        )
        for x in chunks:
            writer.write(enc.push(torch.from_numpy(np.ascontiguousarray(x))[None])[0].numpy())
            bar.update(len(x) / codec.sample_rate)
        writer.write(enc.flush()[0].numpy())
        writer.close()
        bar.close()
    return header


def decompress(
    inp: Path, out: Path, model: str | None = None, precision: str = "fp32", loaded: tuple[Codec, bytes] | None = None
) -> Header:
    """``loaded``: as in ``compress``; the file's weights hash is checked against it all the same."""
    inp = Path(inp)
    if not inp.is_file():
        raise TokenlmError(f"{inp}: no such file")
    with open(inp, "rb") as f:
        h = read_header(f, str(inp))
        codec, mhash = loaded or load_codec(model or h.model_id, precision)
        if mhash != h.model_hash:
            raise TokenlmError(f"{inp} was written by a different {h.model_id} model (weights hash mismatch)")
        if (codec.sample_rate, codec.cfg.hop) != (h.sample_rate, h.hop) or h.n_q > codec.n_q:
            raise TokenlmError(f"{inp}: codec does not match the file (rate, hop or n_q)")
        if Path(out).suffix.lower() not in (".wav", ".flac"):
            raise TokenlmError(f"{out}: write .wav or .flac")
        dec, written = StreamingDecoder(codec), 0
        with atomic_path(out) as tmp, sf.SoundFile(str(tmp), "w", h.sample_rate, 1, subtype="PCM_16") as snd:
            for codes in progress(read_blocks(f, h, str(inp)), desc="decompress", unit="block"):
                wav = dec.push(torch.from_numpy(codes)[None])[0].numpy()
                wav = wav[: max(0, h.num_samples - written)]
                snd.write(np.clip(wav, -1, 1))
                written += len(wav)
    return h


def cli_compress(args) -> int:
    out = Path(args.output)
    h = compress(Path(args.input), out, args.model, float(args.kbps), args.precision)
    seconds = h.num_samples / h.sample_rate
    log.info(
        "%s: %.2f s -> %d frames x %d codebooks, %d bytes, %.3f kbps (header included)",
        out,
        seconds,
        h.num_frames,
        h.n_q,
        out.stat().st_size,
        bitrate_of(out, h),
    )
    return 0


def cli_decompress(args) -> int:
    h = decompress(Path(args.input), Path(args.output), args.model, args.precision)
    log.info("%s: %.2f s at %d Hz from %d codebooks", args.output, h.num_samples / h.sample_rate, h.sample_rate, h.n_q)
    return 0
