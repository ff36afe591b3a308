"""One id space for every token the LM sees.

Ranges, in order (each a half-open ``[start, stop)`` interval of ids)::

    specials   pad, bos, eos, sep, mask, fill, unk, ...   (fixed names, ``SPECIALS``)
    tasks      one id per task                               (``TASKS``; the names of ``tokenlm.tasks``)
    modality   one id per stream kind                        (``MODALITIES``)
    lang       one id per language of the training corpus     (ISO 639-1 codes, listed in the spec)
    text       the pieces of a sentencepiece model           (size from the model)
    semantic   the units of the semantic tokenizer           (n_q * codebook_size of that tokenizer)
    codec.0 .. codec.{K-1}  one range per codec codebook     (codebook_size of the codec, K = n_q)

Nothing is restated by hand: ``Vocab.build(text_size, semantic=tok, codec=tok)`` reads ``n_q`` and
``codebook_size`` from the tokenizer objects. The spec (``to_dict``) is saved beside a model so a
checkpoint always decodes with the ranges it was trained on.

Example::

    >>> v = Vocab.build(text_size=100, codec=FakeTok(n_q=2, codebook_size=8))
    >>> v.range("codec.1")           # Range(name='codec.1', start=..., size=8)
    >>> v.codes_to_ids(codes)        # codes [B, 2, T] in 0..7 -> ids [B, 2, T] in the codec ranges
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import TokenlmError

SPECIALS = (
    "pad",
    "bos",
    "eos",
    "sep",
    "mask",
    "fill",
    "unk",
    "sos_audio",
    "eos_audio",
    "sos_text",
    "eos_text",
)
# one name per task everywhere: CLI command = module under tasks/ = task id here ("lm": plain audio modelling)
TASKS = ("lm", "asr", "tts", "clone", "separate", "caption", "continue")
MODALITIES = ("text", "semantic", "codec", "text_en", "speech", "music", "sound")
PAD_TO = 64  # the embedding/head size is padded to a multiple of this (faster matmuls)


@dataclass(frozen=True)
class Range:
    """A half-open id interval ``[start, start + size)``."""

    name: str
    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def __contains__(self, i: int) -> bool:
        return self.start <= i < self.stop


class Vocab:
    """The unified id space. Build with ``Vocab.build``; persist with ``to_dict`` / ``from_dict``."""

    def __init__(self, ranges: Iterable[Range], languages: Iterable[str] = ()):
        self.languages = tuple(languages)
        self.ranges: dict[str, Range] = {}
        pos = 0
        for r in ranges:
            if r.start != pos:
                raise TokenlmError(f"vocab range {r.name} starts at {r.start}, expected {pos}")
            self.ranges[r.name] = r
            pos = r.stop
        self.n_used = pos
        self.size = -(-pos // PAD_TO) * PAD_TO
        self.n_q = sum(1 for n in self.ranges if n.startswith("codec."))
        self.codebook_size = self.ranges["codec.0"].size if self.n_q else 0
        if self.ranges.get("lang", Range("lang", 0, 0)).size != len(self.languages):
            raise TokenlmError("the lang range and the language list differ in size")

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        text_size: int,
        semantic: Any | None = None,
        codec: Any | None = None,
        languages: Iterable[str] = (),
    ) -> Vocab:
        """Ranges from tokenizer objects (anything with ``n_q`` and ``codebook_size``) and the corpus's
        language codes (one id each; none for models without language tokens)."""
        languages = tuple(languages)
        sizes: list[tuple[str, int]] = [
            ("specials", len(SPECIALS)),
            ("tasks", len(TASKS)),
            ("modality", len(MODALITIES)),
        ]
        if languages:
            sizes.append(("lang", len(languages)))
        sizes.append(("text", int(text_size)))
        if semantic is not None:
            sizes.append(("semantic", int(semantic.n_q) * int(semantic.codebook_size)))
        if codec is not None:
            sizes += [(f"codec.{k}", int(codec.codebook_size)) for k in range(int(codec.n_q))]
        ranges, pos = [], 0
        for name, size in sizes:
            ranges.append(Range(name, pos, size))
            pos += size
        return cls(ranges, languages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranges": [[r.name, r.start, r.size] for r in self.ranges.values()],
            "specials": list(SPECIALS),
            "tasks": list(TASKS),
            "modalities": list(MODALITIES),
            "languages": list(self.languages),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocab:
        for key, names in (("specials", SPECIALS), ("tasks", TASKS), ("modalities", MODALITIES)):
            if list(d.get(key, names)) != list(names):
                raise TokenlmError(f"vocab spec lists different {key} than this version of tokenlm")
        return cls((Range(n, int(s), int(z)) for n, s, z in d["ranges"]), d.get("languages", ()))

    # ------------------------------------------------------------------ lookups
    def range(self, name: str) -> Range:
        if name not in self.ranges:
            raise TokenlmError(f"vocabulary has no range {name!r} (has {list(self.ranges)})")
        return self.ranges[name]

    def special(self, name: str) -> int:
        return self.range("specials").start + SPECIALS.index(name)

    def task(self, name: str) -> int:
        if name not in TASKS:
            raise TokenlmError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
        return self.range("tasks").start + TASKS.index(name)

    def language(self, code: str | None) -> int:
        """The id of a language code; an unknown or missing code raises (check ``has_language``)."""
        if code not in self.languages:
            raise TokenlmError(f"language {code!r} is not in this model's vocabulary ({', '.join(self.languages)})")
        return self.range("lang").start + self.languages.index(code)

    def has_language(self, code: str | None) -> bool:
        return code in self.languages

    def id_to_language(self, i: int) -> str | None:
        r = self.ranges.get("lang")
        return self.languages[i - r.start] if r is not None and i in r else None

    def modality(self, name: str) -> int:
        return self.range("modality").start + MODALITIES.index(name)

    @property
    def pad(self) -> int:
        return self.special("pad")

    @property
    def eos(self) -> int:
        return self.special("eos")

    def codec_range(self, k: int) -> Range:
        return self.range(f"codec.{k}")

    def mask(self, *names: str) -> torch.Tensor:
        """Bool ``[size]``: True on the ids of the named ranges (and ``special:eos``-style single ids)."""
        m = torch.zeros(self.size, dtype=torch.bool)
        for name in names:
            if name.startswith("special:"):
                m[self.special(name.split(":", 1)[1])] = True
            else:
                r = self.range(name)
                m[r.start : r.stop] = True
        return m

    # ------------------------------------------------------------------ conversions
    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codec codes ``[B, K, T]`` (0..codebook_size-1) -> ids ``[B, K, T]`` (codebook k's range)."""
        K = codes.shape[-2]
        if K > self.n_q:
            raise TokenlmError(f"codes have {K} codebooks, vocabulary has {self.n_q}")
        offsets = torch.tensor([self.codec_range(k).start for k in range(K)], dtype=torch.long)
        return codes.long() + offsets.view(K, 1)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of ``codes_to_ids``; ids outside codebook k's range raise."""
        K = ids.shape[-2]
        offsets = torch.tensor([self.codec_range(k).start for k in range(K)], dtype=torch.long).view(K, 1)
        codes = ids.long() - offsets
        if ((codes < 0) | (codes >= self.codebook_size)).any():
            raise TokenlmError("ids outside their codebook range cannot be decoded to codes")
        return codes

    def units_to_ids(self, units: torch.Tensor) -> torch.Tensor:
        """Semantic units (0..n-1, any shape) -> ids in the semantic range."""
        return units.long() + self.range("semantic").start

    def ids_to_units(self, ids: torch.Tensor) -> torch.Tensor:
        r = self.range("semantic")
        if ((ids < r.start) | (ids >= r.stop)).any():
            raise TokenlmError("ids outside the semantic range cannot be decoded to units")
        return ids.long() - r.start

    def text_to_ids(self, pieces: list[int] | torch.Tensor) -> torch.Tensor:
        """Sentencepiece piece ids -> vocabulary ids ``[N]``."""
        return torch.as_tensor(pieces, dtype=torch.long) + self.range("text").start

    def ids_to_text_pieces(self, ids: torch.Tensor) -> list[int]:
        r = self.range("text")
        return [int(i) - r.start for i in ids.flatten().tolist() if r.start <= int(i) < r.stop]

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{r.name}[{r.start}:{r.stop}]"
            for r in self.ranges.values()
            if not r.name[-1].isdigit() or r.name.endswith(".0")
        )
        return f"Vocab(size={self.size}, n_q={self.n_q}, {parts}, ...)"


