"""Multitask batches: rows of task examples drawn from the corpus shards by the task mixture weights.

The shard root (``tokenlm tokenize --corpus -o ROOT``) holds one shard folder per corpus part and the
sentencepiece model ``text.model`` trained on the training transcripts. ``MultitaskSource(cfg).batch(i,
split)`` is a pure function of ``(seed, i, split)`` -- the data position of a resumed run is its step
count -- and packs whole examples into rows of ``seq_len + 1`` positions (an example never straddles two
rows; the rest of a row is padding without loss). Splits follow the corpus: eval speakers, tracks and
sounds are never drawn for training.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tokenlm.data import TEXT_MODEL, Shards
from tokenlm.errors import TokenlmError
from tokenlm.utils import cache_dir, log
from tokenlm.vocab import TextTokenizer, Vocab

from .base import Example, TaskContext, get_task, pick


def shard_root(path: str) -> Path:
    folder = Path(path)
    return folder if folder.is_absolute() else cache_dir() / folder


def open_parts(root: Path) -> dict[str, Shards]:
    """The shard folders under ``root`` by part name; they must share one codec."""
    parts = {f.name: Shards(f) for f in sorted(root.iterdir()) if (f / "meta.json").is_file()} if root.is_dir() else {}
    if not parts:
        raise TokenlmError(f"{root}: no token shards (run `tokenlm tokenize --corpus -o {root}`)")
    codecs = {(s.meta["codec"], s.meta["n_q"], s.meta["codebook_size"]) for s in parts.values()}
    if len(codecs) != 1:
        raise TokenlmError(f"{root}: shard folders were made with different codecs: {sorted(codecs)}")
    return parts


def to_example(info: dict, codes: torch.Tensor) -> Example:
    """A shard item's codes and manifest fields as the tasks see them."""
    return Example(
        codes=codes,
        text=info.get("text"),
        language=info.get("language"),
        speaker=info.get("speaker"),
        kind=info.get("kind"),
        labels=tuple(info.get("labels") or ()),
        info=info,
    )


