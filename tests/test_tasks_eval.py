"""The task evaluation (``tokenlm eval asr|tts|clone``): text scores, the closest-speaker rule, trial drawing,
and a real ``tokenlm eval asr`` run of a tiny model on a hand-made held-out corpus (judges off)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from test_tasks import make_corpus, tiny_cfg
from tokenlm.tasks.evaluate import (
    clone_trials,
    closest_speaker,
    error_rates,
    judge_clone,
    normalize_text,
    per_language,
    speaker_references,
)

from tokenlm.corpus.manifest import Clip, write_manifest


def test_normalize_text():
    assert normalize_text("Hello, World -- it's ME!") == "hello world its me"
    assert normalize_text("  Één “quote”…\tand\nmore ") == "één quote and more"
    assert normalize_text(None) == ""


def test_error_rates_are_corpus_level_on_normalised_text():
    r = error_rates(["the cat sat", "A dog."], ["The cat, sat!", "a log"])
    assert r == {"wer": 0.2, "cer": 0.0625, "clips": 2, "words": 5}  # 1 of 5 words, 1 of 16 characters
    assert error_rates(["!!!", "a b"], ["x", ""]) == {"wer": 1.0, "cer": 1.0, "clips": 1, "words": 2}
    assert error_rates([], [])["wer"] is None


def test_per_language_aggregates_only_the_rows_a_system_transcribed():
    rows = [
        {"language": "en", "ref": "the cat sat", "hyp": {"ours": "the cat", "judge": "the cat sat"}},
        {"language": "nl", "ref": "een kat", "hyp": {"ours": "een kat zat"}},
    ]
    ours = per_language(rows, "ours")
    assert ours["en"]["wer"] == pytest.approx(1 / 3, abs=1e-4) and ours["en"]["cer"] == pytest.approx(4 / 11, abs=1e-4)
    assert ours["nl"]["wer"] == 0.5 and ours["nl"]["cer"] == pytest.approx(4 / 7, abs=1e-4)
    assert ours["all"] == {"wer": 0.4, "cer": pytest.approx(8 / 18, abs=1e-4), "clips": 2, "words": 5}
    assert per_language(rows, "judge") == {"en": {"wer": 0.0, "cer": 0.0, "clips": 1, "words": 3}}  # no "all"


def test_closest_speaker_uses_cosine_against_mean_references():
    refs = speaker_references(
        {
            "a": [np.array([1.0, 0, 0])],
            "b": [np.array([0, 1.0, 0])],
            "c": [np.array([1.0, 0, 0]), np.array([0, 1.0, 0])],
        }
    )
    np.testing.assert_allclose(refs["c"], [2**-0.5, 2**-0.5, 0])  # mean of its clips, normalised
    assert closest_speaker(np.array([0.9, 0.5, 0]), refs) == "c"
    assert closest_speaker(10 * np.array([0.9, 0.5, 0]), refs) == "c"  # scale does not matter
    assert closest_speaker(np.array([0.9, 0.1, 0]), refs) == "a"
    fake_embed = lambda wav: np.array([wav.mean(), 1 - wav.mean(), 0])  # noqa: E731
    wav = np.full(16000, 0.9, np.float32)
    out = judge_clone(fake_embed, wav, np.array([1.0, 0, 0]), refs, "a")
    assert out["closest"] and out["similarity"] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert judge_clone(fake_embed, wav[:100], np.array([1.0, 0, 0]), refs, "a")["similarity"] == 0.0  # no speech


def _clip(i: int, speaker: str, duration: float, text: str | None = "words") -> Clip:
    return Clip(f"{speaker}/{i}", f"/x/{i}.wav", duration, 16000, "speech_real", "nl", speaker, text, split="eval")


def test_clone_trials_draw_three_distinct_clips_and_short_prompts():
    by_speaker = {
        "s1": [_clip(0, "s1", 2.0), _clip(1, "s1", 6.0), _clip(2, "s1", 5.0), _clip(3, "s1", 3.0, text=None)],
        "s2": [_clip(4, "s2", 2.0), _clip(5, "s2", 2.5)],  # two transcribed clips: no trial
        "s3": [_clip(6, "s3", 0.5), _clip(7, "s3", 6.0), _clip(8, "s3", 7.0)],  # no 1-4 s prompt: no trial
    }
    trials = clone_trials(by_speaker, 4, seed=0)
    assert len(trials) == 4 and {t["speaker"] for t in trials} == {"s1"}
    for t in trials:
        assert t["prompt"].id == "s1/0" and len({t[k].id for k in ("prompt", "text", "target")}) == 3
        assert t["text"].text and t["target"].text
    assert [t["text"].id for t in trials] == [t["text"].id for t in clone_trials(by_speaker, 4, seed=0)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tokenlm.train import train

    out = tmp_path_factory.mktemp("run")
    train(replace(tiny_cfg(make_corpus(tmp_path_factory.mktemp("mt"))), max_steps=2), out, fresh=True)
    return out / "model"


def _held_out_corpus(root):
    """Manifests with noise clips: en (synthetic) and nl (real) eval clips, and one training clip."""
    rng = np.random.default_rng(0)
    clips = []
    for i, (kind, lang, split) in enumerate(
        [
            ("speech_synthetic", "en", "eval"),
            ("speech_real", "nl", "eval"),
            ("speech_real", "nl", "eval"),
            ("speech_real", "nl", "train"),
        ]
    ):
        path = root / f"c{i}.wav"
        sf.write(path, (rng.standard_normal(24000) * 0.05).astype(np.float32), 16000)
        clips.append(Clip(f"c{i}", str(path), 1.5, 16000, kind, lang, f"spk-{lang}", "the cat sat", split=split))
    for part in ("speech_real", "speech_synthetic"):
        write_manifest(root / "data" / "manifests" / f"{part}.jsonl", [c for c in clips if c.kind == part])
    return {c.id for c in clips if c.split == "eval"}


def test_eval_asr_cli_writes_the_report(tiny_model, tmp_path, monkeypatch):
    from tokenlm.cli import main

    monkeypatch.setenv("TOKENLM_CACHE", str(tmp_path))
    eval_ids = _held_out_corpus(tmp_path)
    out = tmp_path / "report"
    args = ["eval", "asr", "--limit", "1", "--model", str(tiny_model), "--judges", "none", "--out", str(out)]
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} == {"asr_eval.json", "asr_eval.md", "asr_eval.png"}
    report = json.loads((out / "asr_eval.json").read_text())
    assert {"task", "model", "systems", "speed", "notes", "language_accuracy", "examples"} <= set(report)
    assert list(report["systems"]) == ["ours"]  # --judges none: no Whisper or pocketsphinx rows
    ours = report["systems"]["ours"]
    assert set(ours) == {"en", "nl", "all"} and ours["nl"]["clips"] == 1  # --limit is per language
    assert all(0.0 <= ours[k]["wer"] for k in ours) and report["speed"]["rtf"] > 0
    assert {e["id"] for e in report["examples"]} <= eval_ids  # held-out clips only
    assert "| ours | nl | 1 |" in (out / "asr_eval.md").read_text()
    assert main(["eval", "asr", "--model", "no-such-model", "--judges", "none", "--out", str(out)]) == 2
