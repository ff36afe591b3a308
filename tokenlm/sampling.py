"""Sampling from the token LM: temperature, top-k, top-p, per-stream allowed ranges, stop conditions,
classifier-free guidance, streaming of codec frames and sliding-window generation.

The core is ``decode_steps``: it prefills a KV cache with the prompt and then yields one step
(``[B, K]`` ids) at a time. A ``StepRule`` says, for each generated step, which ids each stream may
take and which streams are forced (fillers, pads, finished rows). Two rules cover the tasks:

* ``TokenRule``  -- one stream (text pieces, semantic units) until ``eos``;
* ``CodecRule``  -- K codebooks laid out with the delay pattern (``tokenlm.layout``) until stream 0
  says ``eos`` or ``max_frames`` is reached; ``stream_codec`` yields each frame once all its
  codebooks are known, so audio can be decoded while the rest is still generated.

Worked example (K = 3, delay): at generated step s, stream k carries frame ``s - k``; frame t is
complete after step ``t + 2``. When stream 0 samples ``eos`` at step s the audio has s frames; the
other streams run their remaining ``k`` steps and the generator stops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import TokenlmError
from .prompt import kind_mask
from .quant import int8_matmul, quantize_rows


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    cfg_scale: float = 1.0  # classifier-free guidance: logits_u + scale * (logits_c - logits_u); 1.0: off
    window: int = 0  # sliding window (positions kept in the cache); 0: the model's max_seq_len
    keep_prefix: int = 0  # prompt positions always kept when the window slides (task + conditioning)
    threads: int = 1  # torch threads while decoding (0: leave as is); batch-1 steps are too small to split,
    # and on a shared 2-core CPU two threads ran the small model 5x slower than one (tokenlm bench lm)


def filter_logits(logits: torch.Tensor, allowed: torch.Tensor | None, p: SamplingParams) -> torch.Tensor:
    """Mask disallowed ids, then apply temperature, top-k and top-p. ``logits [N, V]`` -> ``[N, V]`` float."""
    x = logits.float()
    if allowed is not None:
        x = x.masked_fill(~allowed, float("-inf"))
    if p.temperature > 0:
        x = x / p.temperature
    if p.top_k > 0 and p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        srt, idx = torch.sort(x, dim=-1, descending=True)
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum - srt.softmax(-1) > p.top_p  # keep the smallest prefix whose mass reaches top_p
        x = x.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return x


def sample(
    logits: torch.Tensor,
    allowed: torch.Tensor | None,
    p: SamplingParams,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One id per row of ``logits [N, V]``, never outside ``allowed [N, V]`` (bool). -> ``[N]`` int64."""
    x = filter_logits(logits, allowed, p)
    if p.temperature <= 0:
        return x.argmax(-1)
    return torch.multinomial(x.softmax(-1), 1, generator=generator).squeeze(-1)


# --------------------------------------------------------------------------- step rules


class StepRule:
    """Per generated step: allowed ids per stream and forced tokens; also decides when to stop."""

    def allowed(self, step: int) -> list[torch.Tensor | int]:
        """For each stream: a bool ``[V]`` mask (sample) or an int id (forced)."""
        raise NotImplementedError

    def update(self, step: int, tokens: torch.Tensor) -> torch.Tensor:
        """See the sampled ``[B, K]``; return them (rows already finished may be overwritten)."""
        return tokens

    def done(self) -> bool:
        raise NotImplementedError


class TokenRule(StepRule):
    """Single-stream generation of one kind ("text", "semantic", ...) until eos or ``max_tokens``."""

    def __init__(self, vocab, n_streams: int, batch: int, kind: str = "text", max_tokens: int = 256):
        self.mask, self.K, self.max_tokens = kind_mask(vocab, kind), n_streams, max_tokens
        self.pad, self.eos = vocab.pad, vocab.eos
        self.finished = torch.zeros(batch, dtype=torch.bool)
        self.n = 0

    def allowed(self, step):
        return [self.mask] + [self.pad] * (self.K - 1)

    def update(self, step, tokens):
        tokens[:, 0] = tokens[:, 0].masked_fill(self.finished, self.eos)
        self.finished |= tokens[:, 0] == self.eos
        self.n = step + 1
        return tokens

    def done(self):
        return bool(self.finished.all()) or self.n >= self.max_tokens


