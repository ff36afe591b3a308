"""The one training loop that the codec, the semantic tokenizer and the LM plug into.

A model brings a :class:`Recipe` (audiocraft's ``StandardSolver`` subclasses, in small): it builds its model and
optimiser, computes one step (``loss(index)`` for the standard step, or its own ``step(index)``, e.g. the codec's
GAN step), names its extra training state, writes its model folder and, optionally, measures held-out data.
:class:`Trainer` does the rest, the same way for all three:

- ``accelerate`` (one CPU, or many GPUs / nodes with ``accelerate launch``: DDP, FSDP for the LM);
- the bf16 policy: ``precision: auto | bf16 | fp32`` (``auto``: bf16 only where it is native,
  :func:`tokenlm.utils.resolve_precision`);
- gradient accumulation over ``grad_accum`` micro-batches (gradients synchronised on the last only);
- one learning-rate schedule (:func:`lr_factor`): linear warm-up, constant, cosine decay;
- an optional moving average of the weights (``weight_ema``), which is what exports and held-out checks use;
- a checkpoint every ``checkpoint_minutes`` and at the end, with exact resume: batches are a pure function of
  ``(seed, batch index)``, and the state holds the weights, optimiser, step, RNG states, the average and the
  recipe's extras (``state.safetensors``, no pickle, written atomically);
- the first SIGTERM / Ctrl-C finishes the step, checkpoints and stops (a second one aborts);
- one log, ``train_log.jsonl``: a line per logged step (``step``, ``lr``, ``seconds_per_step`` and the step's
  numbers keyed ``group/name``, averaged over the steps since the last line and over processes) and a line per
  held-out evaluation (``step``, ``train_hours``, ``eval/...``); ``curves.png`` drawn from it; a progress bar.

The batch index a step gets is ``step * processes + rank``; micro-batch ``m`` of it is ``index * grad_accum + m``.
So 2 processes and 1 micro-batch see the same batches as 1 process and 2 micro-batches (the DDP test uses it).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_state, rng_state, save_state, set_rng_state
from .config import to_dict
from .errors import TokenlmError
from .utils import StopRequest, atomic_path, atomic_write_text, log, progress, resolve_precision, seed_everything

STATE_FILE = "state.safetensors"
LOG_FILE = "train_log.jsonl"
# training states written before the shared loop named the optimiser so (codec, semantic tokenizer)
LEGACY_OPTIMIZER_KEYS = ("opt_g", "optim")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule: a linear warm-up over ``warmup_steps``, the rate constant until ``decay_start_step``,
    then a cosine to ``min_lr_ratio`` of it over ``decay_steps``. ``decay_start_step`` null: at the end of the
    warm-up; ``decay_steps`` null: until ``max_steps`` (the LM's warm-up-then-cosine)."""

    lr: float = 3e-4
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 100
    decay_start_step: int | None = None
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class LoopConfig:
    """The keys every training config shares; each model's ``TrainConfig`` subclasses it."""

    name: str = "run"
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: str = "auto"  # "auto" | "bf16" | "fp32" (auto: bf16 where it is native, see resolve_precision)
    grad_accum: int = 1  # micro-batches per optimiser step
    max_steps: int = 10**9  # the end of training (and of the cosine when optim.decay_steps is null)
    log_every: int = 10
    eval_every: int = 0  # held-out evaluation every this many steps; 0: with every checkpoint
    checkpoint_minutes: float = 5.0
    weight_ema: float = 0.0  # > 0: a moving average of the weights (this decay per step) is what is exported
    seed: int = 0


def lr_factor(optim: OptimConfig, max_steps: int, step: int, warm_step: int = 0) -> float:
    """The learning-rate factor at ``step``: warm-up (counted from ``warm_step``, where a warm start began),
    constant, cosine decay to ``min_lr_ratio``."""
    warm = min(1.0, (step - warm_step + 1) / max(1, optim.warmup_steps))
    start = optim.warmup_steps if optim.decay_start_step is None else optim.decay_start_step
    if step < start:
        return warm
    length = max_steps - start if optim.decay_steps is None else optim.decay_steps
    p = min(1.0, (step - start) / max(1, length))
    return warm * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW with the config's rate, betas and weight decay (``params`` may be groups with their own decay)."""
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


