"""``tokenlm train lm``: train the token LM with accelerate (one CPU -> many GPUs, DDP; FSDP by config).

The loop is plain: for each optimizer step, ``grad_accum`` micro-batches (gradient sync only on the
last, through ``accelerator.no_sync``), mixed precision through ``accelerator.autocast``, clipping,
AdamW, linear warmup then cosine decay. Every batch is a pure function of ``(seed, global batch
index, rank)``, so the data position is just the step count: a resumed run (optimizer, scheduler,
step, RNG states and loss history restored from ``state.safetensors``) continues the same loss curve.
Checkpoints are written atomically every ``ckpt_minutes`` and at the end; ``losses.jsonl`` and
``curve.png`` hold the loss curves, ``model/`` a model folder that ``tokenlm.pretrained.load`` reads.

Run on many GPUs with ``accelerate launch -m tokenlm.cli train lm --config lm/base`` (see
configs/lm/base.yaml for FSDP).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .checkpoint import load_state, rng_state, save_state, set_rng_state
from .config import load_config, to_dict
from .errors import TokenlmError
from .model import TokenLM, TokenLMConfig, config_for_vocab, lm_loss
from .prompt import Prompt, collate
from .utils import StopRequest, atomic_write_text, cache_dir, log, resolve_precision
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
class TrainConfig:
    name: str = "lm"
    model: TokenLMConfig = field(default_factory=TokenLMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.95)
    warmup_steps: int = 100
    max_steps: int = 10000
    grad_accum: int = 1
    clip: float = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" | "auto" (bf16 where it is native: AVX-512 BF16 CPUs, GPUs)
    eval_every: int = 200
    eval_batches: int = 4
    log_every: int = 10
    ckpt_minutes: float = 5.0
    seed: int = 0


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


# --------------------------------------------------------------------------- optimisation


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: TokenLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and the embedding (GPT-2/nanoGPT practice)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embed")]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


@dataclass
class Run:
    cfg: TrainConfig
    out: Path
    acc: Any
    model: Any
    opt: torch.optim.Optimizer
    sched: Any
    data: BatchSource
    model_cfg: TokenLMConfig
    step: int = 0
    history: list[dict] = field(default_factory=list)


def build_run(cfg: TrainConfig, out: Path, init: str | None = None) -> Run:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # a second run in the same process may ask for another precision (the process group is kept)
    AcceleratorState._reset_state()
    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if resolve_precision("auto", "cuda" if torch.cuda.is_available() else "cpu") == "bf16" else "no"
    acc = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    data = BatchSource(cfg)
    torch.manual_seed(cfg.seed)
    model = TokenLM(config_for_vocab(cfg.model, data.vocab))
    if init:
        _warm_start(model, init)
    model.vocab = data.vocab
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    model, opt = acc.prepare(model, opt)  # the scheduler is stepped by hand: once per optimizer step
    return Run(cfg, out, acc, model, opt, sched, data, acc.unwrap_model(model).cfg)


def _warm_start(model: TokenLM, init: str) -> None:
    from .pretrained import load

    src = load(init).state_dict()
    own = model.state_dict()
    same = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(same, strict=False)
    log.info("warm start from %s: %d/%d tensors", init, len(same), len(own))


def train_step(run: Run) -> dict[str, float]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the logged numbers."""
    cfg, acc = run.cfg, run.acc
    run.model.train()
    total = 0.0
    for micro in range(cfg.grad_accum):
        index = (run.step * cfg.grad_accum + micro) * acc.num_processes + acc.process_index
        b = run.data.batch(index)
        last = micro == cfg.grad_accum - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(run.model)
        with sync, acc.autocast():
            out = run.model(b["inputs"].to(acc.device))
            loss = lm_loss(out, b["targets"].to(acc.device), b["loss_mask"].to(acc.device), run.model_cfg)
            acc.backward(loss["lm/loss"] / cfg.grad_accum)
        total += loss["lm/loss"].item() / cfg.grad_accum
    grad_norm = acc.clip_grad_norm_(run.model.parameters(), cfg.clip)
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    run.step += 1
    # the mean over processes, so every rank logs (and checkpoints) the same curve
    mean = acc.reduce(torch.tensor([total], device=acc.device), reduction="mean").item()
    return {
        "step": run.step,
        "lm/loss": mean,
        "lr": run.sched.get_last_lr()[0],
        "grad_norm": float(grad_norm),
    }