class CodecRule(StepRule):
    """K codebooks in the delay pattern; stream 0 may end the audio with eos."""

    def __init__(self, vocab, n_streams: int, batch: int, max_frames: int, allow_eos: bool = True):
        self.K, self.max_frames = n_streams, max_frames
        self.masks = [kind_mask(vocab, f"codec.{k}") for k in range(n_streams)]
        if not allow_eos:
            self.masks[0] = vocab.mask("codec.0")
        self.fill, self.eos = vocab.special("fill"), vocab.eos
        self.n_frames = torch.full((batch,), max_frames, dtype=torch.long)  # per row, lowered by eos
        self.last_step = -1

    def allowed(self, step):
        out: list[torch.Tensor | int] = []
        for k in range(self.K):
            t = step - k  # the frame stream k is on
            out.append(self.fill if t < 0 else self.masks[k])
        if step >= self.max_frames:
            out[0] = self.eos
        return out

    def update(self, step, tokens):
        B = tokens.shape[0]
        ended = (tokens[:, 0] == self.eos) & (self.n_frames == self.max_frames) & (step < self.max_frames)
        self.n_frames = torch.where(ended, torch.full((B,), step), self.n_frames)
        for k in range(self.K):  # past a row's last frame a stream only carries fill (stream 0: eos)
            past = (step - k) >= self.n_frames
            tokens[:, k] = tokens[:, k].masked_fill(past, self.eos if k == 0 else self.fill)
        self.last_step = step
        return tokens

    def done(self):
        return self.last_step >= int(self.n_frames.max()) + self.K - 1


# --------------------------------------------------------------------------- the decode loop


class _Context:
    """A prompt + generated steps, a KV cache over (a window of) them, and the last hidden state."""

    def __init__(self, model, prompt: torch.Tensor, p: SamplingParams):
        self.model, self.p = model, p
        self.window = p.window or model.cfg.max_seq_len
        self.prefix = prompt[:, :, : p.keep_prefix]
        self.history = [prompt]
        self._prefill(prompt)

    def _prefill(self, ids: torch.Tensor) -> None:
        self.cache = self.model.new_cache(ids.shape[0], max_len=self.window)
        self.last = self.model.hidden(ids, cache=self.cache)[:, -1]  # [B, dim]

    def push(self, tokens: torch.Tensor) -> None:
        """Feed one step ``[B, K]``; slides the window when the cache is full."""
        self.history.append(tokens[:, :, None])
        if self.cache.pos + 1 > self.window:
            seq = torch.cat(self.history, dim=2)
            keep = self.window // 2 - self.prefix.shape[2]
            if keep < 1:
                raise TokenlmError("keep_prefix leaves no room in the sliding window")
            self.history = [torch.cat([self.prefix, seq[:, :, -keep:]], dim=2)]
            self._prefill(self.history[0])
            return
        self.last = self.model.hidden(tokens[:, :, None], cache=self.cache)[:, -1]


