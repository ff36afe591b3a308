"""Train the semantic tokenizer: HuBERT-style masked prediction of k-means targets, resumable.

``tokenlm train semantic --config semantic/small`` runs iteration 1 (targets: k-means of MFCC + deltas);
``--config experiments/semantic/small_it2 --init RUN/model`` runs iteration 2 (targets: k-means of a layer of the
iteration-1 model). The run folder holds ``state.safetensors`` (model, optimizer, step, RNG, target
centroids; written atomically every ``checkpoint_minutes``) and, at the end, ``model/``: the exported
tokenizer with its unit k-means, loadable with ``tokenlm.pretrained.load``.

Training runs through ``accelerate`` (one CPU process here, DDP on many GPUs: ``accelerate launch -m tokenlm.cli
train semantic ...``; each process draws its own crops) with bf16 autocast of the student (``precision``).

Augmentation: speed perturbation (resampling, which moves pitch and formants too) is applied to the
clean signal the targets are computed from; additive noise (sound events from the corpus, else coloured
Gaussian noise) only to the input, so the model learns to predict clean units from noisy speech.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly

from tokenlm.checkpoint import load_state, rng_state, save_model, save_state, set_rng_state
from tokenlm.config import load_config, to_dict
from tokenlm.corpus.espeak_corpus import dev_corpus, is_held_out_voice
from tokenlm.corpus.manifest import AudioClip, load_audio_clips, read_manifest
from tokenlm.errors import TokenlmError
from tokenlm.utils import StopRequest, cache_dir, resolve_precision

from ..kmeans import kmeans, nearest
from .model import KMEANS_BATCH, SemanticConfig, SemanticTokenizer, span_mask
from .targets import LayerTargets, MfccTargets, frame_features, make_targets

log = logging.getLogger("tokenlm.semantic")
STATE_FILE = "state.safetensors"


@dataclass(frozen=True)
class SemanticTrainConfig:
    """A training run. ``manifests``: JSONL paths, ``espeak`` (the built-in espeak corpus) or
    ``corpus:<part>`` (``tokenlm data build`` output; skipped with a warning when not built)."""

    name: str = "semantic-small"
    model: SemanticConfig = field(default_factory=SemanticConfig)
    iteration: int = 1
    target_layer: int = 0  # iteration 2: the teacher layer clustered into targets (0: the teacher's unit layer)
    warm_start: bool = True  # with --init, start from its weights where shapes match (a new head otherwise)
    manifests: tuple[str, ...] = ("espeak",)
    noise_manifest: str | None = "corpus:sounds"
    max_clips_per_manifest: int = 4000
    batch_size: int = 16
    crop_seconds: float = 2.0
    lr: float = 5e-4
    warmup_steps: int = 500
    steps: int = 20000
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_prob: float = 0.08
    mask_span: int = 5
    speed_factors: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
    # vocal-tract-length perturbation of the student's input only (uniform in this range; (1, 1): off): the
    # targets come from the unwarped audio, so units must not depend on formant scale (ContentVec's idea, cheap)
    vtlp_range: tuple[float, ...] = (1.0, 1.0)
    noise_prob: float = 0.5
    snr_db: tuple[float, ...] = (5.0, 25.0)
    kmeans_clips: int = 600
    kmeans_iters: int = 10
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    threads: int = 1
    # autocast of the student's forward: "bf16" (1.8x faster than fp32 on an AVX-512 BF16 CPU), "fp32", or "auto":
    # bf16 only where it is native (on an AVX2 CPU emulated bf16 is ~10x slower than fp32)
    precision: str = "auto"


# --------------------------------------------------------------------------- data


def resolve_manifest(spec: str) -> Path | None:
    """``espeak`` / ``corpus:<part>`` / a path -> manifest path (None when a corpus part is not built)."""
    if spec == "espeak":
        return dev_corpus()
    if spec.startswith("corpus:"):
        from tokenlm.corpus.manifest import manifest_path

        p = manifest_path(None, spec.split(":", 1)[1])
        if not p.is_file():
            log.warning("manifest %s not built yet; skipped", p)
            return None
        return p
    return Path(spec)


def training_clips(cfg: SemanticTrainConfig, manifests: tuple[str, ...]) -> list[AudioClip]:
    clips: list[AudioClip] = []
    for spec in manifests:
        path = resolve_manifest(spec)
        if path is None:
            continue
        rows = [r for r in read_manifest(path, split="train") if r.duration >= 0.5 and not is_held_out_voice(r)]
        random.Random(0).shuffle(rows)
        clips += load_audio_clips(
            rows[: cfg.max_clips_per_manifest], cfg.model.sample_rate, desc=f"loading {path.name}"
        )
    if not clips:
        raise TokenlmError("no training clips (check the manifests in the config)")
    return clips


def noise_clips(cfg: SemanticTrainConfig) -> list[np.ndarray]:
    path = resolve_manifest(cfg.noise_manifest) if cfg.noise_manifest else None
    if path is None:
        return []
    rows = read_manifest(path, split="train")[:300]
    return [c.samples for c in load_audio_clips(rows, cfg.model.sample_rate, desc="loading noise")]


class Batcher:
    """Random crops of ``crop_seconds`` with speed perturbation and additive noise.

    ``next()`` -> (clean [B, L], noisy [B, L], valid [B, L] bool) float32 tensors.
    """

    def __init__(self, cfg: SemanticTrainConfig, clips: list[AudioClip], noises: list[np.ndarray], seed: int):
        self.cfg, self.clips, self.noises = cfg, clips, noises
        self.L = int(cfg.crop_seconds * cfg.model.sample_rate)
        self.rng = np.random.default_rng(seed)

    def crop(self) -> tuple[np.ndarray, int]:
        x = self.clips[self.rng.integers(len(self.clips))].samples
        speed = float(self.rng.choice(self.cfg.speed_factors))
        need = int(round(self.L * speed))
        start = self.rng.integers(0, max(1, len(x) - need + 1))
        seg = x[start : start + need]
        if speed != 1.0:  # play `speed` times faster: resample down by the factor
            up, down = 20, int(round(20 * speed))
            seg = resample_poly(seg, up, down).astype(np.float32)
        n = min(len(seg), self.L)
        out = np.zeros(self.L, np.float32)
        out[:n] = seg[:n]
        return out, n

    def noise(self, n: int) -> np.ndarray:
        if self.noises:
            z = self.noises[self.rng.integers(len(self.noises))]
            z = np.resize(z, n) if len(z) < n else z[(s := self.rng.integers(0, len(z) - n + 1)) : s + n]
            return z.astype(np.float32)
        k = int(self.rng.choice([1, 2, 4, 8]))  # coloured: moving average = low-pass of varying width
        return np.convolve(self.rng.standard_normal(n + k - 1), np.ones(k) / k, mode="valid").astype(np.float32)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clean, noisy, valid = [], [], []
        for _ in range(self.cfg.batch_size):
            x, n = self.crop()
            y = x.copy()
            if self.rng.random() < self.cfg.noise_prob and n > 0:
                z = self.noise(n)
                snr = self.rng.uniform(*self.cfg.snr_db)
                gain = math.sqrt((x[:n] ** 2).mean() / max((z**2).mean(), 1e-10) / 10 ** (snr / 10))
                y[:n] += gain * z
            clean.append(x)
            noisy.append(y)
            valid.append(np.arange(self.L) < n)
        return (torch.from_numpy(np.stack(clean)), torch.from_numpy(np.stack(noisy)), torch.from_numpy(np.stack(valid)))


# --------------------------------------------------------------------------- training


@dataclass
class Run:
    cfg: SemanticTrainConfig
    model: SemanticTokenizer  # wrapped by accelerate (DDP) once ``prepare`` ran: use ``raw`` for its weights
    opt: torch.optim.Optimizer
    targets: MfccTargets | LayerTargets
    step: int = 0
    acc: Any = None  # accelerate.Accelerator

    def prepare(self) -> None:
        from accelerate import Accelerator

        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.model, self.opt = self.acc.prepare(self.model, self.opt)
        self.targets.to(self.acc.device)

    @property
    def raw(self) -> SemanticTokenizer:
        return self.acc.unwrap_model(self.model) if self.acc is not None else self.model


def lr_at(cfg: SemanticTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_step(run: Run, batch, gen: torch.Generator) -> dict[str, float]:
    cfg, model = run.cfg, run.model
    device = next(model.parameters()).device
    try:
        precision = resolve_precision(cfg.precision, device.type)
    except ValueError as e:
        raise TokenlmError(str(e)) from None
    clean, noisy, valid = (x.to(device) for x in batch)
    targets = run.targets(clean)  # [B, T]
    B, T = targets.shape
    frame_valid = valid[:, :: cfg.model.hop_length][:, :T]
    mask = span_mask(B, T, cfg.mask_prob, cfg.mask_span, gen).to(device) & frame_valid
    lo, hi = cfg.vtlp_range
    warp = lo + (hi - lo) * torch.rand(B, generator=gen).to(device) if hi > lo else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(noisy, mask, warp)  # [B, T, n_targets]
    logits = logits.float()
    loss = F.cross_entropy(logits[mask], targets[mask])
    for g in run.opt.param_groups:
        g["lr"] = lr_at(cfg, run.step)
    run.opt.zero_grad(set_to_none=True)
    if run.acc is not None:
        run.acc.backward(loss)
        run.acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    run.opt.step()
    run.step += 1
    acc = (logits[mask].argmax(-1) == targets[mask]).float().mean()
    return {"loss/masked_ce": loss.item(), "metric/masked_acc": acc.item()}


def save_run(run: Run, out: Path, batcher: Batcher) -> None:
    if run.acc is not None and not run.acc.is_main_process:
        return
    state = {
        "step": run.step,
        "model": run.raw.state_dict(),
        "optim": run.opt.state_dict(),
        "targets": run.targets.centroids,
        "rng": rng_state(),
        "batcher_rng": str(batcher.rng.bit_generator.state),
    }
    if isinstance(run.targets, LayerTargets):
        state["teacher"] = run.targets.teacher.state_dict()
        state["teacher_config"] = str(to_dict(run.targets.teacher.cfg))
    save_state(out / STATE_FILE, state)


def restore_run(cfg: SemanticTrainConfig, out: Path) -> tuple[Run, dict]:
    st = load_state(out / STATE_FILE)
    model = SemanticTokenizer(cfg.model)
    model.load_state_dict(st["model"])
    opt = make_optimizer(cfg, model)
    opt.load_state_dict(st["optim"])
    if "teacher" in st:
        import ast

        from tokenlm.config import from_dict

        teacher = SemanticTokenizer(from_dict(SemanticConfig, ast.literal_eval(st["teacher_config"])))
        teacher.load_state_dict(st["teacher"])
        targets = LayerTargets(teacher, cfg.target_layer or teacher.cfg.unit_layer, st["targets"])
    else:
        targets = MfccTargets(cfg.model, st["targets"])
    set_rng_state(st["rng"])
    return Run(cfg, model, opt, targets, int(st["step"])), st


def make_optimizer(cfg: SemanticTrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)


def new_run(cfg: SemanticTrainConfig, clips: list[AudioClip], init: str | None) -> Run:
    model = SemanticTokenizer(cfg.model)
    teacher = None
    if init:
        from tokenlm.pretrained import load

        teacher = load(init)
        if cfg.warm_start:  # a CPU budget cannot afford HuBERT's fresh start per iteration
            own = model.state_dict()
            own.update({k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape})
            model.load_state_dict(own)
    targets = make_targets(cfg, clips, teacher)
    return Run(cfg, model, make_optimizer(cfg, model), targets)


def train(
    cfg: SemanticTrainConfig,
    out: Path,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    fresh: bool = False,
    init: str | None = None,
    manifest: str | None = None,
) -> Path:
    """Train (or resume) in ``out`` until ``cfg.steps``, ``max_steps`` more steps or ``max_minutes``;
    checkpoint, then export the tokenizer to ``out/model``. Returns that folder."""
    t0 = time.time()
    clips = training_clips(cfg, (manifest,) if manifest else cfg.manifests)
    log.info("%d training clips, %.2f h", len(clips), sum(len(c.samples) for c in clips) / cfg.model.sample_rate / 3600)
    if (out / STATE_FILE).exists() and not fresh:
        run, st = restore_run(cfg, out)
        run.prepare()
        batcher = Batcher(cfg, clips, noise_clips(cfg), seed=run.acc.process_index)
        if run.acc.process_index == 0:  # the saved crop stream is rank 0's; the others start a fresh one
            batcher.rng.bit_generator.state = _literal(st["batcher_rng"])
        else:
            batcher.rng = np.random.default_rng([run.acc.process_index, run.step])
        log.info("resumed %s at step %d", out, run.step)
    else:
        run = new_run(cfg, clips, init)
        run.prepare()
        batcher = Batcher(cfg, clips, noise_clips(cfg), seed=run.acc.process_index)
    gen = torch.Generator()
    start_step, last_save, avg = run.step, time.time(), {}
    run.model.train()
    with StopRequest() as stop:  # Ctrl-C / SIGTERM: finish the step, checkpoint, export
        while run.step < cfg.steps and (max_steps is None or run.step - start_step < max_steps):
            if stop.requested or (max_minutes is not None and time.time() - t0 > max_minutes * 60):
                break
            gen.manual_seed(run.step)  # masks depend on the step only, so a resumed run repeats them
            m = train_step(run, batcher.next(), gen)
            avg = {k: 0.98 * avg.get(k, v) + 0.02 * v for k, v in m.items()}
            if run.step % cfg.log_every == 0:
                _log_line(out, run.step, avg, time.time() - t0)
            if time.time() - last_save > cfg.checkpoint_minutes * 60:
                save_run(run, out, batcher)
                last_save = time.time()
    save_run(run, out, batcher)
    if not run.acc.is_main_process:
        return out / "model"
    return export(run, clips, out / "model")


def _literal(s: str):
    import ast

    return ast.literal_eval(s)


def _log_line(out: Path, step: int, avg: dict, seconds: float) -> None:
    import json

    line = {"step": step, "seconds": round(seconds, 1), **{k: round(v, 4) for k, v in avg.items()}}
    log.info("step %d  %s", step, "  ".join(f"{k} {v:.4f}" for k, v in avg.items()))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


@torch.no_grad()
def export(run: Run, clips: list[AudioClip], folder: Path, n_fit: int = 300, n_select: int = 150) -> Path:
    """Choose the unit layer by PNMI on *training* voices, fit the unit k-means there, save the model."""
    from tokenlm.metrics import pnmi_stats

    from .evaluate import clip_labels

    model = run.raw.eval()
    k = run.cfg.model.codebook_size
    rng = np.random.default_rng(1)
    fit = [clips[i] for i in rng.permutation(len(clips))[:n_fit]]
    labelled = [c for c in clips if c.phones][-n_select:]  # disjoint enough from `fit` for a layer choice
    scores, cents = {}, {}
    for layer in range(1, run.cfg.model.n_layers + 1):
        fn = lambda w, layer=layer: model.features(w, layer)  # noqa: E731
        cents[layer] = kmeans(frame_features(fn, fit, n_fit), k, iters=run.cfg.kmeans_iters, batch_size=KMEANS_BATCH)
        if labelled:
            units = [nearest(fn(torch.from_numpy(c.samples)[None])[0], cents[layer]).numpy() for c in labelled]
            labels = [clip_labels(c, len(u), run.cfg.model) for c, u in zip(labelled, units)]
            scores[layer] = pnmi_stats(np.concatenate(units), sum(labels, []))["pnmi"]
            log.info("layer %d: PNMI %.3f on training voices", layer, scores[layer])
    best = max(scores, key=scores.get) if scores else run.cfg.model.unit_layer
    cfg = replace(run.cfg.model, unit_layer=best)
    tok = SemanticTokenizer(cfg)
    sd = dict(model.state_dict(), centroids=cents[best])
    tok.load_state_dict(sd)
    meta = {
        "step": run.step,
        "iteration": run.cfg.iteration,
        "run": run.cfg.name,
        "layer_pnmi_training_voices": {str(k): round(v, 4) for k, v in scores.items()},
    }
    save_model(folder, "semantic", to_dict(cfg), tok.state_dict(), meta=meta)
    log.info("exported %s (unit layer %d)", folder, best)
    return folder


def cli(args) -> int:
    cfg = load_config(SemanticTrainConfig, args.config)
    torch.set_num_threads(args.threads or cfg.threads)
    out = Path(args.out) if args.out else cache_dir() / "runs" / cfg.name
    folder = train(cfg, out, args.max_minutes, args.max_steps, args.fresh, args.init, args.manifest)
    print(folder)
    return 0
