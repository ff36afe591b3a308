"""Source separation / speech enhancement:
``bos <separate> <speech|music|sound> [mixture frames] sos_audio -> [the frames of that source] eos``.

The target is chosen by a modality token: ``speech`` keeps the voice of a speech mixture, ``music`` or
``sound`` (the background) keeps the other source. Trained on the corpus mixtures, whose sources are
stored exactly as mixed (``mix = s0 + s1``), tokenized beside them.
"""

from __future__ import annotations

from tokenlm.errors import TokenlmError

from .base import CodecTarget, Example, TaskContext, register

TARGETS = ("speech", "music", "sound")
# mixture type -> the target token of source 0 and of source 1 (None: not a target)
ROLES = {"speech+music": ("speech", "music"), "speech+sound": ("speech", "sound")}


class Separate(CodecTarget):
    name = "separate"
    kinds = ("mixture",)

    def condition(self, ctx: TaskContext, ex: Example, mixture: Example | None = None, target: str = "speech", **kw):
        if target not in TARGETS:
            raise TokenlmError(f"unknown separation target {target!r} (choose from {', '.join(TARGETS)})")
        if mixture is None:
            raise TokenlmError("separation needs the mixture")
        return ctx.prompt(self.name).modality(target).codec(ctx.codec_ids(mixture.codes)).special("sos_audio")

    def accepts(self, ex: Example) -> bool:
        return ex.kind in self.kinds and ex.info.get("mixture_type") in ROLES

    def draw(self, src, rng, split, ex: Example):
        """One of the two sources, and its target token."""
        j = int(rng.integers(2))
        return src.source_of(ex, j), {"mixture": ex, "target": ROLES[ex.info["mixture_type"]][j]}


register(Separate())
