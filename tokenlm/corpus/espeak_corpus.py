"""The espeak-ng phone corpus: short English sentences with exact phone timings, for the semantic tokenizer.

espeak-ng is driven through its shared library (``corpus.espeak``) because only the library reports phoneme
events (``espeakEVENT_PHONEME``, with the sample position of each phone start); the command line's
``--pho`` needs mbrola, which is not available here. Voices are an accent plus a variant
(``en-gb-x-rp+f4``) with a per-utterance pitch, range and rate, so that held-out *voices* can be kept
apart from training voices: the ``eval`` split uses accents and variants that training never hears, and
``is_held_out_voice`` keeps them out of training wherever they come from.

The corpus is an ordinary manifest (``corpus.manifest``: one ``Clip`` per line, kind ``speech_synthetic``,
source ``espeak``) with phone files in the corpus format (``corpus.phones``). ``extra`` holds the voice
settings and ``sentence`` (the same id for every voice that speaks one sentence). It lives apart from the
corpus's ``manifests/`` folder so that kind-based readers (codec and LM data) do not pick it up.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlm.codecs.audio import resample, save_audio
from tokenlm.corpus.espeak import Espeak
from tokenlm.corpus.manifest import Clip, write_manifest
from tokenlm.corpus.phones import write_phones
from tokenlm.errors import TokenlmError
from tokenlm.utils import cache_dir, progress

TRAIN_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt", "klatt2", "Alex", "belinda", "david")
EVAL_ACCENTS = ("en-gb-x-rp", "en-gb-x-gbcwmd")
EVAL_VARIANTS = ("m7", "f4", "f5", "klatt4", "Andy", "linda")
SILENCE = "_"


# --------------------------------------------------------------------------- espeak-ng


@dataclass(frozen=True)
class Utterance:
    """``samples`` [N] float32 at ``sample_rate``; ``phones`` [(start_s, end_s, phone)] covering the clip."""

    samples: np.ndarray
    sample_rate: int
    phones: list[tuple[float, float, str]]


def say(
    text: str, voice: str, pitch: int = 50, range_: int = 50, rate: int = 175, engine: Espeak | None = None
) -> Utterance:
    """Speak ``text`` with ``voice`` (``accent+variant``) -> 22.05 kHz audio and covering phone intervals."""
    syn = (engine or Espeak()).synth(text, voice, rate=rate, pitch=pitch, range_=range_)
    return Utterance(syn.samples, syn.sample_rate, _intervals(syn.events, len(syn.samples), syn.sample_rate))


def _intervals(events: list[tuple[int, str]], n: int, sr: int) -> list[tuple[float, float, str]]:
    """Phone-start events -> covering intervals; pauses (``_``, ``_:``, ...) and the lead-in are silence."""
    starts = [(0, SILENCE)] + [(s, SILENCE if p.startswith("_") else p) for s, p in events]
    out = []
    for (s, p), (e, _) in zip(starts, starts[1:] + [(n, SILENCE)]):
        if e > s:
            out.append((s / sr, min(e, n) / sr, p))
    return out


# --------------------------------------------------------------------------- text


def harvest_sentences(n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` plain English sentences (5-16 words) from the docstrings of Python's standard library.

    The sources are parsed with ``ast``, never imported (importing arbitrary modules has side effects).
    """
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not {"site-packages", "test", "tests"} & set(p.parts))
    seen: set[str] = set()
    out: list[str] = []
    for f in files:
        try:
            tree = ast.parse(f.read_text(errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                _take_sentences(ast.get_docstring(node), seen, out)
    random.Random(seed).shuffle(out)
    return out[:n]


def _take_sentences(doc: str | None, seen: set[str], out: list[str]) -> None:
    for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", doc or "")):
        words = s.rstrip(".!?").split()
        if 5 <= len(words) <= 16 and all(re.fullmatch(r"[A-Za-z][a-z]*[,;]?", w) for w in words):
            if s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)


# --------------------------------------------------------------------------- the development corpus


def random_voice(rng: random.Random, split: str) -> dict:
    accents, variants = (TRAIN_ACCENTS, TRAIN_VARIANTS) if split == "train" else (EVAL_ACCENTS, EVAL_VARIANTS)
    return {
        "voice": f"{rng.choice(accents)}+{rng.choice(variants)}",
        "pitch": rng.randint(25, 80),
        "range_": rng.randint(30, 90),
        "rate": rng.randint(140, 210),
    }


def build_espeak_corpus(
    root: Path,
    n_train: int,
    n_eval_sentences: int,
    voices_per_eval: int = 3,
    sample_rate: int = 16000,
    seed: int = 0,
    sentences: list[str] | None = None,
) -> Path:
    """Write ``root/manifest.jsonl`` (+ wavs and phone files): ``n_train`` training clips, one random
    training voice each, and ``n_eval_sentences`` held-out sentences each spoken by ``voices_per_eval``
    different held-out voices (split ``eval``). Returns the manifest path."""
    rng = random.Random(seed)
    sentences = sentences or harvest_sentences(n_train + n_eval_sentences, seed)
    if len(sentences) < n_train + n_eval_sentences:
        raise TokenlmError(f"only {len(sentences)} sentences available, need {n_train + n_eval_sentences}")
    jobs = [("train", i, s, [random_voice(rng, "train")]) for i, s in enumerate(sentences[:n_train])]
    for j, s in enumerate(sentences[n_train : n_train + n_eval_sentences]):
        vs = _distinct_voices(rng, voices_per_eval)
        jobs.append(("eval", j, s, vs))
    engine, clips = Espeak(), []
    for split, i, text, voices in progress(jobs, desc="espeak corpus"):
        for v in voices:
            clips.append(_write_clip(root, engine, split, i, text, v, sample_rate))
    return write_manifest(root / "manifest.jsonl", clips)


def _distinct_voices(rng: random.Random, k: int) -> list[dict]:
    out, names = [], set()
    while len(out) < k:
        v = random_voice(rng, "eval")
        if v["voice"] not in names:
            names.add(v["voice"])
            out.append(v)
    return out


def _write_clip(root: Path, engine: Espeak, split: str, i: int, text: str, v: dict, sr: int) -> Clip:
    utt = say(text, **v, engine=engine)
    name = f"{split}/{i:05d}_{v['voice'].replace('+', '_')}"
    wav = root / f"{name}.wav"
    save_audio(wav, resample(utt.samples[None], utt.sample_rate, sr)[0] * 0.9, sr)
    phones = write_phones(root / f"{name}.phones", utt.phones)
    accent, variant = v["voice"].split("+")
    return Clip(
        id=f"espeak-phones/{name}",
        path=str(wav),
        duration=round(len(utt.samples) / utt.sample_rate, 3),
        sample_rate=sr,
        kind="speech_synthetic",
        language="en",
        speaker=v["voice"],
        text=text,
        split=split,
        phones=str(phones),
        source="espeak",
        group=v["voice"],
        extra={
            "accent": accent,
            "variant": variant,
            "pitch": v["pitch"],
            "range": v["range_"],
            "rate": v["rate"],
            "sentence": f"{split}-{i}",
        },
    )


def dev_corpus(n_train: int = 4000, n_eval_sentences: int = 150) -> Path:
    """The default espeak corpus in the cache, built once (a minute or two) and reused."""
    root = cache_dir() / "data" / "espeak_phones"
    manifest = root / "manifest.jsonl"
    if not manifest.exists():
        build_espeak_corpus(root, n_train, n_eval_sentences)
    return manifest


# --------------------------------------------------------------------------- voices


def voice_name(clip: Clip) -> str:
    """The espeak voice of a clip (``accent+variant``, from its ``extra``), else its speaker."""
    if clip.source == "espeak" and clip.extra.get("accent"):
        return f"{clip.extra['accent']}+{clip.extra.get('variant', '')}"
    return str(clip.speaker or "")


def is_held_out_voice(clip: Clip) -> bool:
    """True for espeak clips in an accent reserved for evaluation, wherever they come from: other
    corpus parts (``tokenlm data build``) use the same engine and must not leak these voices into training."""
    return voice_name(clip).split("+")[0] in EVAL_ACCENTS
