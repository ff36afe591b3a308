"""The task commands of the CLI (``tokenlm asr``, ``tokenlm tts``, ``tokenlm clone``): argument checks,
``Pipeline`` calls, output files. Results go to stdout, logs to stderr; bad input is a ``TokenlmError``
(one line, exit 2) raised before anything is written, and audio is written under a temporary name."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tokenlm.errors import TokenlmError
from tokenlm.utils import log

from .pipeline import Pipeline


def _pipeline(model: str) -> Pipeline:
    t = time.time()
    pipe = Pipeline.from_pretrained(model)
    log.info("loaded %s in %.1f s", model, time.time() - t)
    return pipe


def _check_input(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise TokenlmError(f"{path}: no such file")
    if not p.is_file():
        raise TokenlmError(f"{path}: not a file")


def _check_output(path: str, *inputs: str | None) -> Path:
    out = Path(path)
    if out.suffix.lower() not in (".wav", ".flac", ".ogg"):
        raise TokenlmError(f"{path}: the output must be .wav, .flac or .ogg")
    if out.is_dir():
        raise TokenlmError(f"{path}: is a directory")
    for i in inputs:
        if i and out.exists() and Path(i).exists() and out.resolve() == Path(i).resolve():
            raise TokenlmError(f"{path}: the output would overwrite the input")
    if not out.parent.exists():
        raise TokenlmError(f"{out.parent}: no such directory")
    return out


def cli_asr(args) -> int:
    _check_input(args.input)
    pipe = _pipeline(args.model)
    result = pipe.asr(args.input)
    if args.json:
        print(json.dumps({"text": result.text, "language": result.language, "windows": result.windows}, ensure_ascii=False))
    else:
        print(result.text)
    return 0


def cli_tts(args) -> int:
    from tokenlm.codecs.audio import save_audio

    if not args.text.strip():
        raise TokenlmError("the text is empty")
    if args.voice:
        _check_input(args.voice)
    out = _check_output(args.output, args.voice)
    pipe = _pipeline(args.model)
    t0, first, chunks = time.time(), None, []
    for chunk in pipe.tts_stream(
        args.text,
        voice=args.voice,
        voice_text=args.voice_text,
        language=args.language,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
    ):
        first = first or time.time() - t0
        chunks.append(chunk)
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if wav.size == 0:
        raise TokenlmError("the model produced no audio for this text")
    seconds = time.time() - t0
    save_audio(out, wav, pipe.sample_rate)
    dur = wav.size / pipe.sample_rate
    log.info("%.2f s of audio in %.2f s (%.2fx real time), first audio after %.2f s", dur, seconds, dur / seconds, first)
    print(out)
    return 0


def cli_separate(args) -> int:
    from tokenlm.codecs.audio import save_audio

    _check_input(args.input)
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise TokenlmError(f"{outdir}: exists and is not a directory")
    if not outdir.parent.exists():
        raise TokenlmError(f"{outdir.parent}: no such directory")
    pipe = _pipeline(args.model)
    result = pipe.separate(args.input, target=args.target, seed=args.seed)  # everything is computed first
    outdir.mkdir(exist_ok=True)
    for name, wav in result.items():
        print(save_audio(outdir / f"{name}.wav", wav, pipe.sample_rate))  # each file written atomically
    return 0


def cli_caption(args) -> int:
    _check_input(args.input)
    pipe = _pipeline(args.model)
    out = pipe.caption(args.input)
    print(json.dumps(out, ensure_ascii=False) if args.json else out["caption"])
    return 0


def cli_continue(args) -> int:
    from tokenlm.codecs.audio import save_audio

    _check_input(args.input)
    out = _check_output(args.output, args.input)
    if not 0 < args.seconds <= 120:
        raise TokenlmError("--seconds must be in (0, 120]")
    pipe = _pipeline(args.model)
    wav = pipe.continue_(
        args.input, seconds=args.seconds, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, cfg_scale=args.cfg,
    )
    save_audio(out, wav, pipe.sample_rate)
    print(out)
    return 0
