"""Train the semantic tokenizer: HuBERT-style masked prediction of k-means targets, as a recipe of the shared
loop (:mod:`tokenlm.training`: accelerate / DDP, bf16 policy, schedule, checkpoints with exact resume, logs).

``tokenlm train semantic --config semantic/small`` runs iteration 1 (targets: k-means of MFCC + deltas);
``--config experiments/semantic/small_it2 --init RUN/model`` runs iteration 2 (targets: k-means of a layer of the
iteration-1 model). The run's state holds the target centroids (and the teacher) beside the loop's; ``model/`` is
written at the end only (its unit k-means is fitted then): the tokenizer, loadable with ``tokenlm.pretrained.load``.

Augmentation: speed perturbation (resampling, which moves pitch and formants too) is applied to the
clean signal the targets are computed from; additive noise (sound events from the corpus, else coloured
Gaussian noise) only to the input, so the model learns to predict clean units from noisy speech.
"""

from __future__ import annotations

import ast
import logging
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly

from tokenlm import training
from tokenlm.checkpoint import save_model
from tokenlm.config import from_dict, load_config, to_dict
from tokenlm.corpus.espeak_corpus import dev_corpus, is_held_out_voice
from tokenlm.corpus.manifest import AudioClip, load_audio_clips, read_manifest
from tokenlm.errors import TokenlmError
from tokenlm.training import LoopConfig, OptimConfig, Recipe, make_optimizer
from tokenlm.utils import cache_dir

from ..kmeans import kmeans, nearest
from .model import KMEANS_BATCH, SemanticConfig, SemanticTokenizer, span_mask
from .targets import LayerTargets, MfccTargets, frame_features, make_targets

log = logging.getLogger("tokenlm.semantic")


@dataclass(frozen=True)
class SemanticOptimConfig(OptimConfig):
    """The semantic tokenizer's defaults: warm-up, then a cosine to 10% at ``max_steps``."""

    lr: float = 5e-4
    betas: tuple[float, ...] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 500


@dataclass(frozen=True)
class SemanticTrainConfig(LoopConfig):
    """A training run. ``manifests``: JSONL paths, ``espeak`` (the built-in espeak corpus) or
    ``corpus:<part>`` (``tokenlm data build`` output; skipped with a warning when not built)."""

    name: str = "semantic-small"
    model: SemanticConfig = field(default_factory=SemanticConfig)
    optim: SemanticOptimConfig = field(default_factory=SemanticOptimConfig)
    max_steps: int = 20000
    log_every: int = 50
    iteration: int = 1
    target_layer: int = 0  # iteration 2: the teacher layer clustered into targets (0: the teacher's unit layer)
    warm_start: bool = True  # with --init, start from its weights where shapes match (a new head otherwise)
    manifests: tuple[str, ...] = ("espeak",)
    noise_manifest: str | None = "corpus:sounds"
    max_clips_per_manifest: int = 4000
    batch_size: int = 16
    crop_seconds: float = 2.0
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
    threads: int = 1


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
    """Random crops of ``crop_seconds`` with speed perturbation and additive noise; batch ``index`` is a pure
    function of ``(seed, index)``.

    ``batch(index)`` -> (clean [B, L], noisy [B, L], valid [B, L] bool) float32 tensors.
    """

    def __init__(self, cfg: SemanticTrainConfig, clips: list[AudioClip], noises: list[np.ndarray]):
        self.cfg, self.clips, self.noises = cfg, clips, noises
        self.L = int(cfg.crop_seconds * cfg.model.sample_rate)

    def crop(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        x = self.clips[rng.integers(len(self.clips))].samples
        speed = float(rng.choice(self.cfg.speed_factors))
        need = int(round(self.L * speed))
        start = rng.integers(0, max(1, len(x) - need + 1))
        seg = x[start : start + need]
        if speed != 1.0:  # play `speed` times faster: resample down by the factor
            up, down = 20, int(round(20 * speed))
            seg = resample_poly(seg, up, down).astype(np.float32)
        n = min(len(seg), self.L)
        out = np.zeros(self.L, np.float32)
        out[:n] = seg[:n]
        return out, n

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.noises:
            z = self.noises[rng.integers(len(self.noises))]
            z = np.resize(z, n) if len(z) < n else z[(s := rng.integers(0, len(z) - n + 1)) : s + n]
            return z.astype(np.float32)
        k = int(rng.choice([1, 2, 4, 8]))  # coloured: moving average = low-pass of varying width
        return np.convolve(rng.standard_normal(n + k - 1), np.ones(k) / k, mode="valid").astype(np.float32)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, index])
        clean, noisy, valid = [], [], []
        for _ in range(self.cfg.batch_size):
            x, n = self.crop(rng)
            y = x.copy()
            if rng.random() < self.cfg.noise_prob and n > 0:
                z = self.noise(rng, n)
                snr = rng.uniform(*self.cfg.snr_db)
                gain = math.sqrt((x[:n] ** 2).mean() / max((z**2).mean(), 1e-10) / 10 ** (snr / 10))
                y[:n] += gain * z
            clean.append(x)
            noisy.append(y)
            valid.append(np.arange(self.L) < n)
        return (torch.from_numpy(np.stack(clean)), torch.from_numpy(np.stack(noisy)), torch.from_numpy(np.stack(valid)))


