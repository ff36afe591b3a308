"""Codec training (``tokenlm train codec``): the codec's recipe for the shared loop (:mod:`tokenlm.training`).

Reconstruction + (optional) adversarial losses, EMA RVQ with quantizer dropout, EnCodec's loss balancer. The step is
the recipe's own (the balancer back-propagates each loss through the output; the discriminators learn from the
same passes); the loop does the rest: schedule, clipping, weight average, checkpoints and exact resume (batches are
a pure function of (seed, step)), ``train_log.jsonl``. Each checkpoint exports ``<run>/model`` (a loadable model
folder) and runs the held-out probe (its numbers go to the log; ``curves.png`` and ``spectrograms.png`` are drawn).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenlm import training
from tokenlm.checkpoint import load_weights, save_model
from tokenlm.config import load_config, to_dict
from tokenlm.metrics import si_sdr
from tokenlm.training import LoopConfig, OptimConfig, Recipe, make_optimizer
from tokenlm.utils import cache_dir, log, progress

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
class CodecOptimConfig(OptimConfig):
    """The codec's defaults, and the discriminators' rate. After the warm-up the rate stays constant until
    ``decay_start_step`` (a constant rate keeps the held-out loss noisy, so runs end with a cosine decay)."""

    lr: float = 5e-4
    disc_lr: float = 2e-4
    betas: tuple[float, ...] = (0.8, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 300
    grad_clip: float = 5.0
    decay_start_step: int | None = 10**9
    decay_steps: int | None = 10000


def _default_weights() -> dict[str, float]:
    return {"rec/mel": 1.0, "rec/complex": 1.0, "adv/gen": 1.0, "adv/feat": 2.0, "vq/commit": 1.0}


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    name: str = "codec-small"
    arch: str = "tokenlm"  # or "encodec-peer" (PeerTrainConfig)
    model: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: CodecOptimConfig = field(default_factory=CodecOptimConfig)
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
    # weight_ema > 0 (LoopConfig): adversarial training swings from checkpoint to checkpoint
    # (experiments/codec/small_gan_mpd2: ViSQOL at 3 kbps 1.430 at step 3,331, 1.318 at 4,024); the average does not.
    kmeans_batches: int = 24
    log_every: int = 25
    eval_clips: int = 8


@dataclass(frozen=True)
class PeerTrainConfig(TrainConfig):
    """The same training for the EnCodec-architecture peer (``arch: encodec-peer`` in YAML)."""

    arch: str = "encodec-peer"
    model: EncodecPeerConfig = field(default_factory=EncodecPeerConfig)


MODELS = {CodecConfig: (Codec, "codec"), EncodecPeerConfig: (EncodecPeer, "encodec-peer")}


class CodecRecipe(Recipe):
    kind = "codec"
    log_keys = ("rec/mel", "rec/complex", "vq/commit", "vq/perplexity")
    curves = {"mel loss": ("rec/mel", "eval/mel@*"), "held-out SI-SDR (dB)": ("eval/sisdr@*",)}

    def __init__(self, cfg: TrainConfig):
        if cfg.grad_accum != 1:
            raise ValueError("the codec's step takes one batch (grad_accum: 1)")
        self.cfg = cfg
        self.model_cls, self.model_kind = MODELS[type(cfg.model)]
        self.disc: Discriminators | None = None
        self.opt_d = None
        self._disc_prepared = False
        self.balancer = Balancer({k: v for k, v in cfg.weights.items() if not k.startswith("vq/")})
        self.mel = MultiResolutionMelLoss(cfg.model.sample_rate)
        self.complex = CompressedComplexLoss()
        self.logspec = LogSpectralLoss()
        self._sampler = None
        self.probe: HeldOutProbe | None = None

    @property
    def sampler(self):
        """Training crops: batch ``i`` is a pure function of (seed, i). Loads the audio on first use."""
        if self._sampler is None:
            self._sampler = build_sampler(self.cfg.data, self.cfg.model.sample_rate, "train", seed=self.cfg.seed)
        return self._sampler

    def build(self):
        model = self.model_cls(self.cfg.model)
        return model, make_optimizer(model.parameters(), self.cfg.optim)

    # ------------------------------------------------------------------ a new run
    def start(self, init: str | None) -> None:
        """``init``: a model to warm-start from; ``none``: from scratch; None: continue the committed codec-16k
        when it has this architecture (its step count and hours go on), else from scratch."""
        if init == "none":
            log.info("training from scratch (--init none)")
        elif init:
            self.warm_start(init)
        elif type(self.cfg.model) is CodecConfig:
            from tokenlm.checkpoint import read_model_config
            from tokenlm.pretrained import WEIGHTS_DIR, registry

            if "codec-16k" in registry():
                differ = architecture_diff(
                    read_model_config(WEIGHTS_DIR / "codec-16k")["config"], to_dict(self.cfg.model)
                )
                if not differ:
                    self.warm_start("codec-16k", continue_run=True)
                else:
                    log.info("training from scratch: codec-16k differs in %s", ", ".join(differ))
        if not bool(self.loop.raw_model.quantizer.initialized):
            self.kmeans_init()

    def warm_start(self, init: str, continue_run: bool = False) -> None:
        """Load a bundled or saved model's weights; ``continue_run`` also takes over its step count and hours
        when it was saved by a run of the same name (the committed model of this run)."""
        from tokenlm.checkpoint import load_state_dict_strict, read_model_config
        from tokenlm.pretrained import resolve

        model = self.loop.raw_model
        folder = resolve(init)
        weights = load_weights(folder)
        head = getattr(getattr(model, "decoder", None), "head", None)
        w, b = "decoder.head.proj.weight", "decoder.head.proj.bias"
        if isinstance(head, ISTFTHead) and head.overlap > 1 and w in weights and weights[w].shape[0] == 3 * head.n_bins:
            # a 1-frame head into an ``overlap``-frame one
            weights[w], weights[b] = widen_head(weights[w].float(), weights[b].float(), head.hop, head.overlap)
            log.info("warm start: the iSTFT head widened to %d frames per codec frame", head.overlap)
        load_state_dict_strict(model, weights, where=str(folder))
        meta = read_model_config(folder).get("meta", {})
        if continue_run and meta.get("run") == self.cfg.name and "steps" in meta:
            self.loop.continue_from(int(meta["steps"]), float(meta.get("train_hours", 0.0)) * 3600)
        log.info("warm start from %s at step %d", folder, self.loop.step)

    @torch.no_grad()
    def kmeans_init(self) -> None:
        model = self.loop.raw_model
        if hasattr(model, "data_init"):  # the EnCodec peer: weight norm's data-dependent init first
            model.data_init(self.sampler.batch(10**8 - 1)[:, None])
        zs = []
        for i in progress(range(self.cfg.kmeans_batches), desc="k-means init"):
            z = model.latents(self.sampler.batch(10**8 + i)[:, None])  # batches never used for training
            zs.append(z.reshape(-1, z.shape[-1]))
        model.quantizer.kmeans_init(torch.cat(zs))

    # ------------------------------------------------------------------ steps
    def n_q_for_step(self) -> int:
        rng = np.random.default_rng([self.cfg.seed, self.loop.step, 7])
        return int(rng.choice(self.cfg.n_q_choices))

    def _make_disc(self) -> None:
        self.disc = Discriminators(tuple(self.cfg.mpd_channels), self.cfg.stft_channels)
        self.opt_d = torch.optim.AdamW(
            self.disc.parameters(), self.cfg.optim.disc_lr, betas=tuple(self.cfg.optim.betas)
        )

    def step(self, index: int) -> dict[str, float]:
        loop, cfg = self.loop, self.cfg
        x = self.sampler.batch(index).to(loop.acc.device)
        gan = loop.step >= cfg.gan_start_step
        if gan and not self._disc_prepared:
            if self.disc is None:
                self._make_disc()
            self.disc, self.opt_d = loop.acc.prepare(self.disc, self.opt_d)
            self._disc_prepared = True
        with loop.autocast():
            frozen = cfg.freeze_tokens or (gan and cfg.gan_freeze_tokens)
            out = loop.model(x[:, None], self.n_q_for_step(), frozen_tokens=frozen)
        y = out.wav[:, 0].float()
        losses = {"rec/mel": self.mel(y, x), "rec/complex": self.complex(y, x)}
        if cfg.weights.get("rec/logspec", 0.0) > 0:
            losses["rec/logspec"] = self.logspec(y, x)
        d_grads, stats, ramp = None, {}, 0.0
        if gan:
            d_grads, d_loss = self._adversarial(x, y, losses)
            ramp = self.adv_ramp()
            stats.update({"adv/disc": d_loss, "adv/ramp": ramp})
        commit = cfg.weights["vq/commit"] * out.quant.commit_loss if out.quant.commit_loss.requires_grad else None
        stats.update(self.balancer.backward(losses, y, commit, scale={"adv/gen": ramp, "adv/feat": ramp}))
        loop.optimizer_step()
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
        k = self.loop.step - self.cfg.gan_start_step - self.cfg.disc_warmup_steps
        if k < 0:
            return 0.0
        return min(1.0, (k + 1) / max(1, self.cfg.adv_ramp_steps))

    def _adversarial(self, x: torch.Tensor, y: torch.Tensor, losses: dict) -> tuple[list, float]:
        """One discriminator pass on real and one on generated audio serve both players: the generator's
        adversarial and feature-matching losses are added to ``losses``, and the discriminator's hinge-loss
        gradients are returned (computed now, applied after the generator step). Half the discriminator
        work of separate passes; the discriminator sees ``disc_batch`` clips of the batch."""
        n = min(self.cfg.disc_batch, x.shape[0])
        with self.loop.autocast():
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

    # ------------------------------------------------------------------ state, export, probe
    def state_dict(self) -> dict:
        state = {"balancer": self.balancer.state_dict()}
        if self.disc is not None:
            state["disc"] = self.loop.acc.unwrap_model(self.disc).state_dict()
            state["opt_d"] = self.opt_d.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.balancer.load_state_dict(state["balancer"])
        if "disc" in state:
            self._make_disc()
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])

    def config_diff(self, saved: dict) -> list[str]:
        return architecture_diff(saved, to_dict(self.cfg.model))

    def meta(self) -> dict:
        loop = self.loop
        seg = self.cfg.data.segment_seconds * self.cfg.data.batch_size * loop.acc.num_processes
        return {
            "steps": loop.step,
            "train_hours": round(loop.train_seconds / 3600, 3),
            "audio_hours_seen": round(loop.step * seg / 3600, 2),
            "run": self.cfg.name,
        }

    def export(self, folder: Path, weights: dict[str, torch.Tensor]) -> None:
        save_model(folder, self.model_kind, to_dict(self.cfg.model), weights, meta=self.meta())

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if not self.loop.acc.is_main_process:
            return {}
        if self.probe is None:
            self.probe = HeldOutProbe(self.cfg)
        return self.probe(self.loop.acc.unwrap_model(model), self.loop.out)


class HeldOutProbe:
    """Quick held-out check at every checkpoint: mel distance and SI-SDR at each bitrate on a few eval clips
    (speakers never trained on), and a spectrogram plot."""

    def __init__(self, cfg: TrainConfig):
        from tokenlm.corpus.manifest import load_clips

        from ..audio import load_audio

        self.cfg = cfg
        clips = [c for c in load_clips(cfg.data.root, kinds=["speech_real"], split="eval") if c.duration >= 2.0]
        rng = np.random.default_rng(0)
        pick = rng.choice(len(clips), size=min(cfg.eval_clips, len(clips)), replace=False) if clips else []
        sr = cfg.model.sample_rate
        self.wavs = [
            torch.from_numpy(load_audio(clips[i].path, sr, loudness_db=-23.0).samples[:, : 4 * sr]) for i in pick
        ]
        self.mel = MultiResolutionMelLoss(sr)

    @torch.no_grad()
    def __call__(self, model: Codec, run_dir: Path) -> dict[str, float]:
        if not self.wavs:
            return {}
        model.eval()
        row = {}
        for n_q in sorted(set(self.cfg.n_q_choices)):
            mels, sdrs = [], []
            for w in self.wavs:
                y = model.decode(model.encode(w[None], n_q), w.shape[-1])[0]
                mels.append(self.mel(y, w).item())
                sdrs.append(si_sdr(y[0], w[0]))
            kbps = n_q * math.log2(model.codebook_size) * model.frame_rate / 1000
            row[f"eval/mel@{kbps:g}"] = round(float(np.mean(mels)), 4)
            row[f"eval/sisdr@{kbps:g}"] = round(float(np.mean(sdrs)), 2)
        save_spectrograms(run_dir / "spectrograms.png", model, self.wavs[0])
        return row


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


def trainer(cfg: TrainConfig, out: str | Path) -> training.Trainer:
    """The shared loop with the codec's recipe (then ``resume()`` or ``recipe.start(init)``, and ``fit``)."""
    return training.Trainer(CodecRecipe(cfg), out)


def cli(args) -> int:
    from tokenlm.config import read_yaml

    cls = PeerTrainConfig if read_yaml(args.config).get("arch") == "encodec-peer" else TrainConfig
    cfg = load_config(cls, args.config)
    if args.manifest:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=args.manifest))
    cfg = dataclasses.replace(cfg, seed=args.seed or cfg.seed)
    run_dir = Path(args.out) if args.out else cache_dir() / "runs" / cfg.name
    training.train(CodecRecipe(cfg), run_dir, args.max_steps, args.max_minutes, args.fresh, args.init)
    log.info("checkpoint: %s", run_dir)
    return 0
