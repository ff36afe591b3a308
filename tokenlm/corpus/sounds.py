"""Sound events with labels and captions: game, Tux Paint and desktop-theme clips.

Labels come from file names (``engine_large`` -> ``engine large``) plus a category (``animals``,
``game effect``, ``interface``); captions are written from the labels with varied templates so that a
captioning model does not learn one sentence shape. Two-event mixtures get pair captions
("rain while a horn sounds" style) in ``corpus.mixtures``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import soundfile as sf

from tokenlm.corpus.manifest import Clip

# package -> [(glob relative to the extracted package, category)]; EXCLUDE drops music and speech
SOUND_SOURCES = {
    "supertuxkart-data": [
        ("usr/share/games/supertuxkart/data/sfx/*.ogg", "game effect"),
        ("usr/share/games/supertuxkart/data/library/*/*.ogg", "vehicles"),
        ("usr/share/games/supertuxkart/data/tracks/*/*.ogg", "game effect"),
    ],
    "supertux-data": [
        ("usr/share/games/supertux2/sounds/*.wav", "game effect"),
        ("usr/share/games/supertux2/sounds/*.ogg", "game effect"),
    ],
    "frozen-bubble-data": [("usr/share/games/frozen-bubble/snd/*.ogg", "game effect")],
    "fillets-ng-data": [("usr/share/games/fillets-ng/sound/*/sp-*.ogg", "game effect")],
    "sound-theme-freedesktop": [("usr/share/sounds/freedesktop/stereo/*.oga", "interface")],
    "tuxpaint-stamps-default": [("usr/share/tuxpaint/stamps/**/*.ogg", "stamp")],
    "0ad-audio": [("audio/**/*.ogg", "0ad")],
}
EXCLUDE = re.compile(
    r"zik|intro2|nolok_speech|Gran_Paradiso|Battle_Theme|beneath_the_rabbit|/audio/(music|voice)/"
    r"|/(alphabets|math)/|_desc|_[a-z]{2}(_[A-Za-z]{2})?\.ogg$"
)
_ABBREVIATIONS = {"fs": "footsteps", "sel": "select", "con": "construct", "amb": "ambient", "ui": "interface"}
_SKIP_WORDS = {"ogg", "wav", "oga", "sfx", "stk", "loop", "the", "a", "of"}

SINGLE_TEMPLATES = (
    "{a}.",
    "The sound of {a}.",
    "A recording of {a}.",
    "{A} can be heard.",
    "A short clip of {a}.",
    "You can hear {a}.",
    "{A}, recorded up close.",
    "Sound effect: {a}.",
)
PAIR_TEMPLATES = (
    "{a} and {b}.",
    "{A} while {b} plays.",
    "{A} together with {b}.",
    "A mix of {a} and {b}.",
    "{A}, with {b} in the background.",
    "{A} over {b}.",
    "Both {a} and {b} can be heard.",
)


def label_words(stem: str) -> str:
    """File stem -> a label phrase: ``airplane_jetEngine2`` -> ``airplane jet engine``."""
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    words = [w.lower() for w in re.split(r"[_\-\s.]+", s) if w]
    words = [w for w in words if not w.isdigit() and len(w) > 1 and w not in _SKIP_WORDS]
    words = [_ABBREVIATIONS.get(w, w) for w in (re.sub(r"\d+$", "", w) for w in words)]
    return " ".join(w for w in words if w)


def caption(labels: list[str], rng: random.Random) -> str:
    """One caption from one or two label phrases, with a randomly chosen template."""
    a = labels[0]
    if len(labels) == 1:
        t = rng.choice(SINGLE_TEMPLATES)
        return _capitalize(t.format(a=a, A=_capitalize(a)))
    b = labels[1]
    return _capitalize(rng.choice(PAIR_TEMPLATES).format(a=a, A=_capitalize(a), b=b))


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _category(rel: Path, category: str) -> str:
    if category == "stamp":  # the stamp folder says what it is: usr/share/tuxpaint/stamps/animals/birds/owl.ogg
        return rel.parts[4] if len(rel.parts) > 5 else "object"
    if category == "0ad":  # audio/attack/impact/arrow_01.ogg, audio/actor/fauna/animal/cattle_01.ogg
        return rel.parts[2] if rel.parts[1] in ("actor",) else rel.parts[1]
    return category


def sound_clips(pkg_dir: Path, source: str, seed: int = 0) -> list[Clip]:
    """Labelled clips of one package in ``SOUND_SOURCES`` (music and speech files are excluded)."""
    clips = []
    rng = random.Random(f"{seed}:{source}")
    paths = {p: c for pattern, c in SOUND_SOURCES[source] for p in sorted(pkg_dir.glob(pattern))}
    for path, category in paths.items():
        phrase = label_words(path.stem)
        if EXCLUDE.search(str(path)) or not phrase:
            continue
        rel = path.relative_to(pkg_dir)
        info = sf.info(str(path))
        clips.append(
            Clip(
                id=f"sounds/{source}/{rel}",
                path=str(path.resolve()),
                duration=round(info.duration, 4),
                sample_rate=info.samplerate,
                kind="sounds",
                text=caption([phrase], rng),
                labels=(phrase, _category(rel, category)),
                source=source,
                group=f"{source}/{rel}",
            )
        )
    return clips
