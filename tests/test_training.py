"""The shared training loop (tokenlm.training) with a toy recipe: schedule, exact resume, stop on SIGTERM, weight
average, gradient accumulation."""

import json
import math
import os
import signal
from dataclasses import dataclass, field, replace

import pytest
import torch
import torch.nn.functional as F

from tokenlm.checkpoint import load_state, load_weights, save_model
from tokenlm.config import to_dict
from tokenlm.errors import TokenlmError
from tokenlm.training import LoopConfig, OptimConfig, Recipe, lr_factor, make_optimizer, train


@dataclass(frozen=True)
class ToyModelConfig:
    width: int = 8
    dropout: float = 0.1


@dataclass(frozen=True)
class ToyConfig(LoopConfig):
    name: str = "toy"
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2, warmup_steps=2))
    precision: str = "fp32"
    max_steps: int = 100
    log_every: int = 1
    checkpoint_minutes: float = 100.0
    rows: int = 8  # rows per batch


class Toy(Recipe):
    """Regress the sum of 4 random inputs; batch ``i`` is a pure function of ``i``."""

    kind = "toy"
    curves = {"mse": ("toy/mse", "eval/mse")}

    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg

    def build(self):
        w, p = self.cfg.model.width, self.cfg.model.dropout
        model = torch.nn.Sequential(torch.nn.Linear(4, w), torch.nn.Dropout(p), torch.nn.Linear(w, 1))
        model.register_buffer("batches", torch.zeros(()))  # a buffer, like the codec's codebooks
        return model, make_optimizer(model.parameters(), self.cfg.optim)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(self.cfg.rows, 4, generator=torch.Generator().manual_seed(index))
        return x, x.sum(1, keepdim=True)

    def loss(self, index):
        x, y = self.batch(index)
        self.loop.raw_model.batches += 1
        with self.loop.autocast():
            loss = F.mse_loss(self.loop.model(x), y)
        return loss, {"toy/mse": loss.item()}

    @torch.no_grad()
    def evaluate(self, model):
        x, y = self.batch(10**6)
        return {"eval/mse": F.mse_loss(model.eval()(x), y).item()}

    def export(self, folder, weights):
        save_model(folder, "toy", to_dict(self.cfg.model), weights, meta={"step": self.loop.step})


class PairToy(Toy):
    """Batches ``2i`` and ``2i + 1`` of Toy as one batch: what ``grad_accum: 2`` must equal."""

    def loss(self, index):
        (x0, y0), (x1, y1) = self.batch(2 * index), self.batch(2 * index + 1)
        loss = F.mse_loss(self.loop.model(torch.cat([x0, x1])), torch.cat([y0, y1]))
        return loss, {"toy/mse": loss.item()}


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.raw_model.named_parameters()}


def test_schedule_warmup_constant_cosine_and_warm_restart():
    codec = OptimConfig(warmup_steps=10, decay_start_step=100, decay_steps=50, min_lr_ratio=0.1)
    f = lambda s, warm=0: lr_factor(codec, 10**9, s, warm)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(99) == 1.0
    assert f(100) == pytest.approx(1.0) and f(125) == pytest.approx(0.55) and f(150) == pytest.approx(0.1)
    assert f(10**6) == pytest.approx(0.1)
    # a warm start at step 120 redoes the warm-up from there, on top of the decay
    assert f(120, 120) == pytest.approx(0.1 * f(120)) and f(129, 120) == pytest.approx(f(129))
    # the LM's: warm-up, then a cosine to max_steps (decay_start_step / decay_steps null)
    lm = OptimConfig(warmup_steps=4, min_lr_ratio=0.2)
    g = lambda s: lr_factor(lm, 14, s)  # noqa: E731
    assert [g(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert g(9) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.5))) and g(14) == g(99) == pytest.approx(
        0.2
    )


def test_the_optimiser_follows_the_schedule(tmp_path):
    cfg = ToyConfig(optim=OptimConfig(lr=0.1, warmup_steps=4), max_steps=8)
    t = train(Toy(cfg), tmp_path / "r", max_steps=6)
    lrs = [r["lr"] for r in t.history]  # the rate each step used
    assert lrs == pytest.approx([0.1 * lr_factor(cfg.optim, 8, s) for s in range(6)])


