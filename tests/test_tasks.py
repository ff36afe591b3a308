"""Task layouts, multitask batches, the pipeline and the task commands, on a tiny token corpus."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tokenlm import layout as L
from tokenlm.config import load_config
from tokenlm.data import TEXT_MODEL, write_shards
from tokenlm.errors import TokenlmError
from tokenlm.tasks.base import Example, get_task
from tokenlm.tasks.mixture import MultitaskSource
from tokenlm.train import TrainConfig
from tokenlm.vocab import train_sentencepiece

WORDS = "the cat sat on a mat and sang de kat zat op een mat a pes spal na rohozce".split()
N_Q, CB = 3, 1024  # codebook size of codec-16k, so the pipeline can decode with it


def make_corpus(root: Path, n: int = 40) -> Path:
    """Shards of random codes: speech with transcripts (4 speakers, one held out; 3 languages), music
    segments, captioned sounds, and speech+music mixtures with their two sources."""
    rng = np.random.default_rng(0)
    meta = {"n_q": N_Q, "codebook_size": CB, "frame_rate": 50.0, "codec": "codec-16k"}
    codes = lambda lo, hi: rng.integers(0, CB, (N_Q, int(rng.integers(lo, hi))))  # noqa: E731
    items, texts = [], []
    for i in range(n):
        spk = f"spk{i % 4}"
        lang = ("en", "nl", "cs")[i % 3]
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))
        info = {"id": f"c{i}", "text": text, "language": lang, "speaker": spk, "kind": "speech_real",
                "split": "eval" if spk == "spk3" else "train"}
        items.append((info, codes(55, 150), None))
        texts.append(text)
    write_shards(root / "speech_real", items, meta)
    music = [({"id": f"m{i}", "kind": "music", "labels": ["music", "music21-bach", "organ"],
               "split": "eval" if i == 0 else "train"}, codes(400, 600), None) for i in range(4)]
    write_shards(root / "music", music, meta)
    sounds = [({"id": f"s{i}", "kind": "sounds", "text": "A dog barks.", "labels": ["dog"], "split": "train"},
               codes(30, 80), None) for i in range(3)]
    write_shards(root / "sounds", sounds, meta)
    mixes, sources = [], []
    for i in range(3):
        mix_id = f"mix{i}"
        mixes.append(({"id": mix_id, "kind": "mixture", "mixture_type": "speech+music", "language": "en",
                       "labels": ["speech+music", "x", "music"], "text": "the cat", "split": "train"}, codes(100, 101), None))
        for j in range(2):
            sources.append(({"id": f"{mix_id}#s{j}", "kind": "source", "source_of": mix_id, "source_index": j,
                             "split": "train"}, codes(100, 101), None))
    write_shards(root / "mixtures", mixes, meta)
    write_shards(root / "mixtures_sources", sources, meta)
    model = train_sentencepiece(texts + ["A dog barks.", "Organ music.", "A person speaks English over music."],
                                root / "text", vocab_size=60)
    model.rename(root / TEXT_MODEL)
    return root


def tiny_cfg(root: Path, **data) -> TrainConfig:
    cfg = load_config(TrainConfig, "lm/multitask_tiny")
    return replace(cfg, data=replace(cfg.data, shards=str(root), **data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("mt"))


def test_asr_layout_has_loss_only_on_language_text_and_eos(corpus):
    src = MultitaskSource(tiny_cfg(corpus))
    ex = src.example("speech_real", 0)
    pt = get_task("asr").example(src.ctx, ex).build()
    v = src.vocab
    ids, mask = pt.ids[0], pt.loss_mask
    assert ids[:2].tolist() == [v.special("bos"), v.task("asr")]
    targets = ids[mask[0]].tolist()
    want = [v.language(ex.language)] + src.ctx.text.encode(ex.text).tolist() + [v.eos]
    assert targets == want and not mask[1:].any()
    # the audio is the item's codes, laid out with the delay pattern
    T = ex.codes.shape[1]
    seg = pt.ids[:, 2 : 2 + T + N_Q - 1]
    codes = L.revert(seg[None], L.make_pattern("delay", N_Q, T))[0]
    assert torch.equal(v.ids_to_codes(codes), ex.codes)


def test_tts_and_clone_layouts(corpus):
    src = MultitaskSource(tiny_cfg(corpus))
    v, ex, voice = src.vocab, src.example("speech_real", 4), src.example("speech_real", 0)
    tts = get_task("tts").example(src.ctx, ex).build()
    assert tts.ids[0, :3].tolist() == [v.special("bos"), v.task("tts"), v.language(ex.language)]
    T = ex.codes.shape[1]
    assert int(tts.loss_mask.sum()) == T * N_Q + 1  # every code of every frame, and the eos step
    clone = get_task("clone").example(src.ctx, ex, voice=voice).build()
    assert int(clone.loss_mask.sum()) == T * N_Q + 1  # the voice prompt's frames carry no loss
    # the voice prompt's codes are in the prompt, before the target
    Tv = voice.codes.shape[1]
    flat = clone.ids[0].tolist()
    first_voice = v.codes_to_ids(voice.codes[:, :1])[0, 0].item()
    assert first_voice in flat[: len(flat) - T]
    with pytest.raises(TokenlmError):
        get_task("clone").example(src.ctx, ex)  # no voice
    assert clone.ids.shape[1] == tts.ids.shape[1] + len(src.ctx.text.encode(voice.text)) + 1 + Tv + N_Q - 1


def test_batches_are_pure_and_eval_draws_only_eval_speakers(corpus):
    src = MultitaskSource(tiny_cfg(corpus))
    a, b = src.batch(3), src.batch(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(src.batch(4)["inputs"], a["inputs"])
    assert a["inputs"].shape == (src.d.batch_size, N_Q, src.d.seq_len) and a["loss_mask"].any()
    eval_items = {x for name in src.tasks for x in src.items["eval"][name]}
    train_items = {x for name in src.tasks for x in src.items["train"][name]}
    assert eval_items and not eval_items & train_items
    idx = src.parts["speech_real"].index
    assert {idx[i]["speaker"] for p, i in eval_items if p == "speech_real"} == {"spk3"}
    assert {src.parts[p].index[i]["id"] for p, i in eval_items if p != "speech_real"} == {"m0"}
    # clone pairs: voice and target share a speaker and differ
    rng = np.random.default_rng(0)
    for _ in range(10):
        part, i = src.items["train"]["clone"][int(rng.integers(len(src.items["train"]["clone"])))]
        voices = [x for x in src.voices["train"][idx[i]["speaker"]] if x != (part, i)]
        assert voices and all(idx[j]["speaker"] == idx[i]["speaker"] for _, j in voices)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    from tokenlm.train import train

    out = tmp_path_factory.mktemp("run")
    cfg = replace(tiny_cfg(corpus), max_steps=4)
    train(cfg, out, fresh=True)
    return out / "model"


def test_training_saves_a_model_the_pipeline_loads(trained):
    from tokenlm.tasks.pipeline import Pipeline

    assert (trained / "tokenizer.model").is_file()
    pipe = Pipeline.from_pretrained(str(trained))
    assert pipe.ctx.n_q == N_Q and pipe.lm.vocab.languages == ("cs", "en", "nl")
    wav = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.05).astype(np.float32)
    out = pipe.asr((wav, 16000), max_tokens=5)
    assert isinstance(out.text, str) and len(out.windows) == 1


def test_tts_stream_yields_chunks_that_decode_like_the_whole(trained):
    from tokenlm.codecs.codec.model import StreamingDecoder
    from tokenlm.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(str(trained))
    chunks = list(pipe.tts_stream("the cat sat", seed=1, chunk_frames=3))
    hop = pipe.sample_rate // int(pipe.frame_rate)
    assert len(chunks) > 1 and all(c.size == 3 * hop for c in chunks[:-1])
    again = np.concatenate(list(pipe.tts_stream("the cat sat", seed=1, chunk_frames=7)))
    np.testing.assert_allclose(np.concatenate(chunks), again, atol=1e-5)  # chunking does not change the audio
    assert StreamingDecoder  # the pipeline decodes through the codec's streaming decoder


def test_tts_bad_input(trained, tmp_path):
    from tokenlm.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(str(trained))
    with pytest.raises(TokenlmError, match="empty"):
        pipe.tts("   ")
    with pytest.raises(TokenlmError, match="shorter"):
        pipe.tts("the cat", voice=(np.ones(8000, np.float32) * 0.1, 16000), voice_text="a")
    with pytest.raises(TokenlmError, match="silent"):
        pipe.tts("the cat", voice=(np.zeros(32000, np.float32), 16000), voice_text="a")
    with pytest.raises(TokenlmError, match="language"):
        pipe.tts("the cat", language="xx")


def test_tts_cli_writes_nothing_on_bad_input(trained, tmp_path):
    from tokenlm.cli import main

    out = tmp_path / "o.wav"
    short = tmp_path / "short.wav"
    sf.write(short, np.ones(4000, np.float32) * 0.1, 16000)
    text_file = tmp_path / "notaudio.wav"
    text_file.write_text("hello")
    assert main(["tts", "", "-o", str(out), "--model", str(trained)]) == 2
    assert main(["tts", "hi", "-o", str(out), "--model", str(trained), "--voice", str(short)]) == 2
    assert main(["tts", "hi", "-o", str(out), "--model", str(trained), "--voice", str(text_file)]) == 2
    assert main(["clone", "hi", "-o", str(out), "--model", str(trained), "--voice", str(tmp_path / "none.wav")]) == 2
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["tts", "the cat", "-o", str(out), "--model", str(trained), "--seed", "3"]) == 0
    assert sf.info(out).frames > 0


def test_speech_windows_cut_at_quiet_frames():
    from tokenlm.tasks.pipeline import speech_windows

    sr = 16000
    rng = np.random.default_rng(0)
    wav = rng.standard_normal(sr * 20).astype(np.float32) * 0.1
    wav[int(7.0 * sr) : int(7.2 * sr)] = 0.0  # a pause inside the last quarter of the first window
    wins = speech_windows(wav, sr, 8.0)
    assert wins[0][0] == 0 and wins[-1][1] == wav.size
    assert all(a[1] == b[0] for a, b in zip(wins, wins[1:]))  # contiguous, nothing lost
    assert all(e - s <= 8 * sr for s, e in wins)
    assert 7.0 * sr <= wins[0][1] <= 7.2 * sr


def test_audio_task_layouts(corpus):
    from tokenlm.tasks.caption import caption_for

    src = MultitaskSource(tiny_cfg(corpus))
    v, rng = src.vocab, np.random.default_rng(1)
    # captioning: the caption is the target; speech, music and mixtures get captions naming their class
    assert caption_for(src.example("speech_real", 0)) == "A person speaks English."
    assert caption_for(src.example("music", 1)) == "Organ music."
    mix = src.example("mixtures", 0)
    assert caption_for(mix) == "A person speaks English over music."
    cap = get_task("caption").example(src.ctx, src.example("sounds", 0)).build()
    assert cap.ids[0][cap.loss_mask[0]].tolist() == src.ctx.text.encode("A dog barks.").tolist() + [v.eos]
    # separation: the target is the chosen source of that very mixture, named by its token
    ex, kw = get_task("separate").draw(src, rng, "train", mix)
    j = 0 if kw["target"] == "speech" else 1
    assert kw["mixture"] is mix and torch.equal(ex.codes, src.example("mixtures_sources", j).codes)
    pt = get_task("separate").example(src.ctx, ex, **kw).build()
    assert pt.ids[0, 2].item() == v.modality(kw["target"])
    # continuation: the target is the frames right after the prompt
    music = src.example("music", 1)
    for seed in range(5):
        tgt, kw = get_task("continue").draw(src, np.random.default_rng(seed), "train", music)
        if kw["prompt"] is None:
            continue
        P = kw["prompt"].codes.shape[1]
        flat = music.codes[0].tolist()
        s = next(i for i in range(len(flat)) if flat[i : i + P] == kw["prompt"].codes[0].tolist())
        assert torch.equal(music.codes[:, s + P : s + P + tgt.codes.shape[1]], tgt.codes)
    # every task draws from the batches
    seen = set()
    for i in range(30):
        pt = src.prompt(np.random.default_rng(i), "train")
        seen.add(v.range("tasks").start and int(pt.ids[0, 1]))
    assert {int(v.task(t)) for t in ("asr", "tts", "clone", "separate", "caption", "continue")} <= seen


def test_audio_task_pipeline(trained):
    from tokenlm.tasks.pipeline import Pipeline, broad_class

    pipe = Pipeline.from_pretrained(str(trained))
    sr = pipe.sample_rate
    wav = (np.random.default_rng(0).standard_normal(sr * 2) * 0.05).astype(np.float32)
    sep = pipe.separate((wav, sr), target="music")
    assert set(sep) == {"music", "rest"} and sep["music"].size == wav.size
    np.testing.assert_allclose(sep["music"] + sep["rest"], wav, atol=1e-6)
    cap = pipe.caption((wav, sr))
    assert cap["class"] == broad_class(cap["caption"])
    out = pipe.continue_((wav, sr), seconds=0.5, seed=0)
    assert abs(out.size - wav.size - sr // 2) <= sr // 50 + 1
    np.testing.assert_array_equal(out[: wav.size - 160], wav[: wav.size - 160])  # the prompt is kept as it was


def test_align_to_finds_lag_and_gain():
    from tokenlm.tasks.pipeline import align_to

    ref = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    est = 0.5 * np.concatenate([np.zeros(37, np.float32), ref])  # late by 37 samples, half as loud
    np.testing.assert_allclose(align_to(est, ref), ref, atol=1e-4)


def test_bundle_loads_by_name_and_a_new_run_continues_it(trained, corpus, weights_dir, tmp_path):
    import tokenlm
    from tokenlm.pretrained import load, register
    from tokenlm.tasks.bundle import bundle
    from tokenlm.tasks.pipeline import Pipeline
    from tokenlm.train import train

    (weights_dir / "codec-16k").symlink_to(Path(tokenlm.__file__).parent / "weights" / "codec-16k")
    register("codec-16k", "codec")  # the stand-in weights folder holds the real codec beside the bundled LM
    dest = bundle(trained.parent, "tokenlm-tiny")
    assert (dest / "tokenizer.model").is_file() and "Held-out loss per task" in (dest / "README.md").read_text()
    pipe = Pipeline.from_pretrained("tokenlm-tiny")
    assert pipe.lm.pretrained_meta["step"] == 4
    bundled = {k: v.float() for k, v in load("tokenlm-tiny").state_dict().items()}
    # no run in the cache and no --init: the bundled model of this config is continued, its step count goes on
    cfg = replace(tiny_cfg(corpus), max_steps=4)
    run = train(cfg, tmp_path / "fresh-run", max_steps=0)
    assert run.step == 4
    got = run.raw_model.state_dict()
    assert all(torch.equal(got[k].float(), bundled[k]) for k in bundled)
    # --init none: from scratch
    run = train(cfg, tmp_path / "scratch", max_steps=0, init="none")
    assert run.step == 0 and not torch.equal(run.raw_model.state_dict()["head.weight"].float(), bundled["head.weight"])
