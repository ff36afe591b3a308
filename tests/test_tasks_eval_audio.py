"""The audio-task evaluation (``tokenlm eval separate|caption|continue``): its metric helpers on hand-made
inputs with known answers, and a real ``tokenlm eval caption`` run of a tiny model on hand-made manifests."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from test_tasks import make_corpus, tiny_cfg
from tokenlm.tasks.evaluate_audio import (
    audioset_broad_class,
    caption_f1,
    caption_scores,
    chroma_similarity,
    content_words,
    knn_captions,
    score_separation,
    seam_jump,
    separation_sets,
    si_sdr_improvement,
    summarize_separation,
    tempo_difference,
    yamnet_patches,
)

from tokenlm.corpus.manifest import Clip, write_manifest

SR = 16000


def test_si_sdr_improvement_against_an_orthogonal_interferer():
    ref = np.array([1.0, -1.0, 1.0, -1.0] * 100)
    noise = np.array([1.0, 1.0, -1.0, -1.0] * 100)  # zero mean, orthogonal to ref
    mix = ref + 0.5 * noise  # SI-SDR 10 log10(1 / 0.25) = 6.02 dB
    est = ref + 0.1 * noise  # 10 log10(1 / 0.01) = 20 dB
    assert si_sdr_improvement(est, mix, ref) == pytest.approx(20 - 10 * np.log10(4), abs=1e-6)
    assert si_sdr_improvement(3 * est, mix, ref) == pytest.approx(20 - 10 * np.log10(4), abs=1e-6)  # scale-free
    assert si_sdr_improvement(mix, mix, ref) == 0.0


def test_chroma_similarity_of_identical_and_shifted_profiles():
    profile = np.zeros(12)
    profile[[0, 1]] = 1.0  # C and C#
    frames = np.stack([profile * g for g in (1.0, 2.0, 3.0)], axis=1)  # [12, 3]: louder frames, same profile
    assert chroma_similarity(frames, frames) == pytest.approx(1.0)
    assert chroma_similarity(frames, profile) == pytest.approx(1.0)  # a mean vector is accepted too
    assert chroma_similarity(frames, np.roll(frames, 1, axis=0)) == pytest.approx(0.5)  # a semitone up: C# shared
    assert chroma_similarity(frames, np.roll(frames, 6, axis=0)) == pytest.approx(0.0)  # a tritone: nothing shared
    assert tempo_difference(120.0, 60.0) == 0.5 and tempo_difference(100.0, 100.0) == 0.0


def test_seam_jump_of_continuous_and_stepped_signals():
    t = np.arange(2 * SR) / SR
    sine = np.sin(2 * np.pi * 500 * t)  # 100 whole periods in 0.2 s: both sides are the same samples
    seam, span = SR, SR // 5
    smooth = seam_jump(sine, seam, span)
    assert smooth["level_db"] == pytest.approx(0.0, abs=1e-9) and smooth["flux"] == pytest.approx(0.0, abs=1e-9)
    louder = np.where(t < 1.0, sine, 2 * sine)
    step = seam_jump(louder, seam, span)
    assert step["level_db"] == pytest.approx(20 * np.log10(2), abs=1e-9)  # 6.02 dB
    assert step["flux"] == pytest.approx(0.0, abs=1e-9)  # the same spectral shape, only louder
    higher = np.where(t < 1.0, sine, np.sin(2 * np.pi * 2000 * t))
    jump = seam_jump(higher, seam, span)
    assert jump["level_db"] == pytest.approx(0.0, abs=1e-6) and jump["flux"] > 0.99  # disjoint spectra
    with pytest.raises(ValueError):
        seam_jump(sine, span - 1, span)


def test_caption_f1_counts_content_words_only():
    assert content_words("You can hear thunder.") == {"thunder"}
    assert caption_f1("A recording of dog.", "The sound of dog.") == 1.0  # templates differ, the dog is the same
    # {person, speaks, dutch, music} vs {person, speaks, english}: 2 * 2 / (4 + 3)
    assert caption_f1("A person speaks Dutch over music.", "A person speaks English.") == pytest.approx(4 / 7)
    assert caption_f1("Game music.", "") == 0.0 and caption_f1("Game music.", None) == 0.0


def test_caption_scores_broad_class_accuracy():
    refs = ["A person speaks Dutch.", "Game music.", "The sound of rain.", "Two people speak at once."]
    said = ["A synthetic voice speaks English.", "Organ music.", "Game music.", ""]
    # classes: speech/speech right, music/music right, sound/music wrong, speech/sound wrong
    scores = caption_scores(refs, said)
    f1 = (2 * 1 / (3 + 4) + 2 * 1 / (2 + 2) + 0 + 0) / 4
    assert scores == {"clips": 4, "class_accuracy": 0.5, "f1": round(f1, 4), "exact": 0.0}
    assert caption_scores(["Game music."], ["game music"])["exact"] == 1.0


def test_knn_captions_vote_among_the_nearest():
    x = np.array([[0, 0], [0, 1], [10, 10], [10, 11], [10, 12]], float)
    captions = ["a", "a", "b", "c", "c"]
    q = np.array([[10, 10.2], [0, 0.4]])
    assert knn_captions(x, captions, q, 1) == ["b", "a"]
    assert knn_captions(x, captions, q, 3) == ["c", "a"]  # b, c, c: c wins the vote
    assert knn_captions(x, captions, q, 2) == ["b", "a"]  # b, c tie: the nearer wins


def test_yamnet_front_end_and_class_mapping():
    assert yamnet_patches(np.zeros(SR, np.float32)).shape == (1, 1, 96, 64)  # 98 frames: one patch
    assert yamnet_patches(np.zeros(3 * SR, np.float32)).shape == (5, 1, 96, 64)  # 298 frames, hop 48
    np.testing.assert_allclose(yamnet_patches(np.zeros(100, np.float32)), np.log(0.001), rtol=1e-6)
    tone = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    band = int(np.argmax(yamnet_patches(tone)[0, 0].mean(0)))
    assert band == 19  # band centres are 40.8 mel apart from mel(125 Hz) = 190: band 19's is 1009 Hz
    assert [audioset_broad_class(i) for i in (0, 5, 6, 24, 132, 137, 276, 277, 500)] == [
        "speech", "speech", "sound", "music", "music", "music", "music", "sound", "sound",
    ]  # fmt: skip


def _mix(i: int, mixture_type: str, snr: float) -> Clip:
    return Clip(f"m{i}", f"/x/{i}.flac", 3.0, SR, "mixture", "en", snr_db=snr, split="eval",
                extra={"mixture_type": mixture_type})  # fmt: skip


def test_separation_sets_per_type_and_low_snr():
    clips = [_mix(i, t, snr) for i, (t, snr) in enumerate(
        [("speech+music", 1.0), ("speech+music", 8.0), ("speech+music", 9.0), ("speech+sound", 2.5),
         ("speech+sound", 7.0), ("speech+speech", 0.0), ("speech+sound", -3.0)])]  # fmt: skip
    sets = separation_sets(clips, 2, seed=0)
    assert list(sets) == ["speech+music", "speech+sound", "|SNR| <= 3 dB"]
    assert all(len(cs) == 2 for cs in sets.values())
    assert {c.extra["mixture_type"] for c in sets["speech+music"]} == {"speech+music"}
    low = sets["|SNR| <= 3 dB"]
    assert all(abs(c.snr_db) <= 3 for c in low) and "m5" not in {c.id for c in low}  # speech+speech never
    drawn = {c.id for t in ("speech+music", "speech+sound") for c in sets[t]}
    assert low[0].id in drawn  # mixtures already separated come first


def test_silent_separation_output_is_counted_not_averaged():
    ref = np.array([1.0, -1.0, 1.0, -1.0] * 100)
    mix = ref + 0.5 * np.array([1.0, 1.0, -1.0, -1.0] * 100)
    wavs = {"ours": np.zeros_like(ref), "mixture": mix, "ceiling": ref + 0.1 * (mix - ref)}
    scores = score_separation(wavs, mix, ref, english=True, judges=False)
    assert scores["ours"] == {"si_sdr": None, "si_sdri": None, "silent": True}
    loud = {"ours": ref, "mixture": mix, "ceiling": ref}
    rows = [{"text": "x", "systems": scores}, {"text": "x", "systems": score_separation(loud, mix, ref, True, False)}]
    ours = summarize_separation(rows, "ours")
    assert ours["clips"] == 2 and ours["silent"] == 1 and ours["si_sdr"] > 80  # the silent clip is left out
    ceiling = summarize_separation(rows, "ceiling")  # SI-SDRi 20 - 6.02 dB, then a perfect copy (+ ~90 dB)
    assert ceiling["silent"] == 0 and ceiling["si_sdri"] > 40 and summarize_separation(rows, "noisereduce") == {}
    assert summarize_separation(rows, "mixture")["si_sdri"] == 0.0


# --------------------------------------------------------------------------- the command, end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tokenlm.train import train

    out = tmp_path_factory.mktemp("run")
    train(replace(tiny_cfg(make_corpus(tmp_path_factory.mktemp("mt"))), max_steps=2), out, fresh=True)
    return out / "model"


def _caption_corpus(root) -> set[str]:
    """Manifests of noise clips: one eval clip of each kind (and a training sound), like the corpus's."""
    rng = np.random.default_rng(0)

    def clip(name, kind, split="eval", **kw):
        path = root / f"{name}.wav"
        sf.write(path, (rng.standard_normal(24000) * 0.05).astype(np.float32), SR)
        return Clip(name, str(path), 1.5, SR, kind, split=split, **kw)

    parts = {
        "sounds": [clip("s0", "sounds", text="A recording of dog.", labels=("dog",)),
                   clip("s1", "sounds", split="train", text="Thunder can be heard.", labels=("thunder",))],
        "music": [clip("m0", "music", labels=("music", "music21-bach", "organ"))],
        "speech_real": [clip("r0", "speech_real", language="nl", speaker="x", text="een kat")],
        "speech_synthetic": [clip("y0", "speech_synthetic", language="en", speaker="y", text="a cat")],
        "mixtures": [clip("x0", "mixture", language="en", text="a cat", labels=("speech+music", "x"),
                          snr_db=2.0, extra={"mixture_type": "speech+music"})],
    }  # fmt: skip
    for part, clips in parts.items():
        write_manifest(root / "data" / "manifests" / f"{part}.jsonl", clips)
    return {c.id for cs in parts.values() for c in cs if c.split == "eval"}


