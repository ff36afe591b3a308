"""Loaders for public dataset layouts that users bring on bigger machines -> ``Clip`` lists.

Each loader reads the folder as the dataset ships it and returns clips with absolute paths, durations,
speakers (prefixed with the dataset name so they stay globally unique) and splits (the dataset's own
dev/test parts are ``eval``). Write them out with ``manifest.write_manifest``.

- ``librispeech(root)``: ``<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``<spk>-<chapter>.trans.txt``
- ``libritts(root)``: ``<part>/<spk>/<chapter>/<id>.wav`` + ``<id>.normalized.txt`` (else ``.original.txt``).
- ``vctk(root)``: ``wav48_silence_trimmed/<spk>/<spk>_<n>_mic1.flac`` or ``wav48/<spk>/<spk>_<n>.wav``,
  transcripts ``txt/<spk>/<spk>_<n>.txt``.
- ``audio_folder(root)``: any audio with a sibling ``.txt`` or ``.lab`` transcript; speaker = parent folder.
- ``caption_csv(csv, audio_dir)``: AudioCaps (``audiocap_id,youtube_id,start_time,caption``) and Clotho
  (``file_name,caption_1..caption_5``) CSVs; several captions of one file become ``extra["captions"]``.
- ``musdb(root)``: ``{train,test}/<track>/mixture.wav`` + stems (``vocals, drums, bass, other``).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import soundfile as sf

from tokenlm.corpus.manifest import Clip
from tokenlm.errors import TokenlmError

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus")
MUSDB_STEMS = ("vocals", "drums", "bass", "other")


def _split_of(part: str) -> str:
    return "eval" if re.match(r"(dev|test|valid|eval)", part.lower()) else "train"


def _check_dir(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise TokenlmError(f"{root}: no such folder")
    return root


def _clip(id, path: Path, kind="speech_real", **kw) -> Clip:
    info = sf.info(str(path))
    return Clip(
        id=id,
        path=str(path.resolve()),
        duration=round(info.duration, 4),
        sample_rate=info.samplerate,
        kind=kind,
        **kw,
    )


def librispeech(root) -> list[Clip]:
    root, clips = _check_dir(root), []
    for trans in sorted(root.rglob("*.trans.txt")):
        part = trans.relative_to(root).parts[0] if len(trans.relative_to(root).parts) > 3 else root.name
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = next(
                (trans.parent / f"{uid}{e}" for e in AUDIO_EXTS if (trans.parent / f"{uid}{e}").is_file()),
                None,
            )
            if audio is None:
                continue
            spk = f"librispeech-{uid.split('-')[0]}"
            clips.append(
                _clip(
                    f"librispeech/{uid}",
                    audio,
                    language="en",
                    speaker=spk,
                    text=text,
                    text_en=text,
                    split=_split_of(part),
                    source="librispeech",
                    group=spk,
                )
            )
    return clips


def libritts(root) -> list[Clip]:
    root, clips = _check_dir(root), []
    for wav in sorted(root.rglob("*.wav")):
        txt = next(
            (
                wav.with_name(wav.stem + s)
                for s in (".normalized.txt", ".original.txt")
                if wav.with_name(wav.stem + s).is_file()
            ),
            None,
        )
        if txt is None:
            continue
        text = txt.read_text(encoding="utf-8").strip()
        spk = f"libritts-{wav.stem.split('_')[0]}"
        part = wav.relative_to(root).parts[0]
        clips.append(
            _clip(
                f"libritts/{wav.stem}",
                wav,
                language="en",
                speaker=spk,
                text=text,
                text_en=text,
                split=_split_of(part),
                source="libritts",
                group=spk,
            )
        )
    return clips


def vctk(root, eval_speakers=()) -> list[Clip]:
    """VCTK has no official split: speakers in ``eval_speakers`` (e.g. ``"p225"``) are eval."""
    root, clips = _check_dir(root), []
    audio_dirs = [d for d in ("wav48_silence_trimmed", "wav48", "wav") if (root / d).is_dir()]
    if not audio_dirs:
        raise TokenlmError(f"{root}: not a VCTK folder (no wav48_silence_trimmed/ or wav48/)")
    for audio in sorted(p for p in (root / audio_dirs[0]).rglob("*") if p.suffix in AUDIO_EXTS):
        spk = audio.parent.name
        utt = re.sub(r"_mic\d$", "", audio.stem)
        if audio.stem.endswith("_mic2"):  # the second microphone duplicates mic1
            continue
        txt = root / "txt" / spk / f"{utt}.txt"
        if not txt.is_file():
            continue
        text = txt.read_text(encoding="utf-8").strip()
        clips.append(
            _clip(
                f"vctk/{utt}",
                audio,
                language="en",
                speaker=f"vctk-{spk}",
                text=text,
                text_en=text,
                split="eval" if spk in set(eval_speakers) else "train",
                source="vctk",
                group=f"vctk-{spk}",
            )
        )
    return clips


def audio_folder(root, language: str | None = None, name: str | None = None) -> list[Clip]:
    """Audio files with a ``.txt`` or ``.lab`` transcript of the same stem; speaker = the parent folder."""
    root, clips = _check_dir(root), []
    name = name or root.name
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS):
        txt = next((audio.with_suffix(s) for s in (".txt", ".lab") if audio.with_suffix(s).is_file()), None)
        if txt is None:
            continue
        rel = audio.relative_to(root).with_suffix("")
        spk = f"{name}-{audio.parent.name}" if audio.parent != root else None
        text = " ".join(txt.read_text(encoding="utf-8").split())
        clips.append(
            _clip(
                f"{name}/{rel}",
                audio,
                language=language,
                speaker=spk,
                text=text,
                text_en=text if language == "en" else None,
                source=name,
                group=spk,
            )
        )
    return clips


def _find_audio(audio_dir: Path, names) -> Path | None:
    for n in names:
        for cand in [audio_dir / n] if Path(n).suffix else [audio_dir / f"{n}{e}" for e in AUDIO_EXTS]:
            if cand.is_file():
                return cand
    return None


def caption_csv(csv_path, audio_dir, split: str = "train", name: str | None = None) -> list[Clip]:
    """AudioCaps or Clotho caption CSV -> one ``sounds`` clip per audio file found (captions grouped)."""
    csv_path, audio_dir = Path(csv_path), _check_dir(audio_dir)
    if not csv_path.is_file():
        raise TokenlmError(f"{csv_path}: no such CSV")
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    captions: dict[Path, list[str]] = defaultdict(list)
    for row in rows:
        if "file_name" in row:  # Clotho
            audio = _find_audio(audio_dir, [row["file_name"]])
            caps = [row[k] for k in sorted(row) if k.startswith("caption") and row[k]]
        elif "youtube_id" in row:  # AudioCaps: files are named by id, youtube id, or youtube id + start
            start = row.get("start_time", "")
            audio = _find_audio(
                audio_dir,
                [
                    row.get("audiocap_id", ""),
                    f"{row['youtube_id']}_{start}",
                    f"Y{row['youtube_id']}",
                    row["youtube_id"],
                ],
            )
            caps = [row["caption"]]
        else:
            raise TokenlmError(f"{csv_path}: neither an AudioCaps nor a Clotho CSV (columns {list(row)})")
        if audio is not None:
            captions[audio] += [c.strip() for c in caps]
    name = name or ("clotho" if rows and "file_name" in rows[0] else "audiocaps")
    return [
        _clip(
            f"{name}/{a.stem}",
            a,
            kind="sounds",
            text=caps[0],
            split=split,
            source=name,
            group=f"{name}/{a.stem}",
            extra={"captions": caps},
        )
        for a, caps in sorted(captions.items())
    ]


def musdb(root) -> list[Clip]:
    """MUSDB18(-HQ) as decoded stems: a mixture clip per track with the four stems as ``sources``."""
    root, clips = _check_dir(root), []
    for mix in sorted(root.glob("*/*/mixture.wav")):
        stems = [mix.with_name(f"{s}.wav") for s in MUSDB_STEMS]
        if not all(s.is_file() for s in stems):
            continue
        part, track = mix.parent.parent.name, mix.parent.name
        clips.append(
            _clip(
                f"musdb/{part}/{track}",
                mix,
                kind="mixture",
                labels=("music", *MUSDB_STEMS),
                split=_split_of(part),
                source="musdb",
                group=f"musdb/{track}",
                sources=tuple(str(s.resolve()) for s in stems),
            )
        )
    return clips
