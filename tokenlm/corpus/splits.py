"""Train/eval splits by group: a speaker (speech) or a track (music) is wholly in one split.

Speech is split by a fixed list of eval speakers named in the recipe (so the held-out voices are a
deliberate choice: unseen speakers and languages); music and sounds by a seeded hash of the group, so
the choice is stable when sources are added. Mixtures take the split of their sources, which are drawn
from one split only (``corpus.mixtures``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import defaultdict

from tokenlm.corpus.manifest import Clip


def group_of(clip: Clip) -> str:
    """The unit that must not cross splits: ``group``, else the speaker, else the clip itself."""
    return clip.group or clip.speaker or clip.id


def split_by_speaker(clips: list[Clip], eval_speakers) -> list[Clip]:
    """Clips with ``split`` = eval exactly when their speaker is in ``eval_speakers``."""
    held = set(eval_speakers)
    return [dataclasses.replace(c, split="eval" if c.speaker in held else "train") for c in clips]


def _rank(group: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()


def split_by_group(clips: list[Clip], eval_fraction: float, seed: int = 0, per: str = "source") -> list[Clip]:
    """Hold out ``ceil(eval_fraction * groups)`` groups per ``per`` attribute (e.g. each music source).

    Groups are ranked by a seeded hash, so adding a track does not move the others.
    """
    groups_by_key: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        groups_by_key[str(getattr(c, per))].add(group_of(c))
    held: set[str] = set()
    for groups in groups_by_key.values():
        ranked = sorted(groups, key=lambda g: _rank(g, seed))
        n_eval = math.ceil(eval_fraction * len(ranked)) if len(ranked) > 1 else 0
        held.update(ranked[:n_eval])
    return [dataclasses.replace(c, split="eval" if group_of(c) in held else "train") for c in clips]


def speaker_overlap(clips: list[Clip]) -> list[str]:
    """Speakers that appear in both splits (must be empty)."""
    by_split: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        if c.speaker is not None:
            by_split[c.split].add(c.speaker)
        if c.kind == "mixture":
            by_split[c.split].update(c.extra.get("speakers") or ())
    return sorted(by_split["train"] & by_split["eval"])


def group_overlap(clips: list[Clip]) -> list[str]:
    """Groups (speakers, tracks) that appear in both splits (must be empty)."""
    by_split: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        by_split[c.split].add(group_of(c))
    return sorted(by_split["train"] & by_split["eval"])
