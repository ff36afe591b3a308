"""Codec training (``tokenlm train codec``): reconstruction + (optional) adversarial losses, EMA RVQ with
quantizer dropout, EnCodec's loss balancer, accelerate for one CPU or many GPUs.

The loop checkpoints every ``checkpoint_minutes`` to ``<run>/state.safetensors`` (model, discriminators,
optimizers, schedulers, balancer, step, RNG, wall time) with atomic writes, and resumes from it exactly:
batches are a pure function of (seed, step). Each checkpoint also exports ``<run>/model`` (a loadable
model folder), appends held-out metrics to ``<run>/metrics.jsonl`` and redraws ``<run>/curves.png`` and
``<run>/spectrograms.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenlm.checkpoint import load_state, load_weights, rng_state, save_model, save_state, set_rng_state
from tokenlm.config import load_config, to_dict
from tokenlm.metrics import si_sdr
from tokenlm.utils import StopRequest, cache_dir, log, progress, resolve_precision

from .dataset import DataConfig, build_sampler
from .discriminators import Discriminators
from .losses import (
    Balancer,
    CompressedComplexLoss,
    LogSpectralLoss,
    MultiResolutionMelLoss,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
)
from .model import Codec, CodecConfig
from .modules import ISTFTHead, widen_head
from .peer import EncodecPeer, EncodecPeerConfig


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    disc_lr: float = 2e-4
    betas: tuple[float, ...] = (0.8, 0.99)
    warmup_steps: int = 300
    grad_clip: float = 5.0
    # after warm-up the rate is constant until ``decay_start_step``, then falls along a cosine to
    # ``min_lr_ratio`` of itself over ``decay_steps`` (a constant rate keeps the held-out loss noisy)
    decay_start_step: int = 10**9
    decay_steps: int = 10000
    min_lr_ratio: float = 0.1


def _default_weights() -> dict[str, float]:
    return {"rec/mel": 1.0, "rec/complex": 1.0, "adv/gen": 1.0, "adv/feat": 2.0, "vq/commit": 1.0}


@dataclass(frozen=True)
class TrainConfig:
    name: str = "codec-small"
    arch: str = "tokenlm"  # or "encodec-peer" (PeerTrainConfig)
    model: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    weights: dict = field(default_factory=_default_weights)  # balancer weights, keyed like the losses
    gan_start_step: int = 10**9  # adversarial losses from this step on (discriminators made then)
    # A generator that is already trained must not see a random discriminator: for ``disc_warmup_steps`` only the
    # discriminators learn, then the adversarial weights ramp linearly from 0 over ``adv_ramp_steps``.
    disc_warmup_steps: int = 0
    adv_ramp_steps: int = 0
    # In the adversarial phase only the decoder learns: encoder and codebooks stay as they were, so the codes
    # (what the LM is trained on, what .tlm files hold) do not change. (A multi-GPU run of this phase needs
    # DDP's find_unused_parameters.)
    gan_freeze_tokens: bool = False
    freeze_tokens: bool = False  # decoder-only training from the start (e.g. a new head on a trained codec)
    disc_batch: int = 8  # clips of each batch the discriminators see
    mpd_channels: tuple[int, ...] = (8, 32, 64, 64)
    stft_channels: int = 8
    n_q_choices: tuple[int, ...] = (3, 6, 12)  # quantizer dropout: one of these per batch
    # autocast dtype of the forward passes: "bf16", "fp32" or "auto" (bf16 only where it is native: AVX-512 BF16 / AMX
    # CPUs, GPUs; on an AVX2 CPU emulated bf16 made a step ~20x slower than fp32)
    precision: str = "auto"
    # > 0: an exponential moving average of the generator's weights (this decay per step) is what checkpoints
    # export and the held-out probe measures. Adversarial training swings from checkpoint to checkpoint
    # (experiments/codec/small_gan_mpd2: ViSQOL at 3 kbps 1.430 at step 3,331, 1.318 at 4,024); the average does not.
    weight_ema: float = 0.0
    kmeans_batches: int = 24
    checkpoint_minutes: float = 5.0
    log_every: int = 25
    eval_clips: int = 8


@dataclass(frozen=True)
class PeerTrainConfig(TrainConfig):
    """The same training for the EnCodec-architecture peer (``arch: encodec-peer`` in YAML)."""

    arch: str = "encodec-peer"
    model: EncodecPeerConfig = field(default_factory=EncodecPeerConfig)


MODELS = {CodecConfig: (Codec, "codec"), EncodecPeerConfig: (EncodecPeer, "encodec-peer")}


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, seed: int = 0):
        from accelerate import Accelerator

        self.cfg, self.run_dir, self.seed = cfg, Path(run_dir), seed
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        model_cls, self.kind = MODELS[type(cfg.model)]
        self.model = model_cls(cfg.model)
        self.disc: Discriminators | None = None
        self.ema: dict[str, torch.Tensor] | None = None  # parameter name -> its moving average (weight_ema)
        self.warm_step = 0  # the step a warm start began at: the learning-rate warm-up counts from here
        self.opt_g = torch.optim.AdamW(self.model.parameters(), cfg.optim.lr, betas=tuple(cfg.optim.betas))
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._lr_factor)
        self.opt_d = None
        self.balancer = Balancer({k: v for k, v in cfg.weights.items() if not k.startswith("vq/")})
        self.mel = MultiResolutionMelLoss(cfg.model.sample_rate)
        self.complex = CompressedComplexLoss()
        self.logspec = LogSpectralLoss()
        self.step, self.train_seconds = 0, 0.0

    def _lr_factor(self, step: int) -> float:
        """The generator's learning-rate factor at ``step``: linear warm-up, constant, cosine decay."""
        o = self.cfg.optim
        warm = min(1.0, (step - self.warm_step + 1) / max(1, o.warmup_steps))
        if step < o.decay_start_step:
            return warm
        p = min(1.0, (step - o.decay_start_step) / max(1, o.decay_steps))
        return warm * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.safetensors"

    def _make_disc(self) -> None:
        self.disc = Discriminators(tuple(self.cfg.mpd_channels), self.cfg.stft_channels)
        self.opt_d = torch.optim.AdamW(
            self.disc.parameters(), self.cfg.optim.disc_lr, betas=tuple(self.cfg.optim.betas)
        )

    def save(self) -> None:
        model = self.acc.unwrap_model(self.model)
        state = {
            "model": model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "balancer": self.balancer.state_dict(),
            "step": self.step,
            "warm_step": self.warm_step,
            "train_seconds": self.train_seconds,
            "rng": rng_state(),
            "config": json.dumps(to_dict(self.cfg)),
        }
        if self.disc is not None:
            state["disc"] = self.acc.unwrap_model(self.disc).state_dict()
            state["opt_d"] = self.opt_d.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema
        if self.acc.is_main_process:
            save_state(self.state_path, state)
            save_model(
                self.run_dir / "model", self.kind, to_dict(self.cfg.model), self.export_state(), meta=self.meta()
            )

    # ------------------------------------------------------------------ weight averaging
    def update_ema(self) -> None:
        """After an optimiser step: move the averages toward the parameters (``weight_ema`` > 0)."""
        if self.cfg.weight_ema <= 0:
            return
        params = dict(self.acc.unwrap_model(self.model).named_parameters())
        if self.ema is None:  # a run without averages so far (new, or resumed from one): they start here
            self.ema = {k: p.detach().clone() for k, p in params.items()}
            return
        torch._foreach_lerp_(
            [self.ema[k] for k in params], [p.detach() for p in params.values()], 1 - self.cfg.weight_ema
        )

    def export_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint exports: the averaged parameters when there are averages (buffers, such as
        the codebooks, as they are), else the model's own."""
        sd = self.acc.unwrap_model(self.model).state_dict()
        return sd if self.ema is None else {k: self.ema.get(k, v) for k, v in sd.items()}

    def export_model(self) -> torch.nn.Module:
        """The model with the exported weights (a copy when they are averages)."""
        model = self.acc.unwrap_model(self.model)
        if self.ema is None:
            return model
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(self.export_state())
        return averaged

    def meta(self) -> dict:
        seg = self.cfg.data.segment_seconds * self.cfg.data.batch_size * self.acc.num_processes
        return {
            "steps": self.step,
            "train_hours": round(self.train_seconds / 3600, 3),
            "audio_hours_seen": round(self.step * seg / 3600, 2),
            "run": self.cfg.name,
        }

    def resume(self) -> None:
        state = load_state(self.state_path)
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.balancer.load_state_dict(state["balancer"])
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.warm_step = int(state.get("warm_step", 0))
        self.ema = state.get("ema") if self.cfg.weight_ema > 0 else None
        if "disc" in state:
            self._make_disc()
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        set_rng_state(state["rng"])
        log.info("resumed %s at step %d (%.2f h trained)", self.state_path, self.step, self.train_seconds / 3600)

    def warm_start(self, init: str, continue_run: bool = False) -> None:
        """Load a bundled or saved model's weights; ``continue_run`` also takes over its step count and hours
        when it was saved by a run of the same name (the committed model of this run)."""
        from tokenlm.checkpoint import load_state_dict_strict, read_model_config
        from tokenlm.pretrained import resolve

        folder = resolve(init)
        weights = load_weights(folder)
        head = getattr(getattr(self.model, "decoder", None), "head", None)
        w, b = "decoder.head.proj.weight", "decoder.head.proj.bias"
        if isinstance(head, ISTFTHead) and head.overlap > 1 and w in weights and weights[w].shape[0] == 3 * head.n_bins:
            # a 1-frame head into an ``overlap``-frame one
            weights[w], weights[b] = widen_head(weights[w].float(), weights[b].float(), head.hop, head.overlap)
            log.info("warm start: the iSTFT head widened to %d frames per codec frame", head.overlap)
        load_state_dict_strict(self.model, weights, where=str(folder))
        meta = read_model_config(folder).get("meta", {})
        if continue_run and meta.get("run") == self.cfg.name and "steps" in meta:
            # the same run, continued from its committed model (its training state is gone): the step count,
            # hours and learning-rate schedule go on; optimiser moments start afresh, so the warm-up is redone
            self.step = self.warm_step = int(meta["steps"])
            self.train_seconds = float(meta.get("train_hours", 0.0)) * 3600
            for group in self.opt_g.param_groups:
                group.setdefault("initial_lr", group["lr"])
            self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._lr_factor, last_epoch=self.step - 1)
        log.info("warm start from %s at step %d", folder, self.step)

    @torch.no_grad()
    def kmeans_init(self, sampler) -> None:
        if hasattr(self.model, "data_init"):  # the EnCodec peer: weight norm's data-dependent init first
            self.model.data_init(sampler.batch(10**8 - 1)[:, None])
        zs = []
        for i in progress(range(self.cfg.kmeans_batches), desc="k-means init"):
            x = sampler.batch(10**8 + i)  # batches never used for training
            z = self.model.latents(x[:, None])
            zs.append(z.reshape(-1, z.shape[-1]))
        self.model.quantizer.kmeans_init(torch.cat(zs))

    # ------------------------------------------------------------------ steps
    def autocast(self):
        dtype = resolve_precision(self.cfg.precision, self.acc.device.type)
        return torch.autocast(self.acc.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def n_q_for_step(self) -> int:
        rng = np.random.default_rng([self.seed, self.step, 7])
        return int(rng.choice(self.cfg.n_q_choices))

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        gan = self.step >= self.cfg.gan_start_step
        if gan and self.disc is None:
            self._make_disc()
            self.disc, self.opt_d = self.acc.prepare(self.disc, self.opt_d)
        with self.autocast():
            frozen = self.cfg.freeze_tokens or (gan and self.cfg.gan_freeze_tokens)
            out = self.model(x[:, None], self.n_q_for_step(), frozen_tokens=frozen)
        y = out.wav[:, 0].float()
        losses = {"rec/mel": self.mel(y, x), "rec/complex": self.complex(y, x)}
        if self.cfg.weights.get("rec/logspec", 0.0) > 0:
            losses["rec/logspec"] = self.logspec(y, x)
        d_grads, stats = None, {}
        ramp = 0.0
        if gan:
            d_grads, d_loss = self._adversarial(x, y, losses)
            ramp = self.adv_ramp()
            stats.update({"adv/disc": d_loss, "adv/ramp": ramp})
        self.opt_g.zero_grad(set_to_none=True)
        commit = self.cfg.weights["vq/commit"] * out.quant.commit_loss if out.quant.commit_loss.requires_grad else None
        stats.update(self.balancer.backward(losses, y, commit, scale={"adv/gen": ramp, "adv/feat": ramp}))
        self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt_g.step()
        self.sched_g.step()
        self.update_ema()
        if gan:  # the generator's backward also reached the discriminator: replace with its own gradients
            for p, g in zip(self.disc.parameters(), d_grads):
                p.grad = g
            self.opt_d.step()
        stats.update({k: v.item() for k, v in losses.items()})
        stats["vq/commit"] = out.quant.commit_loss.item()
        stats["vq/perplexity"] = out.quant.perplexity.mean().item()
        return stats

    def adv_ramp(self) -> float:
        """Share of the adversarial weights at this step: 0 during the discriminators' warm-up, then a ramp to 1."""
        k = self.step - self.cfg.gan_start_step - self.cfg.disc_warmup_steps
        if k < 0:
            return 0.0
        return min(1.0, (k + 1) / max(1, self.cfg.adv_ramp_steps))

    def _adversarial(self, x: torch.Tensor, y: torch.Tensor, losses: dict) -> tuple[list, float]:
        """One discriminator pass on real and one on generated audio serve both players: the generator's
        adversarial and feature-matching losses are added to ``losses``, and the discriminator's hinge-loss
        gradients are returned (computed now, applied after the generator step). Half the discriminator
        work of separate passes; the discriminator sees ``disc_batch`` clips of the batch."""
        n = min(self.cfg.disc_batch, x.shape[0])
        with self.autocast():
            real_logits, real_feats = self.disc(x[:n])
            fake_logits, fake_feats = self.disc(y[:n])
        real_logits, fake_logits = [v.float() for v in real_logits], [v.float() for v in fake_logits]
        real_feats = [[f.float() for f in fs] for fs in real_feats]
        fake_feats = [[f.float() for f in fs] for fs in fake_feats]
        losses["adv/gen"] = hinge_g_loss(fake_logits)
        losses["adv/feat"] = feature_matching_loss(real_feats, fake_feats)
        d_loss = hinge_d_loss(real_logits, fake_logits)
        params = list(self.disc.parameters())
        grads = torch.autograd.grad(d_loss, params, retain_graph=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for g in grads:  # autograd.grad bypasses DDP's reducer
                torch.distributed.all_reduce(g)
                g /= torch.distributed.get_world_size()
        return list(grads), d_loss.item()

    def fit(self, max_minutes: float | None, max_steps: int | None) -> None:
        sampler = build_sampler(
            self.cfg.data, self.cfg.model.sample_rate, "train", seed=self.seed + 1000 * self.acc.process_index
        )
        if self.step == 0 and not bool(self.model.quantizer.initialized):
            self.kmeans_init(sampler)
        self.model, self.opt_g = self.acc.prepare(self.model, self.opt_g)
        evaluator = HeldOutProbe(self.cfg, self.run_dir)
        t_start, t_ckpt = time.time(), time.time()
        last = self.train_seconds
        bar = progress(total=max_steps, desc="train codec", initial=0, unit="step")
        self.model.train()
        with StopRequest() as stop:  # Ctrl-C / SIGTERM: finish the step, checkpoint, return
            while True:
                t0 = time.time()
                stats = self.train_step(sampler.batch(self.step).to(self.acc.device))
                self.step += 1
                self.train_seconds = last + (time.time() - t_start)
                bar.update(1)
                if self.step % self.cfg.log_every == 0:
                    stats.update(step=self.step, seconds_per_step=round(time.time() - t0, 3))
                    self._log(stats)
                done = (max_steps is not None and self.step >= max_steps) or (
                    max_minutes is not None and time.time() - t_start >= 60 * max_minutes
                )
                if stop.requested:
                    self.save()
                    break
                if done or time.time() - t_ckpt >= 60 * self.cfg.checkpoint_minutes:
                    self.save()
                    evaluator(self.export_model(), self.step, self.train_seconds)
                    self.model.train()
                    t_ckpt = time.time()
                if done:
                    break
        bar.close()

    def _log(self, stats: dict) -> None:
        if not self.acc.is_main_process:
            return
        with open(self.run_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()}) + "\n")
        log.info(
            "step %d  mel %.3f  complex %.4f  commit %.4f  ppl %.0f  %.2fs/step",
            stats["step"],
            stats["rec/mel"],
            stats["rec/complex"],
            stats["vq/commit"],
            stats["vq/perplexity"],
            stats["seconds_per_step"],
        )


