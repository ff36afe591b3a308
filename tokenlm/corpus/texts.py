"""English sentences to synthesize: Fish Fillets dialogue, Tux Paint descriptions and generated sentences.

Every text gets a stable id (a hash of the text) and a split: a seeded ~10% of texts are eval texts, which
are the only texts eval voices speak (and train voices never do), so TTS evaluation is on unseen text.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tokenlm.corpus.realspeech import parse_fillets_dialogs, parse_tuxpaint_txt


@dataclass(frozen=True)
class Text:
    id: str
    text: str
    source: str
    split: str = "train"


_REPLACE = {
    "\u2019": "'",
    "\u2018": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u2013": "-",
    "\u2014": "-",
}


def clean(text: str) -> str:
    """Plain ASCII-ish English: typographic quotes and dashes simplified, whitespace collapsed."""
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"\s+", " ", text).strip()


def _usable(text: str) -> bool:
    return 2 <= len(text) <= 300 and any(c.isalpha() for c in text)


def fillets_english(script_dir: Path) -> list[str]:
    """English lines of all Fish Fillets levels (the third argument of every ``dialogId``)."""
    lines = {}
    for lua in sorted(script_dir.glob("*/*dialogs_cs.lua")) + sorted(script_dir.glob("*/*dialogs_en.lua")):
        for d in parse_fillets_dialogs(lua.read_text(encoding="utf-8", errors="replace")).values():
            lines[clean(d["text_en"])] = None
    return list(lines)


def tuxpaint_english(stamps_dir: Path) -> list[str]:
    lines = {}
    for txt in sorted(stamps_dir.rglob("*.txt")):
        en = parse_tuxpaint_txt(txt.read_text(encoding="utf-8", errors="replace")).get("en")
        if en:
            lines[clean(en)] = None
    return list(lines)


_SUBJECTS = [
    "the old fisherman",
    "a small girl",
    "my neighbour",
    "the teacher",
    "our captain",
    "a tired dog",
    "the young doctor",
    "my brother",
    "the baker",
    "a quiet student",
    "the pilot",
    "her grandmother",
    "the robot",
    "a clever fox",
    "the farmer",
    "his sister",
    "the singer",
    "a lost tourist",
]
_VERBS = [
    "found",
    "painted",
    "carried",
    "forgot",
    "opened",
    "repaired",
    "sold",
    "watched",
    "borrowed",
    "cleaned",
    "dropped",
    "described",
    "counted",
    "measured",
    "ordered",
    "hid",
    "followed",
    "built",
]
_OBJECTS = [
    "a red umbrella",
    "the wooden box",
    "three green apples",
    "an old map",
    "the broken clock",
    "a letter from Paris",
    "the silver key",
    "two heavy bags",
    "a yellow kite",
    "the last train ticket",
    "a bowl of soup",
    "the blue bicycle",
    "seven paper boats",
    "a strange photograph",
    "the kitchen door",
]
_PLACES = [
    "near the river",
    "in the morning",
    "behind the station",
    "before the storm",
    "at the market",
    "after lunch",
    "under the bridge",
    "in a hurry",
    "during the night",
    "on the way home",
    "next to the library",
    "without a word",
    "at half past nine",
    "on a rainy Sunday",
]
_QUESTIONS = [
    "Why did {s} leave so early?",
    "Where is {o} now?",
    "Did {s} really see {o}?",
    "How many times has {s} asked about {o}?",
    "Could you tell {s} about {o}?",
]


def generated_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences from a small grammar (statements, questions, numbers), reproducible."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        s, v, o, p = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_PLACES)
        kind = rng.random()
        if kind < 0.6:
            text = f"{s} {v} {o} {p}."
        elif kind < 0.8:
            text = rng.choice(_QUESTIONS).format(s=s, o=o)
        else:
            count = rng.randint(2, 999)  # draw order matters: the sentences must not change between builds
            other, verb = rng.choice(_SUBJECTS), rng.choice(_VERBS)
            text = f"{s} {v} {count} things {p}, and then {other} {verb} {o}."
        out[text[0].upper() + text[1:]] = None
    return list(out)


def text_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def make_texts(groups: dict[str, list[str]], eval_fraction: float = 0.1, seed: int = 0) -> list[Text]:
    """{source: sentences} -> distinct ``Text``s with a seeded hash split (``eval_fraction`` of texts)."""
    seen: dict[str, Text] = {}
    for source, sentences in groups.items():
        for s in sentences:
            s = clean(s)
            if not _usable(s) or s in seen:
                continue
            h = int(hashlib.sha1(f"{seed}:{s}".encode()).hexdigest()[:8], 16) / 16**8
            seen[s] = Text(text_id(s), s, source, "eval" if h < eval_fraction else "train")
    return list(seen.values())
