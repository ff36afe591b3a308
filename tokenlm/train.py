"""``tokenlm train lm``: the token LM's recipe for the shared training loop (:mod:`tokenlm.training`).

A step is the mean cross-entropy of ``grad_accum`` micro-batches; AdamW without weight decay on norms and the
embedding; warm-up then cosine decay to ``max_steps``; bf16 autocast where it is native (``precision``).
Every batch is a pure function of ``(seed, batch index)``, so the data position is just the step count and a
resumed run continues the same loss curve. ``model/`` is a model folder that ``tokenlm.pretrained.load`` reads.

Run on many GPUs with ``accelerate launch -m tokenlm.cli train lm --config lm/base`` (see
configs/lm/base.yaml for FSDP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import training
from .config import load_config
from .errors import TokenlmError
from .model import TokenLM, TokenLMConfig, config_for_vocab, lm_loss
from .prompt import Prompt, collate
from .training import LoopConfig, OptimConfig, Recipe, make_optimizer
from .utils import cache_dir, log
from .vocab import Vocab


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic" (tests, benches), "shards" (from `tokenlm tokenize`) or "multitask"
    shards: str = ""  # shard folder (relative: under ~/.cache/tokenlm)
    seq_len: int = 256  # positions per row
    batch_size: int = 8  # rows per micro-batch (per process)
    pattern: str = "delay"
    n_q: int = 0  # codebooks the LM models (the first n_q of the shards'); 0: all of them
    # synthetic token streams: sizes of the pretend tokenizers
    synthetic_n_q: int = 2
    synthetic_codebook_size: int = 64
    text_size: int = 0  # text pieces (0 when no sentencepiece model is used)
    # multitask: the share of rows of each task (names of tokenlm.tasks), and the longest voice prompt
    tasks: dict = field(default_factory=dict)
    max_prompt_seconds: float = 4.0


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    name: str = "lm"
    model: TokenLMConfig = field(default_factory=TokenLMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW 3e-4, betas (0.9, 0.95), decay 0.1, clip 1
    max_steps: int = 10000
    eval_every: int = 200
    eval_batches: int = 4


# --------------------------------------------------------------------------- data


class BatchSource:
    """``batch(index, split) -> {"inputs", "targets", "loss_mask"}``, a pure function of its arguments."""

    def __new__(cls, cfg: TrainConfig):
        if cfg.data.source == "multitask":  # task examples from the corpus shards (tokenlm.tasks.mixture)
            from .tasks.mixture import MultitaskSource

            return MultitaskSource(cfg)
        return super().__new__(cls)

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.d = cfg, cfg.data
        if self.d.source == "synthetic":
            self.shards = None
            tok = SimpleNamespace(n_q=self.d.synthetic_n_q, codebook_size=self.d.synthetic_codebook_size)
            self.vocab = Vocab.build(self.d.text_size, codec=tok)
        elif self.d.source == "shards":
            from .data import Shards

            folder = Path(self.d.shards)
            self.shards = Shards(folder if folder.is_absolute() else cache_dir() / folder)
            m = self.shards.meta
            sem = SimpleNamespace(n_q=1, codebook_size=m["semantic_size"]) if "semantic_size" in m else None
            self.n_q = min(self.d.n_q or m["n_q"], m["n_q"])
            self.vocab = Vocab.build(
                self.d.text_size,
                semantic=sem,
                codec=SimpleNamespace(n_q=self.n_q, codebook_size=m["codebook_size"]),
            )
            self.split_items = {
                s: [i for i, it in enumerate(self.shards.index) if it.get("split", "train") == s]
                for s in ("train", "eval")
            }
            if not self.split_items["train"]:
                raise TokenlmError(f"{self.shards.folder}: no training items")
        else:
            raise TokenlmError(f"unknown data source {self.d.source!r} (synthetic or shards)")
        self.frames = self.d.seq_len - 2 - (self.vocab.n_q - 1) - 1  # bos, task, delay, eos

    def batch(self, index: int, split: str = "train") -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, index, 0 if split == "train" else 1])
        rows = [self._row(rng, split) for _ in range(self.d.batch_size)]
        return collate(rows, self.vocab.pad, max_len=self.d.seq_len)

    def _row(self, rng: np.random.Generator, split: str):
        codes = self._synthetic(rng) if self.shards is None else self._from_shards(rng, split)
        p = Prompt(self.vocab, self.vocab.n_q, self.d.pattern).special("bos").task("lm")
        return p.codec(self.vocab.codes_to_ids(codes[None])[0], loss=True, end=True).build()

    def _synthetic(self, rng: np.random.Generator) -> torch.Tensor:
        """A repeated random motif per codebook: learnable by in-context copying."""
        K, C = self.d.synthetic_n_q, self.d.synthetic_codebook_size
        period = int(rng.integers(2, 9))
        motif = rng.integers(0, C, size=(K, period))
        T = int(rng.integers(self.frames // 2, self.frames + 1))
        return torch.from_numpy(np.tile(motif, (1, -(-T // period)))[:, :T].astype(np.int64))

    def _from_shards(self, rng: np.random.Generator, split: str) -> torch.Tensor:
        items = self.split_items[split] or self.split_items["train"]
        codes = self.shards[int(items[int(rng.integers(len(items)))])].codes[: self.n_q]
        T = codes.shape[1]
        if T > self.frames:  # a random crop keeps long clips useful
            s = int(rng.integers(0, T - self.frames + 1))
            codes = codes[:, s : s + self.frames]
        return codes


# --------------------------------------------------------------------------- recipe


class LMRecipe(Recipe):
    kind = "lm"
    log_keys = ("lm/loss",)
    curves = {"loss (nats/token)": ("lm/loss", "eval/*")}  # eval/<task> too, for multitask data

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.data = BatchSource(cfg)

    def build(self) -> tuple[TokenLM, torch.optim.Optimizer]:
        model = TokenLM(config_for_vocab(self.cfg.model, self.data.vocab))
        model.vocab = self.data.vocab
        # no weight decay on norms and the embedding (GPT-2/nanoGPT practice)
        named = list(model.named_parameters())
        decay = [p for n, p in named if p.dim() >= 2 and not n.startswith("embed")]
        rest = [p for n, p in named if p.dim() < 2 or n.startswith("embed")]
        groups = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
        return model, make_optimizer(groups, self.cfg.optim)

    @property
    def model_cfg(self) -> TokenLMConfig:
        return self.loop.raw_model.cfg

    def start(self, init: str | None) -> None:
        """A new run: from ``init``'s tensors whose names and shapes match; with no ``init``, the bundled model
        this config trains (same run name, same architecture and vocabulary) is continued: its step count, hours
        and learning-rate schedule go on (the training state stays in the cache, the weights in the repo)."""
        from .pretrained import load, registry

        if init == "none":
            return
        if init:
            src, own = load(init).state_dict(), self.loop.raw_model.state_dict()
            same = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
            self.loop.raw_model.load_state_dict(same, strict=False)
            log.info("warm start from %s: %d/%d tensors", init, len(same), len(own))
            return
        for name in registry():
            bundled = load(name) if registry()[name].get("kind") == "lm" else None
            meta = getattr(bundled, "pretrained_meta", {}) or {}
            if bundled is None or meta.get("name") != self.cfg.name:
                continue
            if bundled.cfg != self.model_cfg or bundled.vocab.to_dict() != self.data.vocab.to_dict():
                log.info("training from scratch: the bundled %s has another architecture or vocabulary", name)
                return
            self.loop.raw_model.load_state_dict(bundled.state_dict())
            self.loop.continue_from(int(meta.get("step", 0)), float(meta.get("train_hours", 0.0)) * 3600)
            log.info("continuing the bundled %s at step %d", name, self.loop.step)
            return

    def loss(self, index: int) -> tuple[torch.Tensor, dict[str, float]]:
        b = {k: v.to(self.loop.acc.device) for k, v in self.data.batch(index).items()}
        with self.loop.autocast():
            out = self.loop.model(b["inputs"])
        losses = lm_loss(out, b["targets"], b["loss_mask"], self.model_cfg)
        return losses["lm/loss"], {k: v.item() for k, v in losses.items()}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out loss; for multitask data also per task (``eval/<task>``), so the tasks' curves can be
        put beside each other."""
        acc = self.loop.acc
        model.eval()
        tasks = list(getattr(self.data, "tasks", None) or [None])
        per = max(1, self.cfg.eval_batches // len(tasks))
        out, means = {}, []
        for task in tasks:
            losses = []
            for i in range(per):
                kw = {"task": task} if task else {}
                b = self.data.batch(i * acc.num_processes + acc.process_index, "eval", **kw)
                b = {k: v.to(acc.device) for k, v in b.items()}
                with acc.autocast():
                    losses.append(
                        lm_loss(model(b["inputs"]), b["targets"], b["loss_mask"], self.model_cfg)["lm/loss"].item()
                    )
            mean = acc.reduce(torch.tensor([float(np.mean(losses))], device=acc.device), reduction="mean").item()
            means.append(mean)
            if task:
                out[f"eval/{task}"] = mean
        out["eval/loss"] = float(np.mean(means))
        return out

    def export(self, folder: Path, weights: dict[str, torch.Tensor]) -> None:
        meta = {
            "step": self.loop.step,
            "name": self.cfg.name,
            "seq_len": self.cfg.data.seq_len,
            "train_hours": round(self.loop.train_seconds / 3600, 3),
        }
        text_model = getattr(self.data, "text_model", None)
        model = self.loop.raw_model
        model.save(folder, self.data.vocab, text_model, meta, state_dict=weights, pattern=self.cfg.data.pattern)
        if hasattr(self.data, "save_extras"):  # files the data source keeps beside the model
            self.data.save_extras(folder)


def train(
    cfg: TrainConfig,
    out: Path,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    fresh: bool = False,
    init: str | None = None,
) -> training.Trainer:
    """Train ``max_steps`` more steps (up to ``cfg.max_steps``) or for ``max_minutes``; resumes from ``out``."""
    return training.train(LMRecipe(cfg), out, max_steps, max_minutes, fresh, init)


def cli(args) -> int:
    cfg = load_config(TrainConfig, args.config)
    if args.manifest:  # for the LM, a token shard folder (from `tokenlm tokenize`)
        cfg = replace(cfg, data=replace(cfg.data, source="shards", shards=str(Path(args.manifest).resolve())))
    cfg = replace(cfg, seed=args.seed if args.seed else cfg.seed)
    out = Path(args.out) if args.out else cache_dir() / "runs" / cfg.name
    trainer = train(cfg, out, args.max_steps, args.max_minutes, args.fresh, args.init)
    if trainer.acc.is_main_process:
        last = trainer.history[-1] if trainer.history else {}
        print(json.dumps({"run": str(out), "step": trainer.step, **{k: v for k, v in last.items() if "/" in k}}))
    return 0