class HeldOutProbe:
    """Quick held-out check at every checkpoint: mel distance and SI-SDR at each bitrate on a few eval
    clips (speakers never trained on), appended to metrics.jsonl, plus curves and spectrogram plots."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        from tokenlm.corpus.manifest import load_clips

        from ..audio import load_audio

        self.cfg, self.run_dir = cfg, run_dir
        clips = [c for c in load_clips(cfg.data.root, kinds=["speech_real"], split="eval") if c.duration >= 2.0]
        rng = np.random.default_rng(0)
        pick = rng.choice(len(clips), size=min(cfg.eval_clips, len(clips)), replace=False) if clips else []
        sr = cfg.model.sample_rate
        self.wavs = [
            torch.from_numpy(load_audio(clips[i].path, sr, loudness_db=-23.0).samples[:, : 4 * sr]) for i in pick
        ]
        self.mel = MultiResolutionMelLoss(sr)

    @torch.no_grad()
    def __call__(self, model: Codec, step: int, train_seconds: float) -> None:
        if not self.wavs:
            return
        model.eval()
        row = {"step": step, "train_hours": round(train_seconds / 3600, 3)}
        for n_q in sorted(set(self.cfg.n_q_choices)):
            mels, sdrs = [], []
            for w in self.wavs:
                y = model.decode(model.encode(w[None], n_q), w.shape[-1])[0]
                mels.append(self.mel(y, w).item())
                sdrs.append(si_sdr(y[0], w[0]))
            kbps = n_q * math.log2(model.codebook_size) * model.frame_rate / 1000
            row[f"mel@{kbps:g}"] = round(float(np.mean(mels)), 4)
            row[f"sisdr@{kbps:g}"] = round(float(np.mean(sdrs)), 2)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("held-out: %s", row)
        plot_run(self.run_dir, model, self.wavs[0])


def plot_run(run_dir: Path, model: Codec, wav: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = (
        [json.loads(line) for line in open(run_dir / "train_log.jsonl")]
        if (run_dir / "train_log.jsonl").exists()
        else []
    )
    mets = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
    if logs:
        ax[0].plot([r["step"] for r in logs], [r["rec/mel"] for r in logs], label="train mel loss")
    for key in [k for k in mets[-1] if k.startswith("mel@")]:
        ax[0].plot([r["step"] for r in mets], [r.get(key) for r in mets], "o-", label=f"held-out {key} kbps")
    ax[0].set_xlabel("step")
    ax[0].legend()
    ax[0].set_title("mel loss")
    for key in [k for k in mets[-1] if k.startswith("sisdr@")]:
        ax[1].plot([r["step"] for r in mets], [r.get(key) for r in mets], "o-", label=key)
    ax[1].set_xlabel("step")
    ax[1].legend()
    ax[1].set_title("held-out SI-SDR (dB)")
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=80)
    plt.close(fig)
    save_spectrograms(run_dir / "spectrograms.png", model, wav)


def save_spectrograms(path: Path, model: Codec, wav: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("original", wav[0])]
    for n_q in (3, 6, 12):
        if n_q <= model.n_q:
            kbps = n_q * math.log2(model.codebook_size) * model.frame_rate / 1000
            rows.append((f"{kbps:g} kbps", model.decode(model.encode(wav[None], n_q), wav.shape[-1])[0, 0]))
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.0 * len(rows)), sharex=True)
    for ax, (title, x) in zip(axes, rows):
        spec = torch.stft(x, 512, 128, window=torch.hann_window(512), return_complex=True).abs()
        ax.imshow(
            torch.log10(spec + 1e-5).numpy(),
            origin="lower",
            aspect="auto",
            vmin=-4,
            vmax=1.5,
            extent=(0, x.shape[-1] / model.sample_rate, 0, model.sample_rate / 2000),
        )
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# quantizer training settings: a committed model continues under new values of these
TRAINING_ONLY_KEYS = ("ema_decay", "dead_threshold")


# model-config keys that models saved before them lack, with the value those models have
NEWER_KEYS = {"head_overlap": 1}


def architecture_diff(committed: dict, wanted: dict) -> list[str]:
    """Model-config keys whose values differ (training-only settings of the quantizer excepted; a key newer than
    a saved model counts with the value such models have, ``NEWER_KEYS``)."""
    keys = (set(committed) | set(wanted)) - set(TRAINING_ONLY_KEYS)
    return sorted(k for k in keys if committed.get(k, NEWER_KEYS.get(k)) != wanted.get(k, NEWER_KEYS.get(k)))


def cli(args) -> int:
    from tokenlm.config import read_yaml

    cls = PeerTrainConfig if read_yaml(args.config).get("arch") == "encodec-peer" else TrainConfig
    cfg = load_config(cls, args.config)
    if args.manifest:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=args.manifest))
    run_dir = Path(args.out) if args.out else cache_dir() / "runs" / cfg.name
    trainer = Trainer(cfg, run_dir, seed=args.seed)
    if trainer.state_path.exists() and not args.fresh:
        trainer.resume()
    elif args.init == "none":
        log.info("training from scratch (--init none)")
    elif args.init:
        trainer.warm_start(args.init)
    else:
        from tokenlm.checkpoint import read_model_config
        from tokenlm.pretrained import WEIGHTS_DIR, registry

        # no run yet: continue from the last committed model when it has the same architecture
        if cls is TrainConfig and "codec-16k" in registry():
            differ = architecture_diff(read_model_config(WEIGHTS_DIR / "codec-16k")["config"], to_dict(cfg.model))
            if not differ:
                trainer.warm_start("codec-16k", continue_run=True)
            else:
                log.info("training from scratch: codec-16k differs in %s", ", ".join(differ))
    trainer.fit(args.max_minutes, args.max_steps)
    log.info("checkpoint: %s", trainer.run_dir)
    return 0
