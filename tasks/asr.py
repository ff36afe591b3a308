"""Speech recognition: ``bos <asr> [codec frames] sos_text -> <lang> [text] eos``.

The language is the first generated token (as in Whisper), so one model transcribes every language of
its corpus without being told which one it hears.
"""

from __future__ import annotations

from .base import Example, TaskContext, TextTarget, register


class ASR(TextTarget):
    name = "asr"

    def condition(self, ctx: TaskContext, ex: Example, **kw):
        return ctx.prompt(self.name).codec(ctx.codec_ids(ex.codes)).special("sos_text")


register(ASR())
