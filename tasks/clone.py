"""Zero-shot voice cloning, VALL-E's continuation layout:
``bos <clone> <lang> [prompt text] sep [text] sos_audio [prompt codec frames] -> [codec frames] eos``.

The prompt is another utterance of the target's speaker with its transcript; its frames carry no loss.
"""

from __future__ import annotations

from tokenlm.errors import TokenlmError

from .base import CodecTarget, Example, TaskContext, register


class Clone(CodecTarget):
    name = "clone"
    needs_text = True

    def condition(self, ctx: TaskContext, ex: Example, voice: Example | None = None, **kw):
        if voice is None or not voice.text:
            raise TokenlmError("voice cloning needs a voice prompt with its transcript")
        p = ctx.prompt(self.name, ex.language).text(ctx.text_ids(voice.text)).special("sep")
        return p.text(ctx.text_ids(ex.text)).special("sos_audio").codec(ctx.codec_ids(voice.codes))

    def accepts(self, ex: Example) -> bool:
        return super().accepts(ex) and ex.speaker is not None

    def draw(self, src, rng, split, ex):
        """The voice prompt: another short utterance of the same speaker."""
        return ex, {"voice": src.voice_for(rng, split, ex)}


register(Clone())
