"""Text to speech: ``bos <tts> <lang> [text] sos_audio -> [codec frames] eos``."""

from __future__ import annotations

from .base import CodecTarget, Example, TaskContext, register


class TTS(CodecTarget):
    name = "tts"
    needs_text = True

    def condition(self, ctx: TaskContext, ex: Example, **kw):
        return ctx.prompt(self.name, ex.language).text(ctx.text_ids(ex.text)).special("sos_audio")


register(TTS())
