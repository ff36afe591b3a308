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
        members = [i for i in z.infolist() if i.filename.startswith("audio/") and i.filename.endswith(".ogg")
                   and not i.filename.startswith(("audio/music/", "audio/voice/"))]
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