def test_eval_caption_cli_writes_the_report(tiny_model, tmp_path, monkeypatch):
    from tokenlm.cli import main

    monkeypatch.setenv("TOKENLM_CACHE", str(tmp_path))
    eval_ids = _caption_corpus(tmp_path)
    out = tmp_path / "report"
    args = ["eval", "caption", "--limit", "1", "--model", str(tiny_model), "--judges", "none", "--out", str(out)]
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} == {"caption_eval.json", "caption_eval.md", "caption_eval.png"}
    report = json.loads((out / "caption_eval.json").read_text())
    assert {"task", "model", "n_q", "systems", "notes", "examples"} <= set(report) and report["task"] == "caption"
    assert list(report["systems"]) == ["ours"]  # --judges none: no k-NN or YAMNet rows
    ours = report["systems"]["ours"]
    kinds = {"sounds", "music", "speech_real", "speech_synthetic", "mixture"}
    assert set(ours) == kinds | {"all"} and all(ours[k]["clips"] == 1 for k in kinds) and ours["all"]["clips"] == 5
    assert all(set(r) == {"clips", "class_accuracy", "f1", "exact"} for r in ours.values())
    assert all(0.0 <= r["class_accuracy"] <= 1.0 and 0.0 <= r["f1"] <= 1.0 for r in ours.values())
    examples = {e["id"]: e for e in report["examples"]}
    assert set(examples) <= eval_ids  # held-out clips only (s1 is a training clip)
    assert examples["x0"]["ref"] == "A person speaks English over music." and examples["x0"]["class"] == "speech"
    assert (
        examples["m0"]["ref"] == "Organ music." and "| system | mixture (1) |" in (out / "caption_eval.md").read_text()
    )
