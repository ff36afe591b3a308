"""JSONL manifests: one ``Clip`` per line, the contract between the corpus and every trainer.

A manifest lives at ``<root>/manifests/<part>.jsonl`` with ``part`` one of ``PARTS`` (the espeak phone
corpus, ``corpus.espeak_corpus``, is a manifest of the same format kept in a folder of its own). Every line is a
JSON object with at least the fields of ``Clip``; unknown keys are kept in ``Clip.extra`` so that a
newer manifest still reads.

Field meanings (units in brackets):

- ``id``: unique within the corpus, e.g. ``"fillets-nl/city/vit-m-hlava"``.
- ``path``: absolute path of the audio file. One file is one clip: long music tracks are cut into
  segment files at build time (no start/end offsets to honour).
- ``duration`` [s], ``sample_rate`` [Hz] of the file as stored.
- ``kind``: one of ``KINDS``.
- ``language``: ISO 639-1 code (``"nl"``, ``"cs"``, ``"en"``) or None for non-speech.
- ``speaker``: a globally unique name (``"fillets-nl-m"``, ``"tuxpaint-fr"``, ``"festival-slt"``) or
  None. Variants of one synthetic voice share a speaker (see ``corpus.synth``).
- ``text``: native transcript (for sounds: a caption); ``text_en``: English translation or None.
- ``labels``: tags (sound-event classes, music source, ...).
- ``split``: ``"train"`` or ``"eval"``; assigned by speaker (music: by track), see ``corpus.splits``.
- ``phones``: path of a phone-timing file or None. Format: UTF-8 text, one ``"start end phone"``
  line per phone, times in seconds from the start of ``path`` (see ``corpus.phones``).
- ``source``: where it came from (Debian package, engine, dataset name).
- ``group``: the unit that must not cross splits (speaker for speech, track for music).
- mixtures only: ``sources`` (paths of the clean sources, the first is the target), ``snr_db``
  (level of the target over the sum of the others, in dB).

``read_manifest`` / ``load_clips`` give the clips; ``load_audio_clips`` reads their audio and phones into
memory (``AudioClip``) for the trainers that work on whole clips.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenlm.codecs.audio import load_audio
from tokenlm.corpus.phones import read_phones
from tokenlm.errors import TokenlmError
from tokenlm.utils import atomic_write_text, cache_dir, progress

KINDS = ("speech_real", "speech_synthetic", "music", "sounds", "mixture")
PARTS = ("speech_real", "speech_synthetic", "music", "sounds", "mixtures")
PART_KIND = {"mixtures": "mixture"}  # part name -> kind, where they differ
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Clip:
    """One audio file and what is known about it (see the module docstring for the fields)."""

    id: str
    path: str
    duration: float
    sample_rate: int
    kind: str
    language: str | None = None
    speaker: str | None = None
    text: str | None = None
    text_en: str | None = None
    labels: tuple[str, ...] = ()
    split: str = "train"
    phones: str | None = None
    source: str | None = None
    group: str | None = None
    sources: tuple[str, ...] = ()
    snr_db: float | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TokenlmError(f"clip {self.id}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.split not in SPLITS:
            raise TokenlmError(f"clip {self.id}: split {self.split!r} is not train or eval")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        d["labels"], d["sources"] = list(self.labels), list(self.sources)
        return {**d, **extra}

    @classmethod
    def from_json(cls, d: dict) -> Clip:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        known["labels"] = tuple(known.get("labels") or ())
        known["sources"] = tuple(known.get("sources") or ())
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})


def data_root(root: str | Path | None = None) -> Path:
    """The corpus root: ``root`` if given, else ``cache_dir() / "data"``."""
    return Path(root).expanduser().resolve() if root else cache_dir() / "data"


def manifest_path(root: str | Path | None, part: str) -> Path:
    if part not in PARTS:
        raise TokenlmError(f"unknown manifest part {part!r} (choose from {', '.join(PARTS)})")
    return data_root(root) / "manifests" / f"{part}.jsonl"


def read_manifest(path: str | Path, split: str | None = None) -> list[Clip]:
    """Read a JSONL manifest -> clips of ``split`` (None: all), in file order. A bad line raises with its
    line number."""
    path = Path(path)
    if not path.is_file():
        raise TokenlmError(f"{path}: no such manifest (run `tokenlm data build`)")
    clips = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            clips.append(Clip.from_json(json.loads(line)))
        except (ValueError, TypeError) as e:
            raise TokenlmError(f"{path}:{n}: not a manifest line ({e})") from None
    return [c for c in clips if split is None or c.split == split]


def write_manifest(path: str | Path, clips) -> Path:
    """Write clips as JSONL atomically (a reader never sees half a file)."""
    lines = [json.dumps(c.to_json(), ensure_ascii=False) for c in clips]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def load_clips(root=None, kinds=None, split: str | None = None) -> list[Clip]:
    """All clips under ``root`` whose kind is in ``kinds`` (None: all) and split is ``split`` (None: both).

    Parts whose manifest was not built are skipped; it is an error only if none exists.
    """
    kinds = set(KINDS if kinds is None else ([kinds] if isinstance(kinds, str) else kinds))
    bad = kinds - set(KINDS)
    if bad:
        raise TokenlmError(f"unknown kind(s) {sorted(bad)} (choose from {', '.join(KINDS)})")
    paths = [manifest_path(root, p) for p in PARTS if PART_KIND.get(p, p) in kinds]
    found = [p for p in paths if p.is_file()]
    if not found:
        raise TokenlmError(f"no manifest for {sorted(kinds)} under {data_root(root)} (run `tokenlm data build`)")
    clips = [c for p in found for c in read_manifest(p)]
    return [c for c in clips if c.kind in kinds and (split is None or c.split == split)]


# --------------------------------------------------------------------------- clips in memory


@dataclass(frozen=True)
class AudioClip:
    """A clip's audio in memory: ``samples`` [N] float32 mono at the rate it was loaded at, and its phones
    ``[(start_s, end_s, phone)]`` when it has a phone file."""

    clip: Clip
    samples: np.ndarray
    phones: list[tuple[float, float, str]] | None

    @property
    def speaker(self) -> str:
        return self.clip.speaker or ""

    @property
    def text(self) -> str:
        return self.clip.text or ""

    @property
    def sentence(self) -> str:
        """What was said, as an id: the same for every voice that speaks one sentence (default: the text)."""
        return self.clip.extra.get("sentence", self.text)


def load_audio_clips(clips: list[Clip], sample_rate: int, desc: str = "loading clips") -> list[AudioClip]:
    """Read each clip's audio (mono, resampled to ``sample_rate`` Hz) and phone file (if it has one)."""
    out = []
    for c in progress(clips, desc=desc):
        samples = load_audio(c.path, sample_rate=sample_rate).samples[0]
        out.append(AudioClip(c, samples, read_phones(c.phones) if c.phones else None))
    return out
