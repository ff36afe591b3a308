"""Semantic tokenizer: features, k-means, masking, metrics, espeak corpus, tiny train/resume/export, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenlm.codecs.kmeans import kmeans, nearest
from tokenlm.codecs.semantic.evaluate import speaker_invariance
from tokenlm.codecs.semantic.model import SemanticConfig, SemanticTokenizer, mfcc_features, span_mask
from tokenlm.codecs.semantic.train import SemanticTrainConfig, train

from tokenlm.checkpoint import load_state
from tokenlm.cli import main
from tokenlm.config import load_config
from tokenlm.corpus.espeak_corpus import build_espeak_corpus, is_held_out_voice, say
from tokenlm.corpus.manifest import Clip, read_manifest
from tokenlm.corpus.phones import frame_labels, read_phones
from tokenlm.errors import TokenlmError
from tokenlm.metrics import dedup, edit_distance, pnmi_stats
from tokenlm.pretrained import load
from tokenlm.utils import seed_everything

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A stitch in time saves nine, they said.",
    "Every cloud has a silver lining today.",
    "Return the number of bytes written to the file.",
    "All futures must share the same event loop.",
    "Seven small birds sat on the old fence.",
    "We will meet again in the morning.",
    "Open the window and let the fresh air in.",
    "This value is ignored by the parser.",
]

TINY = SemanticConfig(
    n_mels=40, dim=32, n_layers=2, n_heads=2, ff_mult=2, conv_pos_kernel=7, n_targets=8, codebook_size=8, unit_layer=1
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 training clips (training voices) + 2 held-out sentences x 2 held-out voices, with phone files."""
    return build_espeak_corpus(tmp_path_factory.mktemp("espeak"), 8, 2, voices_per_eval=2, sentences=SENTENCES)


def test_tokenizer_shapes_and_contract():
    tok = SemanticTokenizer(TINY).eval()
    for n in (1, 319, 320, 321, 16000):
        codes = tok.encode(torch.randn(2, 1, n) * 0.1)
        assert codes.shape == (2, 1, -(-n // 320)) and codes.dtype == torch.int64
        assert 0 <= int(codes.min()) and int(codes.max()) < TINY.codebook_size
    assert (tok.n_q, tok.sample_rate, tok.frame_rate) == (1, 16000, 50.0)
    assert "centroids" in tok.state_dict()
    stereo = torch.randn(1, 2, 8000) * 0.1
    assert torch.equal(tok.encode(stereo), tok.encode(stereo.mean(1, keepdim=True)))
    with pytest.raises(TokenlmError, match="cannot be decoded"):
        tok.decode(torch.zeros(1, 1, 5, dtype=torch.long))
    with pytest.raises(TokenlmError):
        tok.encode(torch.randn(8000))


def test_kmeans_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(500, 2, generator=g) for c in centres])
    c = kmeans(x, 4, iters=5, batch_size=256)
    dist = torch.cdist(centres, c)
    assert dist.min(1).values.max() < 0.2  # every true centre has a centroid close by
    truth = torch.arange(4).repeat_interleave(500)
    assign = nearest(x, c)
    for k in range(4):  # each blob maps to one cluster
        assert (assign[truth == k] == assign[truth == k][0]).all()
    with pytest.raises(TokenlmError):
        kmeans(x[:3], 4, batch_size=256)


def test_span_mask_makes_spans():
    m = span_mask(8, 200, 0.05, 5, torch.Generator().manual_seed(0))
    assert m.shape == (8, 200) and m.dtype == torch.bool and m.any(1).all()
    for row in m:  # every run of masked frames is at least one span long (unless cut by the end)
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, row.int().numpy(), 0])))[::2]
        assert runs.min() >= 5 or row[-1]


def test_mfcc_features_shape_and_normalisation():
    logmel = torch.randn(2, 80, 50)
    f = mfcc_features(logmel)
    assert f.shape == (2, 50, 39)
    assert torch.allclose(f.mean(1), torch.zeros(2, 39), atol=1e-4)