# --------------------------------------------------------------------------- recipe


class SemanticRecipe(Recipe):
    kind = "semantic"
    export_each_checkpoint = False  # the export fits a k-means per layer: at the end only
    log_keys = ("loss/masked_ce", "metric/masked_acc")
    curves = {"masked prediction (cross-entropy)": ("loss/masked_ce",), "masked accuracy": ("metric/masked_acc",)}

    def __init__(self, cfg: SemanticTrainConfig, manifest: str | None = None):
        self.cfg = cfg
        self.clips = training_clips(cfg, (manifest,) if manifest else cfg.manifests)
        hours = sum(len(c.samples) for c in self.clips) / cfg.model.sample_rate / 3600
        log.info("%d training clips, %.2f h", len(self.clips), hours)
        self.batcher = Batcher(cfg, self.clips, noise_clips(cfg))
        self.targets: MfccTargets | LayerTargets | None = None

    def build(self):
        model = SemanticTokenizer(self.cfg.model)
        return model, make_optimizer(model.parameters(), self.cfg.optim)

    def start(self, init: str | None) -> None:
        """Targets for a new run: k-means of MFCCs (iteration 1) or of a layer of ``init`` (iteration 2), whose
        weights also warm-start the student (``warm_start``) where shapes match."""
        teacher = None
        if init:
            from tokenlm.pretrained import load

            teacher = load(init)
            if self.cfg.warm_start:  # a CPU budget cannot afford HuBERT's fresh start per iteration
                model = self.loop.raw_model
                own = model.state_dict()
                own.update({k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape})
                model.load_state_dict(own)
        self.targets = make_targets(self.cfg, self.clips, teacher).to(self.loop.acc.device)

    def loss(self, index: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, device = self.cfg, self.loop.acc.device
        clean, noisy, valid = (x.to(device) for x in self.batcher.batch(index))
        gen = torch.Generator().manual_seed(index)  # masks depend on the batch only: a resumed run repeats them
        targets = self.targets(clean)  # [B, T]
        B, T = targets.shape
        frame_valid = valid[:, :: cfg.model.hop_length][:, :T]
        mask = span_mask(B, T, cfg.mask_prob, cfg.mask_span, gen).to(device) & frame_valid
        lo, hi = cfg.vtlp_range
        warp = lo + (hi - lo) * torch.rand(B, generator=gen).to(device) if hi > lo else None
        with self.loop.autocast():
            logits = self.loop.model(noisy, mask, warp)  # [B, T, n_targets]
        logits = logits.float()[mask]
        loss = F.cross_entropy(logits, targets[mask])
        acc = (logits.argmax(-1) == targets[mask]).float().mean()
        return loss, {"loss/masked_ce": loss.item(), "metric/masked_acc": acc.item()}

    def state_dict(self) -> dict:
        state = {"targets": self.targets.centroids}
        if isinstance(self.targets, LayerTargets):
            state["teacher"] = self.targets.teacher.state_dict()
            state["teacher_config"] = str(to_dict(self.targets.teacher.cfg))
        return state

    def load_state_dict(self, state: dict) -> None:
        if "teacher" in state:
            teacher = SemanticTokenizer(from_dict(SemanticConfig, ast.literal_eval(state["teacher_config"])))
            teacher.load_state_dict(state["teacher"])
            targets = LayerTargets(teacher, self.cfg.target_layer or teacher.cfg.unit_layer, state["targets"])
        else:
            targets = MfccTargets(self.cfg.model, state["targets"])
        self.targets = targets.to(self.loop.acc.device)

    def export(self, folder: Path, weights: dict[str, torch.Tensor]) -> None:
        model = SemanticTokenizer(self.cfg.model)
        model.load_state_dict({k: v.float().cpu() for k, v in weights.items()})
        export(model, self.cfg, self.clips, folder, self.loop.step)


def train(
    cfg: SemanticTrainConfig,
    out: Path,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    fresh: bool = False,
    init: str | None = None,
    manifest: str | None = None,
) -> Path:
    """Train (or resume) in ``out`` until ``cfg.max_steps``, ``max_steps`` more steps or ``max_minutes``;
    checkpoint, then export the tokenizer to ``out/model``. Returns that folder."""
    training.train(SemanticRecipe(cfg, manifest), out, max_steps, max_minutes, fresh, init)
    return Path(out) / "model"


@torch.no_grad()
def export(
    model: SemanticTokenizer,
    train_cfg: SemanticTrainConfig,
    clips: list[AudioClip],
    folder: Path,
    step: int,
    n_fit: int = 300,
    n_select: int = 150,
) -> Path:
    """Choose the unit layer by PNMI on *training* voices, fit the unit k-means there, save the model."""
    from tokenlm.metrics import pnmi_stats

    from .evaluate import clip_labels

    model = model.eval()
    k = train_cfg.model.codebook_size
    rng = np.random.default_rng(1)
    fit = [clips[i] for i in rng.permutation(len(clips))[:n_fit]]
    labelled = [c for c in clips if c.phones][-n_select:]  # disjoint enough from `fit` for a layer choice
    scores, cents = {}, {}
    for layer in range(1, train_cfg.model.n_layers + 1):
        fn = lambda w, layer=layer: model.features(w, layer)  # noqa: E731
        cents[layer] = kmeans(frame_features(fn, fit, n_fit), k, iters=train_cfg.kmeans_iters, batch_size=KMEANS_BATCH)
        if labelled:
            units = [nearest(fn(torch.from_numpy(c.samples)[None])[0], cents[layer]).numpy() for c in labelled]
            labels = [clip_labels(c, len(u), train_cfg.model) for c, u in zip(labelled, units)]
            scores[layer] = pnmi_stats(np.concatenate(units), sum(labels, []))["pnmi"]
            log.info("layer %d: PNMI %.3f on training voices", layer, scores[layer])
    best = max(scores, key=scores.get) if scores else train_cfg.model.unit_layer
    cfg = replace(train_cfg.model, unit_layer=best)
    tok = SemanticTokenizer(cfg)
    tok.load_state_dict(dict(model.state_dict(), centroids=cents[best]))
    meta = {
        "step": step,
        "iteration": train_cfg.iteration,
        "run": train_cfg.name,
        "layer_pnmi_training_voices": {str(k): round(v, 4) for k, v in scores.items()},
    }
    save_model(folder, "semantic", to_dict(cfg), tok.state_dict(), meta=meta)
    log.info("exported %s (unit layer %d)", folder, best)
    return folder


def cli(args) -> int:
    cfg = load_config(SemanticTrainConfig, args.config)
    cfg = replace(cfg, seed=args.seed or cfg.seed)
    torch.set_num_threads(args.threads or cfg.threads)
    out = Path(args.out) if args.out else cache_dir() / "runs" / cfg.name
    print(train(cfg, out, args.max_minutes, args.max_steps, args.fresh, args.init, args.manifest))
    return 0