# --------------------------------------------------------------------------- text pieces


def train_sentencepiece(
    texts: Iterable[str],
    out_prefix: str | os.PathLike,
    vocab_size: int = 2000,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
) -> Path:
    """Train a multilingual sentencepiece model on transcripts; returns the ``.model`` path.

    The pieces have no bos/eos/pad of their own (the vocabulary's specials play those parts);
    ``hard_vocab_limit=False`` lets a tiny corpus produce fewer pieces than asked instead of failing.
    """
    import sentencepiece as spm

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = [t.strip() for t in texts if t and t.strip()]
    if not lines:
        raise TokenlmError("no text to train the sentencepiece model on")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        hard_vocab_limit=False,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        minloglevel=2,
        num_threads=1,
    )
    return out_prefix.with_suffix(".model")


class TextTokenizer:
    """A sentencepiece model mapped into the vocabulary's text range."""

    def __init__(self, model_file: str | os.PathLike, vocab: Vocab):
        import sentencepiece as spm

        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.vocab = vocab
        if self.sp.get_piece_size() > vocab.range("text").size:
            raise TokenlmError(
                f"{model_file}: {self.sp.get_piece_size()} pieces do not fit the text range "
                f"({vocab.range('text').size})"
            )

    def encode(self, text: str) -> torch.Tensor:
        """Text -> vocabulary ids ``[N]`` int64."""
        return self.vocab.text_to_ids(self.sp.encode(text))

    def decode(self, ids: torch.Tensor) -> str:
        """Vocabulary ids (non-text ids are skipped) -> text."""
        return self.sp.decode(self.vocab.ids_to_text_pieces(ids))
