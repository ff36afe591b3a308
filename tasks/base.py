"""Tasks: how an example becomes a prompt, and how generated tokens become the task's output.

Every task is a prompt layout in the one vocabulary (``tokenlm.vocab``): a start (``bos``, the task id,
a language id where the task has one), conditioning segments without loss, then the target segment with
loss. Training builds ``condition + target``; inference builds ``condition`` alone and lets the LM
generate the target. Because both go through the same ``Task.condition``, what the model is prompted with
at inference is exactly what it saw in training.

Layouts (``[...]`` = a stream of ids, ``->`` = the target, with loss)::

    asr       bos <asr> [codec frames of the audio] sos_text  ->  <lang> [text pieces] eos
    tts       bos <tts> <lang> [text] sos_audio               ->  [codec frames] eos
    clone     bos <clone> <lang> [prompt text] sep [text] sos_audio [prompt codec frames]  ->  [codec frames] eos
    separate  bos <separate> <speech|music|sound> [mixture codec frames] sos_audio  ->  [that source's frames] eos
    caption   bos <caption> [codec frames] sos_text        ->  [caption pieces] eos
    continue  bos <continue> [prompt codec frames]          ->  [the next frames]

Codec frames are laid out with the delay pattern (``tokenlm.layout``); a prompt's frames are a segment of
their own, so the target's codebooks start aligned, as they do when generation starts.

The registry ``TASKS`` maps the task names (= CLI commands = the vocabulary's task ids) to Task objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tokenlm.errors import TokenlmError
from tokenlm.prompt import Prompt
from tokenlm.sampling import StepRule
from tokenlm.prompt import kind_mask


@dataclass(frozen=True)
class Example:
    """One clip as the tasks see it: its tokens and what is known about it."""

    codes: torch.Tensor  # [K, T] codec codes (0..codebook_size-1), at least the LM's n_q codebooks
    text: str | None = None
    language: str | None = None
    speaker: str | None = None
    kind: str | None = None
    labels: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)


@dataclass
class TaskContext:
    """What building a prompt needs: the vocabulary, the text tokenizer, the codebooks the LM models."""

    vocab: Any  # tokenlm.vocab.Vocab
    text: Any  # tokenlm.vocab.TextTokenizer
    n_q: int
    pattern: str = "delay"

    def prompt(self, task: str, language: str | None = None) -> Prompt:
        """``bos <task> [<lang>]``: the start of every layout."""
        p = Prompt(self.vocab, self.n_q, self.pattern).special("bos").task(task)
        if language is not None:
            p.language(self.language(language))
        return p

    def language(self, code: str | None) -> str:
        """The language code as the vocabulary knows it (a region suffix such as ``en-us`` is dropped)."""
        if code is None:
            raise TokenlmError("a language is needed")
        base = code.split("-")[0].split("_")[0].lower()
        if not self.vocab.has_language(base):
            raise TokenlmError(f"language {code!r} is not one this model knows ({', '.join(self.vocab.languages)})")
        return base

    def codec_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[K', T]`` -> vocabulary ids of the first ``n_q`` codebooks ``[n_q, T]``."""
        if codes.shape[0] < self.n_q:
            raise TokenlmError(f"codes have {codes.shape[0]} codebooks, the LM needs {self.n_q}")
        return self.vocab.codes_to_ids(codes[: self.n_q][None])[0]

    def text_ids(self, text: str) -> torch.Tensor:
        ids = self.text.encode(text)
        if ids.numel() == 0:
            raise TokenlmError("empty text")
        return ids


SPEECH_KINDS = ("speech_real", "speech_synthetic")


