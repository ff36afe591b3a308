"""Prompts: segments of token streams -> model inputs, allowed id ranges per position, loss mask.

A task describes its example as segments::

    p = Prompt(vocab, n_streams=8)
    p.special("bos").task("tts").text(text_ids).special("sep").codec(code_ids, loss=True, end=True)
    x = p.build()          # PromptTensors: ids [K, S], loss_mask [K, S], allowed [K, S] (+ kinds)

Single-stream segments (specials, task ids, text, semantic units) put their token on stream 0 and
``pad`` on streams 1..K-1 (pad embeds to zero). A codec segment (``[K, T]`` vocabulary ids, i.e.
``vocab.codes_to_ids(codes)``) is laid out with a codebook pattern (``tokenlm.layout``, delay by
default); its filler steps hold ``fill`` and never count in the loss. With ``end=True`` the step after
the last frame holds ``eos`` on stream 0, so the model learns where audio stops.

``allowed[k, s]`` indexes ``kinds``, a tuple of names understood by ``kind_masks``; it says which ids
stream k may take at step s ("text" -> text pieces or eos, "codec.3" -> codebook 3, "fill" -> only
the fill id). Sampling uses the same names for the steps it generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from . import layout as L
from .errors import TokenlmError


class PromptTensors(NamedTuple):
    ids: torch.Tensor  # [K, S] int64 vocabulary ids
    loss_mask: torch.Tensor  # [K, S] bool: True where the token at this position is a training target
    allowed: torch.Tensor  # [K, S] int64 index into ``kinds``
    kinds: tuple[str, ...]


def kind_mask(vocab: Any, kind: str) -> torch.Tensor:
    """Bool ``[vocab.size]`` of the ids allowed for a position kind (see the module docstring)."""
    if kind in ("pad", "fill", "eos", "bos", "sep"):
        return vocab.mask(f"special:{kind}")
    if kind == "any":
        m = torch.zeros(vocab.size, dtype=torch.bool)
        m[: vocab.n_used] = True
        return m
    if kind in ("text", "semantic"):
        return vocab.mask(kind, "special:eos")
    if kind == "codec.0":
        return vocab.mask("codec.0", "special:eos")
    if kind.startswith("codec."):
        return vocab.mask(kind)
    if kind in ("task", "tasks"):
        return vocab.mask("tasks")
    if kind == "lang":
        return vocab.mask("lang")
    if kind == "modality":
        return vocab.mask("modality")
    raise TokenlmError(f"unknown position kind {kind!r}")


def kind_masks(vocab: Any, kinds: tuple[str, ...]) -> torch.Tensor:
    """Bool ``[len(kinds), vocab.size]``."""
    return torch.stack([kind_mask(vocab, k) for k in kinds])


@dataclass
class Segment:
    kind: str  # "special" | "task" | "modality" | "lang" | "text" | "semantic" | "codec"
    tokens: torch.Tensor  # [T] (single stream) or [K, T] (codec), vocabulary ids
    loss: bool = False
    end: bool = False  # codec only: an eos step after the last frame


@dataclass
class Prompt:
    """An ordered list of segments for a model that reads ``n_streams`` streams."""

    vocab: Any
    n_streams: int = 1
    pattern: str = "delay"
    segments: list[Segment] = field(default_factory=list)

    def add(self, kind: str, tokens: Any, loss: bool = False, end: bool = False) -> Prompt:
        t = torch.as_tensor(tokens, dtype=torch.long)
        if kind == "codec":
            if t.dim() != 2 or t.shape[0] != self.n_streams:
                raise TokenlmError(f"codec segment must be [{self.n_streams}, T] ids, got {tuple(t.shape)}")
        elif t.dim() != 1:
            raise TokenlmError(f"{kind} segment must be a 1-D list of ids, got shape {tuple(t.shape)}")
        self.segments.append(Segment(kind, t, loss, end))
        return self

    def special(self, name: str, loss: bool = False) -> Prompt:
        return self.add("special", [self.vocab.special(name)], loss)

    def task(self, name: str) -> Prompt:
        return self.add("task", [self.vocab.task(name)])

    def modality(self, name: str) -> Prompt:
        """A stream-kind id (``speech``, ``music``, ``sound``...), e.g. which source a separation keeps."""
        return self.add("modality", [self.vocab.modality(name)])

    def language(self, code: str, loss: bool = False) -> Prompt:
        return self.add("lang", [self.vocab.language(code)], loss)

    def text(self, ids: Any, loss: bool = False) -> Prompt:
        return self.add("text", ids, loss)

    def semantic(self, ids: Any, loss: bool = False) -> Prompt:
        return self.add("semantic", ids, loss)

    def codec(self, ids: Any, loss: bool = False, end: bool = False) -> Prompt:
        return self.add("codec", ids, loss, end)

    def build(self) -> PromptTensors:
        kinds: dict[str, int] = {}
        parts = [self._single(s, kinds) if s.kind != "codec" else self._codec(s, kinds) for s in self.segments]
        if not parts:
            raise TokenlmError("empty prompt")
        ids, mask, allowed = (torch.cat([p[i] for p in parts], dim=1) for i in range(3))
        return PromptTensors(ids, mask, allowed, tuple(kinds))

    # ------------------------------------------------------------------ per-segment layout
    def _single(self, seg: Segment, kinds: dict[str, int]):
        K, T = self.n_streams, seg.tokens.shape[0]
        ids = torch.full((K, T), self.vocab.pad, dtype=torch.long)
        ids[0] = seg.tokens
        mask = torch.zeros(K, T, dtype=torch.bool)
        mask[0] = seg.loss
        kind = {"special": "any", "task": "task"}.get(seg.kind, seg.kind)
        allowed = torch.full((K, T), _kind_id(kinds, "pad"), dtype=torch.long)
        allowed[0] = _kind_id(kinds, kind)
        return ids, mask, allowed

    def _codec(self, seg: Segment, kinds: dict[str, int]):
        K, T = seg.tokens.shape
        pat = L.make_pattern(self.pattern, K, T + int(seg.end))
        codes = seg.tokens
        if seg.end:  # one extra frame: eos on stream 0, fill on the others
            extra = torch.full((K, 1), self.vocab.special("fill"), dtype=torch.long)
            extra[0] = self.vocab.eos
            codes = torch.cat([codes, extra], dim=1)
        ids = L.build(codes[None], pat, fill=self.vocab.special("fill"))[0]
        valid = pat.valid()
        if seg.end:  # the extra frame's fill slots are fillers too
            src_t = pat.index.clamp(min=0) % pat.n_frames
            src_q = pat.index.clamp(min=0) // pat.n_frames
            valid = valid & ~((src_t == T) & (src_q > 0))
        ids = ids.masked_fill(~valid, self.vocab.special("fill"))
        if pat.n_streams != self.n_streams:  # flatten: one stream carrying every codebook
            raise TokenlmError("a codec segment in a multi-stream prompt needs a delay or parallel pattern")
        allowed = torch.stack([torch.full((pat.n_steps,), _kind_id(kinds, f"codec.{k}")) for k in range(K)])
        allowed = allowed.masked_fill(~valid, _kind_id(kinds, "fill"))
        return ids, valid & seg.loss, allowed


def _kind_id(kinds: dict[str, int], name: str) -> int:
    return kinds.setdefault(name, len(kinds))


def collate(items: list[PromptTensors], pad_id: int, max_len: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad prompts into a training batch: ``inputs``/``targets``/``loss_mask`` ``[B, K, S-1]``.

    ``targets[:, :, s]`` is the token at ``s + 1``; ``loss_mask`` comes from the target positions.
    """
    S = max(p.ids.shape[1] for p in items)
    if max_len is not None:
        S = min(S, max_len + 1)
    K = items[0].ids.shape[0]
    ids = torch.full((len(items), K, S), pad_id, dtype=torch.long)
    mask = torch.zeros(len(items), K, S, dtype=torch.bool)
    for i, p in enumerate(items):
        n = min(p.ids.shape[1], S)
        ids[i, :, :n] = p.ids[:, :n]
        mask[i, :, :n] = p.loss_mask[:, :n]
    return {"inputs": ids[:, :, :-1], "targets": ids[:, :, 1:], "loss_mask": mask[:, :, 1:]}