class MultitaskSource:
    """``batch(index, split) -> {"inputs", "targets", "loss_mask"}`` of mixed task examples, plus the
    vocabulary (``vocab``), the task context (``ctx``) and the text model to save beside the LM."""

    def __init__(self, cfg):
        self.cfg, self.d = cfg, cfg.data
        root = shard_root(self.d.shards)
        self.parts = open_parts(root)
        meta = next(iter(self.parts.values())).meta
        self.n_q = min(self.d.n_q or meta["n_q"], meta["n_q"])
        self.frame_rate = float(meta["frame_rate"])
        self.text_model = root / TEXT_MODEL
        if not self.text_model.is_file():
            raise TokenlmError(f"{root}: no {TEXT_MODEL} (run `tokenlm tokenize --corpus -o {root}`)")
        import sentencepiece as spm

        text_size = spm.SentencePieceProcessor(model_file=str(self.text_model)).get_piece_size()
        languages = sorted({it["language"] for s in self.parts.values() for it in s.index if it.get("language")})
        codec = SimpleNamespace(n_q=self.n_q, codebook_size=meta["codebook_size"])
        self.vocab = Vocab.build(text_size, codec=codec, languages=languages)
        self.ctx = TaskContext(self.vocab, TextTokenizer(self.text_model, self.vocab), self.n_q, self.d.pattern)
        if not self.d.tasks:
            raise TokenlmError("data.tasks is empty: give each task its share of the rows")
        self.tasks = {name: get_task(name) for name in self.d.tasks}
        self.weights = np.array([float(w) for w in self.d.tasks.values()])
        self.weights /= self.weights.sum()
        self._index_items()

    # ------------------------------------------------------------------ which clips each task may use
    def _index_items(self) -> None:
        """Per split and task, the (part, item) pairs it may draw; per split and speaker, voice prompts;
        the sources of each mixture (``<part>_sources`` shard folders)."""
        prompt_frames = (1.0 * self.frame_rate, self.d.max_prompt_seconds * self.frame_rate)
        self.items = {s: defaultdict(list) for s in ("train", "eval")}
        self.voices = {s: defaultdict(list) for s in ("train", "eval")}
        self.sources: dict[str, dict[int, tuple[str, int]]] = defaultdict(dict)
        for pname, shards in self.parts.items():
            for i, it in enumerate(shards.index):
                if "source_of" in it:  # a mixture's source, not a clip of its own
                    self.sources[it["source_of"]][int(it["source_index"])] = (pname, i)
                    continue
                split = it.get("split", "train")
                ex = self._light(it)
                for name, task in self.tasks.items():
                    if it["n_frames"] <= task.longest * self.d.seq_len and task.accepts(ex):
                        self.items[split][name].append((pname, i))
                speech = ex.kind in ("speech_real", "speech_synthetic")
                if speech and ex.speaker and ex.text and prompt_frames[0] <= it["n_frames"] <= prompt_frames[1]:
                    self.voices[split][ex.speaker].append((pname, i))
        for split in ("train", "eval"):
            if "clone" in self.tasks:  # only speakers with a voice prompt besides the target itself
                self.items[split]["clone"] = [
                    (p, i) for p, i in self.items[split]["clone"]
                    if len(self.voices[split][self.parts[p].index[i]["speaker"]]) >= 2
                ]
            if "separate" in self.tasks:  # only mixtures whose sources were tokenized
                self.items[split]["separate"] = [
                    (p, i) for p, i in self.items[split]["separate"] if len(self.sources[self.parts[p].index[i]["id"]]) == 2
                ]
        for name in self.tasks:
            if not self.items["train"][name]:
                raise TokenlmError(f"no training clips for task {name!r} in {shard_root(self.d.shards)}")
        log.info(
            "multitask data (train/eval examples): %s",
            ", ".join(f"{n} {len(self.items['train'][n])}/{len(self.items['eval'][n])}" for n in self.tasks),
        )

    @staticmethod
    def _light(info: dict) -> Example:
        """The fields task filters look at, without reading codes."""
        return to_example(info, torch.empty(0, 0, dtype=torch.long))

    def example(self, part: str, i: int) -> Example:
        item = self.parts[part][i]
        return to_example(item.info, item.codes)

    def voice_for(self, rng: np.random.Generator, split: str, ex: Example) -> Example:
        """A voice prompt for ``ex``: another short utterance of its speaker, with its transcript."""
        voices = [v for v in self.voices[split][ex.speaker] if self.parts[v[0]].index[v[1]]["id"] != ex.info.get("id")]
        return self.example(*pick(rng, voices))

    def source_of(self, mixture: Example, j: int) -> Example:
        """Source ``j`` of a corpus mixture (0: the target as mixed, 1: the interferer)."""
        src = self.example(*self.sources[mixture.info["id"]][j])
        return Example(codes=src.codes, kind=mixture.kind, info=src.info)

    # ------------------------------------------------------------------ batches
    def prompt(self, rng: np.random.Generator, split: str, task: str | None = None):
        """One training example (``PromptTensors``) of ``task`` (by the mixture weights when None)."""
        name = task or list(self.tasks)[int(rng.choice(len(self.tasks), p=self.weights))]
        items = self.items[split][name] or self.items["train"][name]
        t = self.tasks[name]
        ex, kw = t.draw(self, rng, split, self.example(*pick(rng, items)))
        return t.example(self.ctx, ex, **kw).build()

    def save_extras(self, folder: Path) -> None:
        """Beside a saved LM: the text model its text ids come from (``tokenizer.model``)."""
        from tokenlm.utils import atomic_write_bytes

        atomic_write_bytes(Path(folder) / "tokenizer.model", self.text_model.read_bytes())

    def batch(self, index: int, split: str = "train", task: str | None = None) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, index, 0 if split == "train" else 1])
        L, K = self.d.seq_len + 1, self.n_q
        ids = torch.full((self.d.batch_size, K, L), self.vocab.pad, dtype=torch.long)
        mask = torch.zeros(self.d.batch_size, K, L, dtype=torch.bool)
        for row in range(self.d.batch_size):
            fill, misses = 0, 0
            while misses < 3:
                pt = self.prompt(rng, split, task)
                n = pt.ids.shape[1]
                if n > L - fill:
                    misses += 1  # too long for what is left of the row: try another, then give up
                    continue
                ids[row, :, fill : fill + n] = pt.ids
                mask[row, :, fill : fill + n] = pt.loss_mask
                fill += n
        return {"inputs": ids[:, :, :-1], "targets": ids[:, :, 1:], "loss_mask": mask[:, :, 1:]}
