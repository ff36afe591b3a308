"""Music: game soundtracks cut into fixed-length mono segment files.

Each track becomes ``<out>/<source>/<track>/<index:03d>.flac`` (mono, the track's own sample rate) plus a
``segments.json`` written last, so a track whose JSON exists is finished and skipped on the next build.
Segments are ``segment_s`` long; a shorter tail is kept when it is at least ``min_tail_s``. The game
music is already mastered, so levels are kept (only a downmix to mono).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tokenlm.codecs.audio import save_audio
from tokenlm.corpus.manifest import Clip
from tokenlm.utils import atomic_write_text

# package -> glob patterns (relative to the extracted package) of its music tracks
MUSIC_SOURCES = {
    "wesnoth-1.16-music": ["usr/share/games/wesnoth/*/data/core/music/*.ogg"],
    "supertux-data": ["usr/share/games/supertux2/music/**/*.ogg"],
    "supertuxkart-data": ["usr/share/games/supertuxkart/data/music/*.ogg"],
    "frozen-bubble-data": ["usr/share/games/frozen-bubble/snd/*zik*.ogg"],
    "fillets-ng-data": ["usr/share/games/fillets-ng/music/*.ogg"],
}


@dataclass(frozen=True)
class Track:
    """One music file to segment; ``id`` names it uniquely (``source/name``) and is its split group."""

    id: str
    path: Path
    source: str
    labels: tuple[str, ...] = ()


def find_tracks(pkg_dir: Path, source: str, patterns: list[str]) -> list[Track]:
    files = sorted({p for pat in patterns for p in pkg_dir.glob(pat) if p.is_file()})
    return [Track(f"{source}/{_slug(p.relative_to(pkg_dir).with_suffix(''))}", p, source) for p in files]


def _slug(p: Path) -> str:
    # the parent folder disambiguates same-named tracks in different folders (supertux)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{p.parent.name}-{p.name}")


def segment_bounds(n: int, sr: int, segment_s: float, min_tail_s: float) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` cutting ``n`` samples into ``segment_s`` pieces (tail kept if long)."""
    step = int(round(segment_s * sr))
    bounds = [(s, min(s + step, n)) for s in range(0, n, step)]
    return [(s, e) for s, e in bounds if (e - s) >= min_tail_s * sr]


def segment_track(track: Track, out_dir: Path, segment_s: float = 20.0, min_tail_s: float = 5.0) -> list[Clip]:
    """Cut ``track`` into segment files under ``out_dir/<track id>/`` -> clips (cached in segments.json)."""
    folder = out_dir / track.id
    done = folder / "segments.json"
    if done.is_file():
        return [Clip.from_json(d) for d in json.loads(done.read_text())]
    x, sr = sf.read(str(track.path), dtype="float32", always_2d=True)
    mono = x.mean(axis=1)
    clips = []
    for i, (s, e) in enumerate(segment_bounds(len(mono), sr, segment_s, min_tail_s)):
        seg = mono[s:e]
        if np.abs(seg).max() < 1e-4:  # silent stretches (gaps between loops) teach nothing
            continue
        path = save_audio(folder / f"{i:03d}.flac", seg, sr)
        clips.append(
            Clip(
                id=f"music/{track.id}/{i:03d}",
                path=str(path.resolve()),
                duration=round((e - s) / sr, 4),
                sample_rate=sr,
                kind="music",
                labels=("music", track.source, *track.labels),
                source=track.source,
                group=track.id,
                extra={"start": round(s / sr, 4), "track": str(track.path)},
            )
        )
    atomic_write_text(done, json.dumps([c.to_json() for c in clips], ensure_ascii=False))
    return clips