def test_pnmi_and_purity():
    phones = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    perfect = np.array([0] * 50 + [1] * 30 + [2] * 20)
    s = pnmi_stats(perfect, phones)
    assert s["pnmi"] == pytest.approx(1.0) and s["phone_purity"] == pytest.approx(1.0)
    split = np.array([0] * 25 + [3] * 25 + [1] * 30 + [2] * 20)  # more units than phones: still pure
    s = pnmi_stats(split, phones)
    assert s["pnmi"] == pytest.approx(1.0) and s["phone_purity"] == 1.0 and s["cluster_purity"] == 0.75
    assert pnmi_stats(np.zeros(100, int), phones)["pnmi"] == 0.0
    rng = np.random.default_rng(0)
    assert pnmi_stats(rng.integers(0, 3, 30000), list(rng.choice(["a", "b"], 30000)))["pnmi"] < 0.01


def test_edit_distance_and_invariance():
    assert edit_distance(np.array([1, 2, 3]), np.array([1, 2, 3])) == 0
    assert edit_distance(np.array([1, 2, 3, 4]), np.array([2, 3, 5])) == 2
    assert edit_distance(np.array([], int), np.array([7, 7])) == 2
    assert list(dedup(np.array([1, 1, 5, 5, 5, 2, 1]))) == [1, 5, 2, 1]

    class C:
        def __init__(self, speaker, sentence):
            self.speaker, self.sentence = speaker, sentence

    clips = [C("v1", "s1"), C("v2", "s1"), C("v1", "s2"), C("v2", "s2")]
    units = [np.array([1, 2, 3]), np.array([1, 2, 3]), np.array([7, 8, 9]), np.array([7, 8, 9])]
    r = speaker_invariance(units, clips)
    assert r["same_sentence_cross_voice"] == 0.0 and r["diff_sentence_same_voice"] == 1.0


def test_espeak_phones_cover_the_clip(tmp_path):
    utt = say("Seven small birds.", "en-us+m3")
    assert utt.sample_rate == 22050 and len(utt.samples) > 0.5 * utt.sample_rate
    starts, ends = [p[0] for p in utt.phones], [p[1] for p in utt.phones]
    assert starts[0] == 0.0 and ends[-1] == pytest.approx(len(utt.samples) / utt.sample_rate)
    assert all(e > s for s, e in zip(starts, ends)) and starts[1:] == ends[:-1]
    assert {"s", "b"} <= {p[2] for p in utt.phones}
    labels = frame_labels(utt.phones, 50.0, 10)
    assert labels[0] == "_" and len(labels) == 10
    with pytest.raises(TokenlmError):
        say("x", "no-such-voice")


def _espeak_clip(i: int, accent: str, duration: float = 2.0, speaker: str = "espeak-f") -> Clip:
    extra = {"accent": accent, "variant": "f4", "i": i}
    return Clip(f"c{i}", "x.wav", duration, 16000, "speech_synthetic", speaker=speaker, source="espeak", extra=extra)


def test_corpus_splits_hold_out_voices(corpus):
    rows = read_manifest(corpus)  # an ordinary manifest, phone files in the corpus format
    train_v = {r.speaker for r in rows if r.split == "train"}
    eval_rows = [r for r in rows if r.split == "eval"]
    assert len(eval_rows) == 4 and not train_v & {r.speaker for r in eval_rows}
    assert all(r.kind == "speech_synthetic" and r.source == "espeak" for r in rows)
    assert all(read_phones(r.phones) for r in rows)
    assert is_held_out_voice(_espeak_clip(0, "en-gb-x-rp")) and not is_held_out_voice(_espeak_clip(0, "en-us"))
    assert all(is_held_out_voice(r) for r in eval_rows)
    by_speaker = [Clip("e", "x.wav", 1.0, 16000, "speech_synthetic", speaker=r.speaker) for r in eval_rows]
    assert all(is_held_out_voice(c) for c in by_speaker)  # no voice settings: the speaker name says it