@torch.no_grad()
def evaluate(run: Run) -> float:
    run.model.eval()
    losses = []
    for i in range(run.cfg.eval_batches):
        b = run.data.batch(i * run.acc.num_processes + run.acc.process_index, split="eval")
        with run.acc.autocast():
            out = run.model(b["inputs"].to(run.acc.device))
            tgt, mask = b["targets"].to(run.acc.device), b["loss_mask"].to(run.acc.device)
            losses.append(lm_loss(out, tgt, mask, run.model_cfg)["lm/loss"].item())
    mean = torch.tensor([float(np.mean(losses))], device=run.acc.device)
    return run.acc.reduce(mean, reduction="mean").item()


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(run: Run) -> None:
    """Training state + model folder + loss curves, written by the main process, atomically."""
    acc = run.acc
    acc.wait_for_everyone()
    weights = acc.get_state_dict(run.model)  # a collective under FSDP: every rank must call it
    if acc.is_main_process:
        model = acc.unwrap_model(run.model)
        state = {
            "model": weights,
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "step": run.step,
            "batches_seen": run.step * run.cfg.grad_accum * acc.num_processes,
            "rng": rng_state(),
            "history": run.history,
            "config": to_dict(run.cfg),
        }
        save_state(run.out / "state.safetensors", state)
        model.save(
            run.out / "model",
            run.data.vocab,
            meta={"step": run.step, "name": run.cfg.name},
            state_dict=weights,
            pattern=run.cfg.data.pattern,
            text_model=getattr(run.data, "text_model", None),
        )
        write_curves(run.out, run.history)
    acc.wait_for_everyone()


def load_checkpoint(run: Run) -> bool:
    path = run.out / "state.safetensors"
    if not path.is_file():
        return False
    state = load_state(path)
    if state["config"]["model"] != to_dict(run.cfg)["model"]:
        raise TokenlmError(f"{path}: the checkpoint was trained with another model config (use --fresh)")
    run.acc.unwrap_model(run.model).load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.step, run.history = int(state["step"]), list(state["history"])
    set_rng_state(state["rng"])
    return True


def write_curves(out: Path, history: list[dict]) -> None:
    atomic_write_text(out / "losses.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tr = [(h["step"], h["lm/loss"]) for h in history if "lm/loss" in h]
    ev = [(h["step"], h["eval/loss"]) for h in history if "eval/loss" in h]
    if tr:
        ax.plot(*zip(*tr), label="train")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval (held out)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    from .utils import atomic_path

    with atomic_path(out / "curve.png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# --------------------------------------------------------------------------- driver


def train(
    cfg: TrainConfig,
    out: Path,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    fresh: bool = False,
    init: str | None = None,
) -> Run:
    """Train until ``max_steps`` (default ``cfg.max_steps``) or ``max_minutes``; resumes from ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    run = build_run(cfg, out, init)
    if not fresh and load_checkpoint(run):
        log.info("resumed %s at step %d", out, run.step)
    stop = min(max_steps or cfg.max_steps, cfg.max_steps)
    t0 = last_ckpt = time.monotonic()
    tokens = cfg.data.batch_size * cfg.data.seq_len * cfg.grad_accum * run.acc.num_processes
    with StopRequest() as signals:  # Ctrl-C / SIGTERM: finish the step, checkpoint, return
        try:
            while run.step < stop and not signals.requested:
                ts = time.monotonic()
                rec = train_step(run)
                rec["tokens_per_s"] = tokens / (time.monotonic() - ts)
                if cfg.eval_every and run.step % cfg.eval_every == 0:
                    rec["eval/loss"] = evaluate(run)
                run.history.append(rec)
                if run.step % cfg.log_every == 0 and run.acc.is_main_process:
                    log.info(
                        "step %d loss %.4f lr %.2e %.0f tok/s",
                        run.step,
                        rec["lm/loss"],
                        rec["lr"],
                        rec["tokens_per_s"],
                    )
                if time.monotonic() - last_ckpt > cfg.ckpt_minutes * 60:
                    save_checkpoint(run)
                    last_ckpt = time.monotonic()
                if max_minutes and time.monotonic() - t0 > max_minutes * 60:
                    break
        finally:
            save_checkpoint(run)
    return run


def cli(args) -> int:
    cfg = load_config(TrainConfig, args.config)
    if args.manifest:  # for the LM, a token shard folder (from `tokenlm tokenize`)
        cfg = replace(cfg, data=replace(cfg.data, source="shards", shards=str(Path(args.manifest).resolve())))
    cfg = replace(cfg, seed=args.seed if args.seed else cfg.seed)
    out = Path(args.out) if args.out else cache_dir() / "runs" / cfg.name
    run = train(cfg, out, args.max_steps, args.max_minutes, args.fresh, args.init)
    if run.acc.is_main_process:
        last = run.history[-1] if run.history else {}
        print(json.dumps({"run": str(out), "step": run.step, **{k: v for k, v in last.items() if "/" in k}}))
    return 0