class Task:
    """A prompted task. Subclasses set ``name`` and ``output`` and implement ``condition`` and ``target``;
    ``accepts`` and ``draw`` say which corpus clips make training examples and what else an example needs."""

    name: str = ""
    output: str = ""  # "text" or "codec": what the LM generates
    needs_text: bool = False  # training examples must have a transcript / caption
    kinds: tuple[str, ...] = SPEECH_KINDS  # corpus kinds the task trains on
    longest: float = 0.75  # longest clip, as a share of the row (the rest: text, prompts)

    def condition(self, ctx: TaskContext, ex: Example, **kw) -> Prompt:
        """The prompt without the target: what the model is given at inference."""
        raise NotImplementedError

    def target(self, ctx: TaskContext, p: Prompt, ex: Example) -> Prompt:
        """Append the target segment(s) (with loss) to ``p``."""
        raise NotImplementedError

    def example(self, ctx: TaskContext, ex: Example, **kw) -> Prompt:
        """A training example: condition + target."""
        return self.target(ctx, self.condition(ctx, ex, **kw), ex)

    def accepts(self, ex: Example) -> bool:
        """Whether a clip can be a training example of this task."""
        return ex.kind in self.kinds and (not self.needs_text or bool(ex.text and ex.text.strip()))

    def draw(self, src: Any, rng: np.random.Generator, split: str, ex: Example) -> tuple[Example, dict]:
        """The example and the other inputs of ``condition`` for a drawn clip (``src``: the batch source)."""
        return ex, {}


class TextTarget(Task):
    """Tasks whose output is text: ``[<lang>] [pieces] eos`` after ``sos_text``."""

    output = "text"
    needs_text = True
    says_language = True  # the first target token is the language (ASR); captions are English only

    def text_of(self, ex: Example) -> str:
        return ex.text

    def target(self, ctx: TaskContext, p: Prompt, ex: Example) -> Prompt:
        if self.says_language and ctx.vocab.has_language(ex.language):
            p.language(ex.language, loss=True)
        return p.text(ctx.text_ids(self.text_of(ex)), loss=True).special("eos", loss=True)


class CodecTarget(Task):
    """Tasks whose output is codec frames: the frames of ``ex`` and an eos step."""

    output = "codec"

    def target(self, ctx: TaskContext, p: Prompt, ex: Example) -> Prompt:
        return p.codec(ctx.codec_ids(ex.codes), loss=True, end=True)


class LangThenText(StepRule):
    """Decoding rule for text outputs: one language id first (where the task says its language and the
    vocabulary has languages), then text pieces until eos or ``max_tokens``."""

    def __init__(self, vocab, n_streams: int, batch: int, max_tokens: int = 200, language: bool = True):
        self.K, self.max_tokens = n_streams, max_tokens
        self.first = vocab.mask("lang") if vocab.languages and language else None
        self.text = kind_mask(vocab, "text")
        self.pad, self.eos = vocab.pad, vocab.eos
        self.finished = torch.zeros(batch, dtype=torch.bool)
        self.n = 0

    def allowed(self, step):
        first = step == 0 and self.first is not None
        return [self.first if first else self.text] + [self.pad] * (self.K - 1)

    def update(self, step, tokens):
        tokens[:, 0] = tokens[:, 0].masked_fill(self.finished, self.eos)
        self.finished |= tokens[:, 0] == self.eos
        self.n += 1
        return tokens

    def done(self):
        return bool(self.finished.all()) or self.n >= self.max_tokens


def split_language_and_text(vocab, ids: torch.Tensor) -> tuple[str | None, torch.Tensor]:
    """Generated ids of a text output -> (language code or None, the text ids before eos)."""
    ids = ids.flatten()
    lang = vocab.id_to_language(int(ids[0])) if ids.numel() else None
    if lang is not None:
        ids = ids[1:]
    end = (ids == vocab.eos).nonzero()
    return lang, ids[: int(end[0])] if len(end) else ids


def pick(rng: np.random.Generator, items: list) -> Any:
    return items[int(rng.integers(len(items)))]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    from . import asr, caption, clone, continue_, separate, tts  # noqa: F401  (each module registers its task)

    if name not in TASKS:
        raise TokenlmError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]