def test_train_resume_export(corpus, tmp_path):
    cfg = load_config(SemanticTrainConfig, "semantic/tiny")
    straight = tmp_path / "straight"
    seed_everything(0)
    train(cfg, straight, max_steps=6, fresh=True, manifest=str(corpus))
    resumed = tmp_path / "resumed"
    seed_everything(0)
    train(cfg, resumed, max_steps=3, fresh=True, manifest=str(corpus))
    folder = train(cfg, resumed, max_steps=3, manifest=str(corpus))
    a, b = load_state(straight / "state.safetensors"), load_state(resumed / "state.safetensors")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:  # a resumed run repeats the uninterrupted one (data, masks, dropout)
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    tok = load(folder)
    assert isinstance(tok, SemanticTokenizer) and tok.pretrained_meta["step"] == 6
    assert tok.centroids.abs().sum() > 0  # the unit k-means was fitted
    assert tok.encode(torch.randn(1, 1, 4000) * 0.1).shape == (1, 1, 13)
    assert (tmp_path / "straight" / "train_log.jsonl").is_file()


def test_cli_train_and_eval(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "semantic",
                "--config",
                "semantic/tiny",
                "--manifest",
                str(corpus),
                "--out",
                str(out),
                "--max-steps",
                "2",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "semantic",
                "--model",
                str(out / "model"),
                "--manifest",
                str(corpus),
                "--json",
                "--probe",
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    for key in ("pnmi", "pnmi_mfcc_kmeans", "phone_purity", "cluster_purity", "speaker_invariance"):
        assert key in report
    assert 0.0 <= report["pnmi"] <= 1.0 and report["eval_clips"] == 4
    assert report["eval_voices_seen_in_training"] == []
    assert 0.0 <= report["probe"]["model"]["pnmi"] <= 1.0 and 0.0 <= report["probe"]["mfcc_context"]["accuracy"] <= 1.0
    assert "Supervised phone probe" in (tmp_path / "report" / "semantic_eval.md").read_text()
    assert (tmp_path / "report" / "units.png").stat().st_size > 1000
    assert main(["eval", "semantic", "--model", str(tmp_path / "nothing")]) == 2


def test_bundle_fp16_with_card(tmp_path, monkeypatch, weights_dir):
    import tokenlm.codecs.semantic.bundle as sb

    import tokenlm.pretrained as pretrained
    from tokenlm.checkpoint import save_model
    from tokenlm.config import to_dict

    tok = SemanticTokenizer(TINY)
    src = save_model(tmp_path / "src", "semantic", to_dict(TINY), tok.state_dict(), meta={"step": 3, "iteration": 1})
    si = {"same_sentence_cross_voice": 0.5, "diff_sentence_same_voice": 0.8, "ratio": 0.625}
    report = {
        "pnmi": 0.5,
        "pnmi_mfcc_kmeans": 0.4,
        "phone_purity": 0.4,
        "cluster_purity": 0.3,
        "frame_rate": 50.0,
        "speaker_invariance": si,
        "eval_clips": 4,
        "eval_frames": 400,
        "eval_voices": ["v1", "v2"],
        "mfcc_kmeans": {"pnmi": 0.4, "phone_purity": 0.3, "cluster_purity": 0.2, "speaker_invariance": si},
    }
    dest = sb.bundle(src, report, "tiny test run", name="semantic-test")
    card = (dest / "README.md").read_text()
    assert "| PNMI | 0.500 | 0.400 |" in card and "tiny test run" in card
    assert "probe" not in card and "normalisation" not in card
    report["probe"] = {
        "train_clips": 6,
        "model": {"pnmi": 0.7, "phone_purity": 0.72, "accuracy": 0.71},
        "mfcc_context": {"pnmi": 0.6, "phone_purity": 0.66, "accuracy": 0.65},
    }
    normed = save_model(tmp_path / "normed", "semantic", {**to_dict(TINY), "unit_norm": "cmvn"}, tok.state_dict())
    card2 = (sb.bundle(normed, report, "normed run", name="semantic-test2") / "README.md").read_text()
    assert "| this model's unit layer | 0.700 | 0.720 | 0.710 |" in card2 and "on 6 training-voice clips" in card2
    assert "after per-utterance mean/variance normalisation" in card2
    loaded = pretrained.load("semantic-test")
    assert loaded.pretrained_meta["eval"]["pnmi"] == 0.5
    x = torch.randn(1, 1, 3200) * 0.1
    assert loaded.encode(x).shape == (1, 1, 10)
    from safetensors import safe_open

    with safe_open(str(dest / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("encoder.mask_emb").dtype == torch.float16


def test_iteration2_uses_teacher_layer_and_resumes(corpus, tmp_path):
    cfg1 = load_config(SemanticTrainConfig, "semantic/tiny")
    teacher = train(cfg1, tmp_path / "it1", max_steps=2, fresh=True, manifest=str(corpus))
    cfg2 = load_config(SemanticTrainConfig, "semantic/tiny", iteration=2, target_layer=2, model={"n_targets": 6})
    out = tmp_path / "it2"
    train(cfg2, out, max_steps=0, fresh=True, init=str(teacher), manifest=str(corpus))
    w = "encoder.layers.0.linear1.weight"
    assert torch.equal(load_state(out / "state.safetensors")["model"][w], load(teacher).state_dict()[w])  # warm start
    train(cfg2, out, max_steps=2, manifest=str(corpus))
    st = load_state(out / "state.safetensors")
    assert "teacher" in st and st["targets"].shape == (6, TINY.dim)  # centroids live in the teacher's space
    folder = train(cfg2, out, max_steps=1, manifest=str(corpus))
    assert load(folder).pretrained_meta == {**load(folder).pretrained_meta, "step": 3, "iteration": 2}
    with pytest.raises(TokenlmError, match="--init"):
        train(cfg2, tmp_path / "no_teacher", max_steps=1, fresh=True, manifest=str(corpus))


def test_vtlp_warp_moves_spectra_along_frequency():
    from tokenlm.codecs.semantic.model import warp_frequency

    power = torch.rand(2, 257, 5)
    same = warp_frequency(power, torch.ones(2))
    assert torch.allclose(same, power)
    up = warp_frequency(power, torch.tensor([2.0, 0.5]))
    assert torch.allclose(up[0, 20], power[0, 10]) and torch.allclose(up[0, 21], (power[0, 10] + power[0, 11]) / 2)
    assert torch.allclose(up[1, 10], power[1, 20]) and torch.allclose(up[1, 200], power[1, 256])  # past Nyquist


def test_vtlp_reaches_the_students_input_only(tmp_path):
    cfg = SemanticConfig(dim=32, n_layers=2, n_heads=2, n_targets=8, codebook_size=8, unit_layer=1)
    model = SemanticTokenizer(cfg).eval()  # no dropout
    wav, mask = torch.randn(2, 3200), torch.zeros(2, 10, dtype=torch.bool)
    a, b = model(wav, mask), model(wav, mask, torch.tensor([1.1, 0.9]))
    assert a.shape == b.shape == (2, 10, 8) and not torch.allclose(a, b)
    assert torch.allclose(model(wav, mask, torch.ones(2)), a, atol=1e-5)


def test_mfcc_baseline_is_fitted_on_training_voices_only(tmp_path, monkeypatch):
    """The floor's k-means sees training clips like the model's units do: never a held-out voice or a stub."""
    from tokenlm.codecs.semantic.evaluate import baseline_fit_rows

    from tokenlm.corpus.espeak_corpus import EVAL_ACCENTS, TRAIN_ACCENTS

    monkeypatch.setenv("TOKENLM_CACHE", str(tmp_path))  # no corpus built: espeak rows only
    rows = [_espeak_clip(i, TRAIN_ACCENTS[i % len(TRAIN_ACCENTS)]) for i in range(40)]
    rows += [_espeak_clip(100 + i, EVAL_ACCENTS[0]) for i in range(40)]
    rows += [_espeak_clip(200 + i, TRAIN_ACCENTS[0], duration=0.2) for i in range(40)]
    picked = baseline_fit_rows(rows, 30)
    assert len(picked) == 30 and len({r.extra["i"] for r in picked}) == 30
    assert all(r.extra["i"] < 40 for r in picked)


def test_phone_probe_reads_phones_from_informative_features_only():
    from tokenlm.codecs.semantic.evaluate import context_frames, phone_probe

    rng = np.random.default_rng(0)
    phones = ["a", "b", "c", "d"]

    def clip(informative: bool):
        labels = [phones[i] for i in rng.integers(0, 4, 200)]
        f = torch.randn(200, 8) * 0.3
        if informative:
            f[:, :4] += torch.nn.functional.one_hot(torch.tensor([phones.index(p) for p in labels]), 4).float()
        return f, labels

    good = phone_probe([clip(True) for _ in range(5)], [clip(True) for _ in range(3)], steps=200)
    noise = phone_probe([clip(False) for _ in range(5)], [clip(False) for _ in range(3)], steps=200)
    assert good["pnmi"] > 0.8 and good["accuracy"] > 0.9
    assert noise["pnmi"] < 0.1 and noise["accuracy"] < 0.4
    f = torch.arange(5.0)[:, None]
    ctx = context_frames(f, k=1)
    assert ctx.shape == (5, 3) and ctx[0].tolist() == [0, 0, 1] and ctx[4].tolist() == [3, 4, 4]


def test_unit_norm_cmvn_normalises_units_and_targets(corpus, tmp_path):
    from dataclasses import replace

    tok = SemanticTokenizer(replace(TINY, unit_norm="cmvn")).eval()
    raw = SemanticTokenizer(TINY).eval()
    raw.load_state_dict(tok.state_dict())
    wav = torch.randn(2, 8000) * 0.1
    with torch.no_grad():
        h, r = tok.features(wav), raw.features(wav)
    assert h.mean(1).abs().max() < 1e-4 and (h.std(1, correction=0) - 1).abs().max() < 1e-3  # per clip, over time
    assert r.mean(1).abs().max() > 1e-2  # the raw layer is not normalised, so the check above can fail
    with pytest.raises(TokenlmError, match="unit_norm"):
        SemanticTokenizer(replace(TINY, unit_norm="l2"))
    # a teacher without normalisation gives targets in the normalised space when the student's config asks for it
    cfg1 = load_config(SemanticTrainConfig, "semantic/tiny")
    teacher = train(cfg1, tmp_path / "it1", max_steps=1, fresh=True, manifest=str(corpus))
    cfg2 = load_config(SemanticTrainConfig, "semantic/tiny", iteration=2, model={"n_targets": 6, "unit_norm": "cmvn"})
    folder = train(cfg2, tmp_path / "it2", max_steps=1, fresh=True, init=str(teacher), manifest=str(corpus))
    st = load_state(tmp_path / "it2" / "state.safetensors")
    assert "'unit_norm': 'cmvn'" in st["teacher_config"]
    assert load(folder).cfg.unit_norm == "cmvn"


@pytest.mark.parametrize(
    "name",
    [f"semantic/{n}" for n in ("tiny", "small", "base")]
    + [f"experiments/semantic/{n}" for n in ("small_v2", "small_it2", "small_it2_vtlp", "small_it3", "medium_it4")],
)
def test_shipped_semantic_configs_load(name):
    cfg = load_config(SemanticTrainConfig, name)
    assert cfg.model.sample_rate == 16000 and cfg.name.startswith("semantic-")
