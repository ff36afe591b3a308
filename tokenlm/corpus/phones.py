"""Phone-timing files: UTF-8 text, one ``"start end phone"`` line per phone, times in seconds.

``start`` and ``end`` are measured from the start of the clip's audio file; lines are in time order and do
not overlap. Phone names are the engine's own (espeak-ng mnemonics, festival's radio phone set); pauses
are ``_``/``_:`` (espeak) and ``pau`` (festival). ``frame_labels`` turns a file into one label per frame.
Every phone-timed corpus writes this format: synthetic speech (``corpus.synth``) and the espeak phone corpus
(``corpus.espeak_corpus``).
"""

from __future__ import annotations

import math
from pathlib import Path

from tokenlm.errors import TokenlmError
from tokenlm.utils import atomic_write_text


def write_phones(path: str | Path, phones) -> Path:
    """Write ``[(start_s, end_s, phone), ...]`` atomically."""
    text = "".join(f"{s:.4f} {e:.4f} {p}\n" for s, e, p in phones)
    atomic_write_text(path, text)
    return Path(path)


def read_phones(path: str | Path) -> list[tuple[float, float, str]]:
    """Read a phone-timing file -> ``[(start_s, end_s, phone), ...]``."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise TokenlmError(f"{path}:{n}: expected 'start end phone', got {line!r}")
        out.append((float(parts[0]), float(parts[1]), parts[2]))
    return out


def parse_festival_segs(text: str) -> list[tuple[float, float, str]]:
    """Festival ``utt.save.segs`` output (a header, ``#``, then ``end 100 phone`` lines) -> phones."""
    lines = text.splitlines()
    body = lines[lines.index("#") + 1 :] if "#" in lines else lines
    phones, start = [], 0.0
    for line in body:
        parts = line.split()
        if len(parts) < 3:
            continue
        end = float(parts[0])
        if end > start:
            phones.append((round(start, 4), round(end, 4), parts[2]))
        start = max(start, end)
    return phones


def frame_labels(phones, frame_rate: float, n_frames: int | None = None, blank: str = "_") -> list[str]:
    """The phone at the centre of each frame (``frame_rate`` Hz); frames past the last phone get ``blank``."""
    end = phones[-1][1] if phones else 0.0
    n = n_frames if n_frames is not None else int(math.ceil(end * frame_rate))
    labels, k = [], 0
    for i in range(n):
        t = (i + 0.5) / frame_rate
        while k < len(phones) and phones[k][1] <= t:
            k += 1
        labels.append(phones[k][2] if k < len(phones) and phones[k][0] <= t else blank)
    return labels
