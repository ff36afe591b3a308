"""``tokenlm data build``: fetch the sources of a recipe and write the manifests under the data root.

Each part (``speech_real``, ``music``, ...) is built by one function that returns clips with splits set.
A part is skipped when its manifest exists and was written by the same recipe (a stamp file holds the
recipe's hash); inside a part, finished files are skipped too, so an interrupted build resumes where it
stopped. Sources that cannot be fetched are listed at the end and the exit code is 1 (partial build).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenlm.config import load_config, to_dict
from tokenlm.corpus import realspeech, splits
from tokenlm.corpus.fetch import FetchReport, fetch_deb
from tokenlm.corpus.manifest import PARTS, Clip, data_root, manifest_path, write_manifest
from tokenlm.errors import TokenlmError
from tokenlm.utils import progress, setup_logging

log = logging.getLogger("tokenlm.corpus")


@dataclass(frozen=True)
class Recipe:
    """What to build. ``eval_speakers`` are held out wholly; fractions are of groups (tracks, sources)."""

    eval_speakers: tuple[str, ...] = ()
    seed: int = 0
    music_segment_s: float = 20.0
    music_eval_fraction: float = 0.1
    music21_minutes: float = 45.0  # scores rendered with fluidsynth (0: none)
    sounds_eval_fraction: float = 0.15
    # minutes of synthetic speech per engine (estimated from text length while planning)
    synth_minutes: dict = field(
        default_factory=lambda: {"espeak": 290.0, "festival": 80.0, "flite": 70.0, "piper": 25.0}
    )
    synth_eval_speakers: tuple[str, ...] = ()
    synth_generated_sentences: int = 3000
    mixtures_per_type: int = 300  # train mixtures of each type (see corpus.mixtures)
    mixtures_eval_per_type: int = 40
    mixture_seconds: float = 6.0


@dataclass
class BuildContext:
    root: Path
    recipe: Recipe
    report: FetchReport

    def deb(self, name: str) -> Path | None:
        return fetch_deb(name, self.root, self.report)


def build_speech_real(ctx: BuildContext) -> list[Clip]:
    """Fish Fillets (nl, cs), Tux Paint stamp descriptions and KLettres, split by speaker."""
    clips: list[Clip] = []
    data = ctx.deb("fillets-ng-data")
    for lang in progress(("nl", "cs"), desc="fillets"):
        audio = ctx.deb(f"fillets-ng-data-{lang}")
        if data and audio:
            share = "usr/share/games/fillets-ng"
            clips += realspeech.fillets_clips(data / share, audio / share, lang)
    tux = ctx.deb("tuxpaint-stamps-default")
    if tux:
        clips += realspeech.tuxpaint_speech_clips(tux / "usr/share/tuxpaint/stamps")
    klettres = ctx.deb("klettres-data")
    if klettres:
        clips += realspeech.klettres_clips(klettres / "usr/share/klettres")
    missing = set(ctx.recipe.eval_speakers) - {c.speaker for c in clips}
    if missing and not ctx.report.failed:
        raise TokenlmError(f"recipe names eval speakers that do not exist: {sorted(missing)}")
    return splits.split_by_speaker(clips, ctx.recipe.eval_speakers)


def build_music(ctx: BuildContext) -> list[Clip]:
    """Game soundtracks cut into segments, split by track (a share of each source's tracks held out)."""
    from tokenlm.corpus import music

    tracks = []
    for source, patterns in music.MUSIC_SOURCES.items():
        pkg = ctx.deb(source)
        if pkg:
            tracks += music.find_tracks(pkg, source, patterns)
    sf2 = ctx.deb("timgm6mb-soundfont")
    if ctx.recipe.music21_minutes > 0 and sf2 is not None:
        tracks += _score_tracks(ctx, sf2 / "usr/share/sounds/sf2/TimGM6mb.sf2")
    out = ctx.root / "audio" / "music"
    clips = [
        c
        for t in progress(tracks, desc="music tracks")
        for c in music.segment_track(t, out, ctx.recipe.music_segment_s)
    ]
    # split per source so every game (and every music21 composer) has held-out tracks
    return splits.split_by_group(clips, ctx.recipe.music_eval_fraction, ctx.recipe.seed, per="source")


def _score_tracks(ctx: BuildContext, soundfont: Path) -> list:
    import shutil

    if shutil.which("fluidsynth") is None:
        ctx.report.fail("fluidsynth", "not installed (apt-get install fluidsynth); music21 renders skipped")
        return []
    try:
        import music21  # noqa: F401  (optional: pip install music21)
    except ImportError:
        ctx.report.fail("music21", "not installed (pip install music21); music21 renders skipped")
        return []
    from tokenlm.corpus import scores

    return scores.score_tracks(ctx.root / "audio" / "music21", soundfont, ctx.recipe.music21_minutes, ctx.recipe.seed)


PART_BUILDERS: dict[str, Callable[[BuildContext], list[Clip]]] = {
    "speech_real": build_speech_real,
    "music": build_music,
}


def _lazy_builders() -> dict[str, Callable[[BuildContext], list[Clip]]]:
    """Builders of later parts live in their own modules (heavier imports)."""
    from tokenlm.corpus import build_more

    return {**PART_BUILDERS, **build_more.PART_BUILDERS}


def recipe_hash(recipe: Recipe, part: str) -> str:
    return hashlib.sha1(json.dumps([part, to_dict(recipe)], sort_keys=True).encode()).hexdigest()[:16]


def build_part(part: str, ctx: BuildContext, builder) -> tuple[int, float, bool]:
    """Build one part unless already built by this recipe -> (clips, hours, skipped)."""
    path = manifest_path(ctx.root, part)
    stamp = path.with_name(f".{part}.recipe")
    want = recipe_hash(ctx.recipe, part)
    if path.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        from tokenlm.corpus.manifest import read_manifest

        clips = read_manifest(path)
        return len(clips), sum(c.duration for c in clips) / 3600, True
    failed_before = len(ctx.report.failed)
    clips = builder(ctx)
    ids = [c.id for c in clips]
    if len(set(ids)) != len(ids):
        raise TokenlmError(f"{part}: duplicate clip ids (a parser bug)")
    write_manifest(path, clips)
    if len(ctx.report.failed) == failed_before:  # a partial part is rebuilt next time
        stamp.write_text(want + "\n")
    else:
        stamp.unlink(missing_ok=True)
    return len(clips), sum(c.duration for c in clips) / 3600, False


def build(recipe: Recipe, root: Path, parts: list[str]) -> FetchReport:
    ctx = BuildContext(root=root, recipe=recipe, report=FetchReport())
    builders = _lazy_builders()
    for part in parts:
        if part not in builders:
            raise TokenlmError(f"part {part!r} cannot be built (known: {', '.join(builders)})")
        t0 = time.time()
        n, hours, skipped = build_part(part, ctx, builders[part])
        how = "up to date" if skipped else f"built in {time.time() - t0:.0f} s"
        print(f"{part:18s} {n:7d} clips {hours:7.2f} h  ({how})", flush=True)
    return ctx.report


def cli_build(args) -> int:
    setup_logging("warning")
    recipe = load_config(Recipe, f"data/{args.recipe}" if not str(args.recipe).endswith(".yaml") else args.recipe)
    root = data_root(args.root)
    parts = list(PARTS) if not args.only else [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise TokenlmError(f"unknown part(s) {bad} (choose from {', '.join(PARTS)})")
    report = build(recipe, root, parts)
    print(f"manifests in {root / 'manifests'}")
    if report.failed:
        print("could not fetch (the parts above are partial; run the same command again to resume):")
        for name, why in report.failed.items():
            print(f"  {name}: {why}")
        return 1
    return 0