class _Scorer:
    """Logits of the allowed ids only: the head rows of each mask, gathered once and reused.

    Scoring 1,025 rows (codebook 0 + eos) instead of the whole vocabulary keeps a decode step's
    weight traffic -- what bounds batch-1 decoding on a CPU -- close to the Transformer's own.
    """

    def __init__(self, model):
        self.model = model
        self.starts = (0,) + tuple(model.cfg.stream_starts)
        self.rows: dict[tuple[int, int], tuple] = {}
        self.int8 = getattr(model, "decode_precision", "fp32") == "int8"

    def _weights(self, k: int, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (k, id(mask))
        if key not in self.rows:
            if k == 0:
                ids = mask.nonzero().squeeze(1)
                w = self.model.head.weight[ids]
            else:
                start, C = self.starts[k], self.model.cfg.codebook_size
                local = mask[start : start + C].nonzero().squeeze(1)
                ids, w = local + start, self.model.stream_heads[k - 1][local]
            w = w.detach()
            if self.int8:  # the rows as int8 + per-row scales, like the blocks of a decoding_copy
                w = quantize_rows(w)
            self.rows[key] = (ids, w, mask)  # keep the mask alive: its id is the key
        return self.rows[key][:2]

    def logits(self, k: int, mask: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h [B, dim]`` -> logits ``[B, n_allowed]`` and the vocabulary id of each column."""
        ids, w = self._weights(k, mask)
        if self.int8:
            return int8_matmul(h, *w), ids
        return h @ w.T.to(h.dtype), ids


@torch.inference_mode()
def decode_steps(
    model,
    prompt: torch.Tensor,
    rule: StepRule,
    p: SamplingParams = SamplingParams(),
    uncond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_steps: int = 100_000,
) -> Iterator[torch.Tensor]:
    """Yield generated steps ``[B, K]`` (vocabulary ids) after ``prompt [B, K, S]``.

    ``uncond`` is the prompt without its condition (same B and K, any length) for classifier-free
    guidance with ``p.cfg_scale``; both run their own cache.
    """
    B, K, _ = prompt.shape
    if K != model.cfg.n_streams and K != 1:
        raise TokenlmError(f"prompt has {K} streams, model reads {model.cfg.n_streams}")
    with _threads(p.threads):
        cond = _Context(model, prompt, p)
        unc = _Context(model, uncond, p) if uncond is not None and p.cfg_scale != 1.0 else None
    scorer = _Scorer(model)
    for step in range(max_steps):
        with _threads(p.threads):
            tokens = _step(step, rule, scorer, cond, unc, p, generator, B, K)
        yield tokens
        if rule.done():
            return
        with _threads(p.threads):
            cond.push(tokens)
            if unc is not None:
                unc.push(tokens)


def _step(step, rule, scorer, cond, unc, p, generator, B, K) -> torch.Tensor:
    """Sample one step ``[B, K]`` from the contexts' last hidden states under ``rule``."""
    rules = rule.allowed(step)
    tokens = torch.empty(B, K, dtype=torch.long)
    for k, r in enumerate(rules):
        if isinstance(r, int):
            tokens[:, k] = r
            continue
        logits, ids = scorer.logits(k, r, cond.last)
        if unc is not None:
            logits_u, _ = scorer.logits(k, r, unc.last)
            logits = logits_u + p.cfg_scale * (logits - logits_u)
        tokens[:, k] = ids[sample(logits, None, p, generator)]
    return rule.update(step, tokens)


@contextlib.contextmanager
def _threads(n: int):
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def generate_tokens(
    model,
    prompt: torch.Tensor,
    kind: str = "text",
    max_tokens: int = 256,
    p: SamplingParams = SamplingParams(),
    **kw,
) -> list[torch.Tensor]:
    """Single-stream generation: per batch row, the ids before eos (``[N_b]`` each)."""
    B, K, _ = prompt.shape
    rule = TokenRule(model.vocab, K, B, kind, max_tokens)
    steps = torch.stack([s[:, 0] for s in decode_steps(model, prompt, rule, p, **kw)], dim=1)  # [B, N]
    out = []
    for row in steps:
        end = (row == model.vocab.eos).nonzero()
        out.append(row[: int(end[0])] if len(end) else row)
    return out


def stream_codec(
    model,
    prompt: torch.Tensor,
    max_frames: int,
    p: SamplingParams = SamplingParams(),
    allow_eos: bool = True,
    **kw,
) -> Iterator[torch.Tensor]:
    """Yield codec frames ``[B, K]`` (vocabulary ids) as soon as all K codebooks of a frame are known.

    Frames of rows that already ended hold ``fill``/``eos``; stop at the longest row.
    """
    B, K, _ = prompt.shape
    rule = CodecRule(model.vocab, K, B, max_frames, allow_eos)
    steps: list[torch.Tensor] = []
    for step, tokens in enumerate(decode_steps(model, prompt, rule, p, **kw)):
        steps.append(tokens)
        t = step - (K - 1)  # the frame completed by this step
        if 0 <= t < int(rule.n_frames.max()):
            yield torch.stack([steps[t + k][:, k] for k in range(K)], dim=1)


def generate_codec(
    model, prompt: torch.Tensor, max_frames: int, p: SamplingParams = SamplingParams(), **kw
) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames: codec codes ``[B, K, T]`` (0..codebook_size-1) and each row's frame count ``[B]``.

    Frames past a row's end are set to code 0 (cut them with the returned lengths).
    """
    frames = list(stream_codec(model, prompt, max_frames, p, **kw))
    if not frames:
        K = prompt.shape[1]
        return torch.zeros(prompt.shape[0], K, 0, dtype=torch.long), torch.zeros(prompt.shape[0], dtype=torch.long)
    ids = torch.stack(frames, dim=2)  # [B, K, T]
    lengths = torch.full((ids.shape[0],), ids.shape[2], dtype=torch.long)
    eos_rows = ids[:, 0] == model.vocab.eos
    for b in range(ids.shape[0]):
        hit = eos_rows[b].nonzero()
        if len(hit):
            lengths[b] = int(hit[0])
    K = ids.shape[1]
    starts = torch.tensor([model.vocab.codec_range(k).start for k in range(K)]).view(1, K, 1)
    codes = ids - starts
    valid = (codes >= 0) & (codes < model.vocab.codebook_size)
    return codes.masked_fill(~valid, 0), lengths