def test_resume_is_exact(tmp_path):
    cfg = ToyConfig()
    straight = train(Toy(cfg), tmp_path / "a", max_steps=4)
    train(Toy(cfg), tmp_path / "b", max_steps=2)
    torch.manual_seed(99)  # disturb the RNG (dropout): the checkpoint must restore it
    resumed = train(Toy(cfg), tmp_path / "b", max_steps=2)
    assert resumed.step == 4
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["toy/mse"] for r in straight.history] == [r["toy/mse"] for r in resumed.history]
    rows = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "lr" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/mse" in r] == [2, 4]  # at each end of training
    assert (tmp_path / "b" / "curves.png").is_file() and load_state(tmp_path / "b" / "state.safetensors")["step"] == 4


def test_resume_refuses_another_model_and_fresh_starts_over(tmp_path):
    train(Toy(ToyConfig()), tmp_path / "r", max_steps=1)
    wider = ToyConfig(model=ToyModelConfig(width=16))
    with pytest.raises(TokenlmError, match="another model config .width"):
        train(Toy(wider), tmp_path / "r", max_steps=1)
    assert train(Toy(wider), tmp_path / "r", max_steps=1, fresh=True).step == 1


def test_sigterm_finishes_the_step_checkpoints_and_stops(tmp_path):
    class Interrupted(Toy):
        def step(self, index):
            stats = super().step(index)
            if index == 1:  # the second step
                os.kill(os.getpid(), signal.SIGTERM)
            return stats

    t = train(Interrupted(ToyConfig()), tmp_path / "r", max_steps=50)
    assert t.step == 2 and load_state(tmp_path / "r" / "state.safetensors")["step"] == 2
    assert load_weights(tmp_path / "r" / "model") and not [r for r in t.rows if "eval/mse" in r]  # no held-out check
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_weight_average_is_exported_and_resumes_exactly(tmp_path):
    cfg = ToyConfig(weight_ema=0.5, model=ToyModelConfig(dropout=0.0))
    t = train(Toy(cfg), tmp_path / "a", max_steps=2)
    name = "2.weight"
    e2, p2 = t.ema[name].clone(), t.raw_model.state_dict()[name].clone()
    t.fit(max_steps=1)
    p3 = t.raw_model.state_dict()[name]
    assert not torch.equal(e2, p2) and torch.allclose(t.ema[name], 0.5 * e2 + 0.5 * p3)
    exported = load_weights(tmp_path / "a" / "model")
    assert torch.allclose(exported[name], t.ema[name])  # the average is exported, buffers as they are
    assert exported["batches"] == 3 and "batches" not in t.ema
    train(Toy(cfg), tmp_path / "b", max_steps=2)
    b = train(Toy(cfg), tmp_path / "b", max_steps=1)
    assert all(torch.equal(t.ema[k], b.ema[k]) for k in t.ema)


def test_gradient_accumulation_is_the_mean_over_micro_batches(tmp_path):
    cfg = ToyConfig(model=ToyModelConfig(dropout=0.0))
    accumulated = train(Toy(replace(cfg, grad_accum=2)), tmp_path / "a", max_steps=3)
    paired = train(PairToy(cfg), tmp_path / "b", max_steps=3)
    a, b = weights(accumulated), weights(paired)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert load_state(tmp_path / "a" / "state.safetensors")["batches_seen"] == 6


def test_checkpoints_every_n_minutes_and_held_out_every_n_steps(tmp_path):
    t = train(Toy(ToyConfig(checkpoint_minutes=0.0, eval_every=2, log_every=2)), tmp_path / "r", max_steps=5)
    rows = [json.loads(x) for x in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "lr" in r] == [2, 4, 5]  # every 2 steps, and the last one
    assert [r["step"] for r in rows if "eval/mse" in r] == [2, 4]
    assert set(t.history[0]) >= {"step", "lr", "seconds_per_step", "toy/mse", "optim/grad_norm"}
