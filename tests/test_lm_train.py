"""LM data shards and training: exact resume, a real 2-process DDP run, the CLI."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from tokenlm.config import load_config
from tokenlm.data import Shards, length_buckets, pack_rows, tokenize_clips, write_shards
from tokenlm.train import TrainConfig, train


def tiny_cfg(**kw):
    cfg = load_config(TrainConfig, "lm/tiny")
    return replace(cfg, **kw)


# --------------------------------------------------------------------------- data


class FakeCodec:
    """An AudioTokenizer stand-in: 2 codebooks, one frame per 160 samples, codes from the signal."""

    sample_rate, frame_rate, n_q, codebook_size = 16000, 100.0, 2, 32

    def encode(self, wav):
        B, C, N = wav.shape
        frames = wav[:, :, : N // 160 * 160].reshape(B, N // 160, 160).abs().mean(-1)
        q0 = (frames * 1000).long() % 32
        return torch.stack([q0, (q0 * 7 + 3) % 32], dim=1)  # [B, 2, T]


def test_tokenize_write_and_read_shards(tmp_path):
    clips = []
    for i, n in enumerate([1600, 3200, 800]):
        p = tmp_path / f"c{i}.wav"
        sf.write(p, (np.random.default_rng(i).standard_normal(n) * 0.1).astype(np.float32), 16000)
        clips.append({"id": f"c{i}", "path": str(p), "text": f"clip {i}", "split": "eval" if i == 2 else "train"})
    codec = FakeCodec()
    items = list(tokenize_clips(clips, codec))
    folder = write_shards(tmp_path / "shards", items, {"n_q": 2, "codebook_size": 32, "frame_rate": 100.0})
    sh = Shards(folder)
    assert len(sh) == 3 and sh.lengths.tolist() == [10, 20, 5]
    for i, (_, codes, _) in enumerate(items):
        assert torch.equal(sh[i].codes, torch.from_numpy(codes).long())
        assert sh[i].info["text"] == f"clip {i}"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


def test_length_buckets_and_packing():
    lengths = np.random.default_rng(0).integers(5, 100, size=200)
    batches = length_buckets(lengths, max_tokens=400, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(len(b) * max(lengths[i] for i in b) <= 400 or len(b) == 1 for b in batches)
    assert batches == length_buckets(lengths, max_tokens=400, seed=1, epoch=0)
    assert batches != length_buckets(lengths, max_tokens=400, seed=1, epoch=1)
    seqs = [(torch.full((2, n), n), torch.ones(2, n, dtype=torch.bool)) for n in (5, 9, 30, 3)]
    rows = list(pack_rows(seqs, seq_len=8, pad_id=0))
    assert all(r.shape == (2, 8) for r, _ in rows) and len(rows) == 6
    flat = torch.cat([r for r, _ in rows], 1)[0]
    assert flat[:47].tolist() == [5] * 5 + [9] * 9 + [30] * 30 + [3] * 3 and (flat[47:] == 0).all()
    assert not rows[-1][1][:, 7].any()


# --------------------------------------------------------------------------- training


def test_loss_falls_and_resume_continues_the_same_curve(tmp_path):
    cfg = tiny_cfg(max_steps=12, eval_every=4, log_every=1, model=replace(tiny_cfg().model, dropout=0.1))
    straight = train(cfg, tmp_path / "a", fresh=True)
    train(cfg, tmp_path / "b", max_steps=5, fresh=True)  # "interrupted" after 5 steps
    torch.manual_seed(1234)  # disturb the RNG: the checkpoint must restore it
    resumed = train(cfg, tmp_path / "b")
    assert [h["step"] for h in resumed.history] == list(range(1, 13))
    a = [h["lm/loss"] for h in straight.history]
    b = [h["lm/loss"] for h in resumed.history]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    evals = [[r["eval/loss"] for r in t.rows if "eval/loss" in r] for t in (straight, resumed)]
    assert len(evals[0]) == 3 and evals[1] == pytest.approx(evals[0])
    assert a[-1] < a[0] - 0.3, a
    assert (tmp_path / "b" / "curves.png").is_file() and (tmp_path / "b" / "model" / "config.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "lr" in r] == list(range(1, 13)) and lines[-1]["step"] == 12


def test_cli_train_lm_then_load_the_model(tmp_path):
    from tokenlm.cli import main
    from tokenlm.pretrained import load

    rc = main(["train", "lm", "--config", "lm/tiny", "--out", str(tmp_path / "r"), "--max-steps", "2", "--fresh"])
    assert rc == 0
    m = load(tmp_path / "r" / "model")
    assert m.cfg.n_streams == 2 and m.vocab.n_q == 2
    assert main(["train", "lm", "--config", str(tmp_path / "nope.yaml")]) == 2


def test_bf16_autocast_training_runs_and_learns(tmp_path):
    cfg = tiny_cfg(max_steps=8, eval_every=0, log_every=1, precision="bf16")
    losses = [h["lm/loss"] for h in train(cfg, tmp_path / "bf16", fresh=True).history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_tokenize_cli_without_a_codec_says_so(tmp_path):
    from tokenlm.cli import main

    manifest = tmp_path / "m.jsonl"
    clip = {
        "id": "a",
        "path": str(tmp_path / "a.wav"),
        "duration": 0.1,
        "sample_rate": 16000,
        "kind": "music",
    }
    manifest.write_text(json.dumps(clip) + "\n")
    rc = main(["tokenize", str(manifest), "-o", str(tmp_path / "sh"), "--codec", str(tmp_path / "no-codec")])
    assert rc == 2 and not (tmp_path / "sh").exists()


def test_train_on_shards_with_fewer_codebooks(tmp_path):
    rng = np.random.default_rng(0)
    items = [
        ({"id": str(i), "split": "eval" if i < 2 else "train"}, rng.integers(0, 32, (3, int(n))), None)
        for i, n in enumerate(rng.integers(10, 80, size=8))
    ]
    write_shards(tmp_path / "sh", items, {"n_q": 3, "codebook_size": 32, "frame_rate": 50.0})
    base = tiny_cfg()
    data = replace(base.data, source="shards", shards=str(tmp_path / "sh"), n_q=2)
    run = train(replace(base, data=data, max_steps=3, eval_every=3), tmp_path / "run", fresh=True)
    assert run.recipe.data.vocab.n_q == 2 and run.recipe.model_cfg.n_streams == 2
    assert np.isfinite(run.rows[-1]["eval/loss"])


def test_tokenize_cli_with_the_bundled_codec_and_semantic_units(tmp_path, capsys):
    """`tokenlm tokenize --semantic`: codec-16k codes and semantic-16k units, both at 50 Hz, in one shard folder."""
    from tokenlm.cli import main

    manifest = tmp_path / "m.jsonl"
    rows = []
    for i, n in enumerate([16000, 8000]):
        p = tmp_path / f"s{i}.wav"
        t = np.arange(n) / 16000
        sf.write(p, (0.1 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32), 16000)
        rows.append({"id": f"s{i}", "path": str(p), "duration": n / 16000, "sample_rate": 16000, "kind": "music"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["tokenize", str(manifest), "-o", str(tmp_path / "sh"), "--semantic"]) == 0
    sh = Shards(tmp_path / "sh")
    assert sh.meta["semantic"] == "semantic-16k" and sh.meta["semantic_frame_rate"] == 50.0
    assert sh.lengths.tolist() == [50, 25]
    for i, frames in enumerate([50, 25]):
        item = sh[i]
        assert item.codes.shape == (12, frames) and int(item.codes.max()) < 1024
        assert item.semantic is not None and item.semantic.shape == (frames,) and int(item.semantic.max()) < 100
