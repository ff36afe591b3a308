"""Music continuation (MusicGen's ``generate_continuation``): ``bos <continue> [prompt frames] -> [next frames]``.

Training crops a prompt and the frames that follow it from a music segment; the prompt carries no loss.
The module is ``continue_`` because ``continue`` is a Python keyword; the task, the CLI command and the
vocabulary's task id are ``continue``.
"""

from __future__ import annotations

import numpy as np

from tokenlm.errors import TokenlmError

from .base import CodecTarget, Example, TaskContext, register

PROMPT_SECONDS = (2.0, 4.0)  # prompt lengths drawn in training
TARGET_SECONDS = 5.0
UNCONDITIONAL = 0.1  # share of training examples without a prompt: what classifier-free guidance contrasts with


class Continue(CodecTarget):
    name = "continue"
    kinds = ("music",)
    longest = 10.0  # segments are cropped, any length will do

    def condition(self, ctx: TaskContext, ex: Example, prompt: Example | None = None, **kw):
        """With ``prompt=None`` the unconditional layout (``bos <continue> sos_audio``), for guidance."""
        p = ctx.prompt(self.name)
        if prompt is not None:
            if prompt.codes.shape[-1] == 0:
                raise TokenlmError("music continuation needs a prompt of at least one frame")
            p.codec(ctx.codec_ids(prompt.codes))
        return p.special("sos_audio")

    def target(self, ctx, p, ex):
        return p.codec(ctx.codec_ids(ex.codes), loss=True)  # a crop: the music goes on, no eos

    def draw(self, src, rng: np.random.Generator, split: str, ex: Example):
        fr = src.frame_rate
        T = ex.codes.shape[-1]
        P = min(int(rng.uniform(*PROMPT_SECONDS) * fr), T // 3)
        N = min(int(TARGET_SECONDS * fr), T - P)
        s = int(rng.integers(0, T - P - N + 1))
        prompt = Example(codes=ex.codes[:, s : s + P], kind=ex.kind, labels=ex.labels, info=ex.info)
        target = Example(codes=ex.codes[:, s + P : s + P + N], kind=ex.kind, labels=ex.labels, info=ex.info)
        return target, {"prompt": None if rng.random() < UNCONDITIONAL else prompt}

    def accepts(self, ex: Example) -> bool:
        return ex.kind in self.kinds and ex.info.get("n_frames", 0) >= 150  # 3 s at 50 Hz or more


register(Continue())