class Recipe:
    """What a model brings to the loop. ``cfg`` is its config (a :class:`LoopConfig`); ``loop`` is set by the
    :class:`Trainer`.

    Override ``build`` and either ``loss`` (the standard step: accumulation, clipping, optimiser and schedule are
    the loop's) or ``step`` (a step of one's own that ends with ``loop.optimizer_step()``); ``export`` writes the
    model folder. The rest is optional.
    """

    kind = "model"
    export_each_checkpoint = True  # False: the model folder is written at the end only (an expensive export)
    log_keys: tuple[str, ...] = ()  # numbers shown on the console and the progress bar
    curves: dict[str, tuple[str, ...]] = {}  # curves.png: panel title -> key patterns (train and eval keys)
    cfg: LoopConfig
    loop: Trainer

    def build(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Make the model and the optimiser the loop schedules, clips and averages."""
        raise NotImplementedError

    def start(self, init: str | None) -> None:
        """A new run (not a resume): warm-start from ``init``, initialise what needs data (k-means...)."""

    def loss(self, index: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of batch ``index`` (a pure function of it) and the numbers to log, keyed ``group/name``. The
        model's forward runs under ``loop.autocast()``."""
        raise NotImplementedError

    def step(self, index: int) -> dict[str, float]:
        """One optimiser step: ``grad_accum`` micro-batches of ``loss`` (the gradient is their mean)."""
        loop, n = self.loop, self.cfg.grad_accum
        stats: dict[str, float] = {}
        for micro in range(n):
            with loop.no_sync(micro < n - 1):
                loss, s = self.loss(index * n + micro)
                loop.acc.backward(loss / n)
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v / n
        loop.optimizer_step()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Extra training state (saved beside the loop's keys in the state file)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the extras from the whole saved state (the loop's keys are there too)."""

    def export(self, folder: Path, weights: dict[str, torch.Tensor]) -> None:
        """Write the model folder with ``weights`` (the averaged ones when ``weight_ema`` > 0). Main process only."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out numbers keyed ``eval/...`` for ``model`` (the exported weights). Called on every process."""
        return {}

    def config_diff(self, saved: dict[str, Any]) -> list[str]:
        """Model-config keys in which a saved run differs from this one (a resume refuses any)."""
        own = json.loads(json.dumps(to_dict(self.cfg)["model"]))  # tuples as the saved lists
        return sorted(k for k in set(saved) | set(own) if saved.get(k) != own.get(k))


class Trainer:
    """The loop: ``Trainer(recipe, out)``, then ``resume()`` or ``recipe.start(init)``, then ``fit(...)``
    (see :func:`train`)."""

    def __init__(self, recipe: Recipe, out: str | Path):
        self.recipe, self.cfg, self.out = recipe, recipe.cfg, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.acc = make_accelerator(self.cfg.precision)
        recipe.loop = self
        self.step = self.warm_step = 0  # warm_step: where a warm start began (the warm-up counts from there)
        self.train_seconds = 0.0
        self.ema: dict[str, torch.Tensor] | None = None  # parameter name -> its moving average
        self.rows: list[dict] = []  # the log: train and eval lines
        self.grad_norm = 0.0
        self._prepared = False
        seed_everything(self.cfg.seed)
        self.model, self.opt = recipe.build()
        self._schedule()

    # ------------------------------------------------------------------ helpers for recipes
    def autocast(self):
        """bf16 autocast when the precision policy says so (else a no-op)."""
        return self.acc.autocast()

    def no_sync(self, skip: bool):
        """Inside: no gradient synchronisation across processes (all but the last micro-batch)."""
        return self.acc.no_sync(self.model) if skip else contextlib.nullcontext()

    @property
    def raw_model(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    def optimizer_step(self) -> None:
        """Clip, step the optimiser and the schedule, clear the gradients, update the weight average."""
        self.grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self._update_ema()

    def continue_from(self, step: int, train_seconds: float) -> None:
        """Continue a run from its saved model (its training state is gone): the step count, hours and schedule go
        on; the optimiser's moments start afresh, so the warm-up is redone from ``step``."""
        self.step = self.warm_step = step
        self.train_seconds = train_seconds
        self._schedule()

    def _schedule(self) -> None:
        for group in self.opt.param_groups:
            group.setdefault("initial_lr", self.cfg.optim.lr)
        f = lambda s: lr_factor(self.cfg.optim, self.cfg.max_steps, s, self.warm_step)  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, f, last_epoch=self.step - 1)

    # ------------------------------------------------------------------ weight average
    def _update_ema(self) -> None:
        if self.cfg.weight_ema <= 0:
            return
        params = dict(self.raw_model.named_parameters())
        if self.ema is None:  # a run without averages so far (new, or resumed from one): they start here
            self.ema = {k: p.detach().clone() for k, p in params.items()}
            return
        torch._foreach_lerp_(
            [self.ema[k] for k in params], [p.detach() for p in params.values()], 1 - self.cfg.weight_ema
        )

    def export_weights(self, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The weights exports and evaluations use: the averaged parameters when there are averages (buffers, such as
        codebooks, as they are), else the model's own."""
        sd = self.raw_model.state_dict() if weights is None else weights
        return sd if self.ema is None else {k: self.ema.get(k, v) for k, v in sd.items()}

    def export_model(self) -> torch.nn.Module:
        """The model with the exported weights: the (wrapped) training model, or an averaged copy."""
        if self.ema is None:
            return self.model
        averaged = copy.deepcopy(self.raw_model)
        averaged.load_state_dict(self.export_weights())
        return averaged

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def save(self, final: bool = False) -> None:
        """Checkpoint (every process calls it): state, model folder (each time, or at the end), log, curves."""
        acc = self.acc
        acc.wait_for_everyone()
        weights = acc.get_state_dict(self.model)  # a collective under FSDP
        if acc.is_main_process:
            state = {
                "model": weights,
                "optimizer": self.opt.state_dict(),
                "step": self.step,
                "warm_step": self.warm_step,
                "train_seconds": self.train_seconds,
                "batches_seen": self.step * self.cfg.grad_accum * acc.num_processes,
                "rng": rng_state(),
                "config": json.dumps(to_dict(self.cfg)),
            }
            if self.ema is not None:
                state["ema"] = self.ema
            extra = self.recipe.state_dict()
            if set(extra) & set(state):
                raise TypeError(f"recipe state keys clash with the loop's: {sorted(set(extra) & set(state))}")
            save_state(self.state_path, {**state, **extra})
            if final or self.recipe.export_each_checkpoint:
                self.recipe.export(self.out / "model", self.export_weights(weights))
            write_curves(self.out / "curves.png", self.rows, self.recipe.curves)
        acc.wait_for_everyone()

    def resume(self) -> bool:
        """Load ``state.safetensors`` when there is one (before ``fit``); False when there is none."""
        if not self.state_path.is_file():
            return False
        state = load_state(self.state_path)
        saved = state.get("config")
        saved = json.loads(saved) if isinstance(saved, str) else saved
        if saved and "model" in saved and (differ := self.recipe.config_diff(saved["model"])):
            raise TokenlmError(
                f"{self.state_path}: the checkpoint was trained with another model config "
                f"({', '.join(differ)}; use --fresh)"
            )
        self.raw_model.load_state_dict(state["model"])
        key = next(k for k in ("optimizer", *LEGACY_OPTIMIZER_KEYS) if k in state)
        self.opt.load_state_dict(state[key])
        self.step, self.warm_step = int(state["step"]), int(state.get("warm_step", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.ema = state.get("ema") if self.cfg.weight_ema > 0 else None
        self.recipe.load_state_dict(state)
        set_rng_state(state["rng"])
        self._schedule()
        self.rows = [r for r in read_log(self.out / LOG_FILE) if r["step"] <= self.step]
        if self.acc.is_main_process:  # lines of steps after the checkpoint are redone: drop them
            atomic_write_text(self.out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in self.rows))
        log.info("resumed %s at step %d (%.2f h trained)", self.state_path, self.step, self.train_seconds / 3600)
        return True

    # ------------------------------------------------------------------ the loop
    def _prepare(self) -> None:
        if not self._prepared:
            self.model, self.opt = self.acc.prepare(self.model, self.opt)
            self._prepared = True

    def _agree(self, *flags: bool) -> list[bool]:
        """The same decisions on every process (time and signals are per process): any one's True wins."""
        if self.acc.num_processes == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.acc.device)
        return [bool(v) for v in self.acc.reduce(t, reduction="sum").tolist()]

    def fit(self, max_steps: int | None = None, max_minutes: float | None = None) -> None:
        """Train ``max_steps`` more steps (default: up to ``cfg.max_steps``) or for ``max_minutes``, checkpointing
        every ``checkpoint_minutes`` and at the end."""
        self._prepare()
        cfg, acc = self.cfg, self.acc
        end = cfg.max_steps if max_steps is None else min(cfg.max_steps, self.step + max_steps)
        bar = progress(
            total=max(0, end - self.step),
            desc=f"train {self.recipe.kind}",
            unit="step",
            disable=None if acc.is_main_process else True,
        )
        t_start = t_ckpt = time.monotonic()
        seconds_before, sums, n_sum, stopped, ran = self.train_seconds, {}, 0, False, False
        self.model.train()
        with StopRequest() as signals:
            while self.step < end:
                t0 = time.monotonic()
                lr = self.opt.param_groups[0]["lr"]
                stats = self.recipe.step(self.step * acc.num_processes + acc.process_index)
                self.step += 1
                ran = True
                self.train_seconds = seconds_before + time.monotonic() - t_start
                for k, v in {**stats, "optim/grad_norm": self.grad_norm}.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    self._log({k: v / n_sum for k, v in sums.items()}, lr, time.monotonic() - t0, bar)
                    sums, n_sum = {}, 0
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate()
                timed, stopped, out_of_time = self._agree(
                    time.monotonic() - t_ckpt >= 60 * cfg.checkpoint_minutes,
                    signals.requested,
                    bool(max_minutes and time.monotonic() - t_start >= 60 * max_minutes),
                )
                if stopped or out_of_time:
                    break
                if timed and self.step < end:
                    if not cfg.eval_every:  # held-out numbers with each checkpoint (in its log and curves)
                        self._evaluate()
                    self.save()
                    t_ckpt = time.monotonic()
            if ran and not stopped and not cfg.eval_every:  # a stop by signal is for leaving quickly
                self._evaluate()
            self.save(final=True)
        bar.close()

    def _log(self, means: dict[str, float], lr: float, seconds: float, bar) -> None:
        keys = sorted(means)
        t = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=self.acc.device)
        if self.acc.num_processes > 1:
            t = self.acc.reduce(t, reduction="mean")
        row = {"step": self.step, "lr": lr, "seconds_per_step": round(seconds, 3)}
        row.update({k: round(float(v), 6) for k, v in zip(keys, t.tolist())})
        self._write(row)
        shown = {k: row[k] for k in self.recipe.log_keys if k in row}
        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        if self.acc.is_main_process:
            log.info(
                "step %d  %s  lr %.2e  %.2f s/step",
                self.step,
                "  ".join(f"{k} {v:.4f}" for k, v in shown.items()),
                lr,
                seconds,
            )

    def _evaluate(self) -> None:
        metrics = self.recipe.evaluate(self.export_model())
        self.model.train()
        if metrics:
            self._write({"step": self.step, "train_hours": round(self.train_seconds / 3600, 3), **metrics})
            if self.acc.is_main_process:
                log.info("held-out at step %d: %s", self.step, metrics)

    def _write(self, row: dict) -> None:
        self.rows.append(row)
        if self.acc.is_main_process:
            with open(self.out / LOG_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")

    @property
    def history(self) -> list[dict]:
        """The train lines of the log (every logged step of the run, resumed sessions included)."""
        return [r for r in self.rows if "lr" in r]


def make_accelerator(precision: str):
    """An ``Accelerator`` for this process: bf16 mixed precision where the policy resolves to it (on a GPU, or a CPU
    with native bf16), fp32 elsewhere."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dtype = resolve_precision(precision, device)
    except ValueError as e:
        raise TokenlmError(str(e)) from None
    AcceleratorState._reset_state()  # a second run in this process may use another precision (the group is kept)
    return Accelerator(mixed_precision="bf16" if dtype == "bf16" else "no", cpu=device == "cpu")


def train(
    recipe: Recipe,
    out: str | Path,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    fresh: bool = False,
    init: str | None = None,
) -> Trainer:
    """Resume the run in ``out`` (unless ``fresh``) or start one (``recipe.start(init)``), then train."""
    trainer = Trainer(recipe, out)
    if fresh or not trainer.resume():
        recipe.start(init)
    trainer.fit(max_steps, max_minutes)
    return trainer


# --------------------------------------------------------------------------- log and curves


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_curves(path: Path, rows: list[dict], panels: dict[str, tuple[str, ...]]) -> None:
    """One panel per entry of ``panels`` (title -> key patterns such as ``"rec/mel"``, ``"eval/mel@*"``): train keys
    as lines, held-out keys as dots on lines. Without panels, every train key in one panel."""
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = sorted({k for r in rows for k in r if "/" in k})
    panels = panels or {"training": tuple(k for k in keys if not k.startswith("eval/"))}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.5), squeeze=False)
    for ax, (title, patterns) in zip(axes[0], panels.items()):
        for key in [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts), "o-" if key.startswith("eval/") else "-", label=key, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
