"""Loaders for public dataset layouts, each on a tiny fixture written here."""

from pathlib import Path

import pytest
from test_corpus import tone_file

from tokenlm.corpus import loaders
from tokenlm.errors import TokenlmError


def test_librispeech(tmp_path):
    for part, spk in (("train-clean-100", "19"), ("dev-clean", "84")):
        d = tmp_path / part / spk / "198"
        tone_file(d / f"{spk}-198-0000.flac", sr=16000)
        tone_file(d / f"{spk}-198-0001.flac", sr=16000)
        (d / f"{spk}-198.trans.txt").write_text(f"{spk}-198-0000 HELLO WORLD\n{spk}-198-0001 SECOND LINE\n")
    clips = {c.id: c for c in loaders.librispeech(tmp_path)}
    assert len(clips) == 4
    c = clips["librispeech/19-198-0000"]
    assert (c.text, c.speaker, c.split, c.sample_rate) == ("HELLO WORLD", "librispeech-19", "train", 16000)
    assert clips["librispeech/84-198-0001"].split == "eval"


def test_libritts(tmp_path):
    d = tmp_path / "train-clean-100" / "19" / "198"
    tone_file(d / "19_198_000000_000000.wav", sr=24000)
    (d / "19_198_000000_000000.normalized.txt").write_text("Hello, world.")
    (d / "19_198_000000_000000.original.txt").write_text("Hello world!")
    tone_file(d / "19_198_000000_000001.wav", sr=24000)  # no transcript: skipped
    clips = loaders.libritts(tmp_path)
    assert [(c.text, c.speaker, c.split) for c in clips] == [("Hello, world.", "libritts-19", "train")]


def test_vctk(tmp_path):
    for spk in ("p225", "p226"):
        tone_file(tmp_path / "wav48_silence_trimmed" / spk / f"{spk}_001_mic1.flac", sr=48000)
        tone_file(tmp_path / "wav48_silence_trimmed" / spk / f"{spk}_001_mic2.flac", sr=48000)
        (tmp_path / "txt" / spk).mkdir(parents=True)
        (tmp_path / "txt" / spk / f"{spk}_001.txt").write_text("Please call Stella.\n")
    clips = loaders.vctk(tmp_path, eval_speakers=("p226",))
    assert [(c.id, c.speaker, c.split) for c in clips] == [
        ("vctk/p225_001", "vctk-p225", "train"),
        ("vctk/p226_001", "vctk-p226", "eval"),
    ]
    assert clips[0].text == "Please call Stella."
    with pytest.raises(TokenlmError, match="not a VCTK"):
        loaders.vctk(tmp_path / "txt")


def test_audio_folder_with_txt_and_lab(tmp_path):
    tone_file(tmp_path / "anna" / "a1.wav")
    (tmp_path / "anna" / "a1.txt").write_text("first  line\n")
    tone_file(tmp_path / "bob" / "b1.flac")
    (tmp_path / "bob" / "b1.lab").write_text("second")
    tone_file(tmp_path / "bob" / "b2.wav")
    clips = loaders.audio_folder(tmp_path, language="en", name="mine")
    assert [(c.id, c.speaker, c.text) for c in clips] == [
        ("mine/anna/a1", "mine-anna", "first line"),
        ("mine/bob/b1", "mine-bob", "second"),
    ]


def test_audiocaps_and_clotho_csv(tmp_path):
    tone_file(tmp_path / "ac" / "91139.wav")
    tone_file(tmp_path / "ac" / "abcdefg_30.wav")
    (tmp_path / "ac.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "91139,r1nicOVtvkQ,130,A dog barks\n"
        "91140,abcdefg,30,Rain falls on a roof\n"
        "91141,missing,0,Not downloaded\n"
    )
    clips = loaders.caption_csv(tmp_path / "ac.csv", tmp_path / "ac")
    assert sorted(c.text for c in clips) == ["A dog barks", "Rain falls on a roof"]
    assert all(c.kind == "sounds" and c.source == "audiocaps" for c in clips)
    tone_file(tmp_path / "clotho" / "birds.wav")
    (tmp_path / "cl.csv").write_text("file_name,caption_1,caption_2\nbirds.wav,Birds sing,Some birds chirp\n")
    (clip,) = loaders.caption_csv(tmp_path / "cl.csv", tmp_path / "clotho", split="eval")
    assert clip.extra["captions"] == ["Birds sing", "Some birds chirp"] and clip.split == "eval"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TokenlmError, match="neither"):
        loaders.caption_csv(tmp_path / "bad.csv", tmp_path / "clotho")


def test_musdb_stems(tmp_path):
    for part in ("train", "test"):
        for stem in ("mixture", *loaders.MUSDB_STEMS):
            tone_file(tmp_path / part / f"Artist - Song {part}" / f"{stem}.wav", sr=44100)
    clips = loaders.musdb(tmp_path)
    assert [c.split for c in clips] == ["eval", "train"]
    assert [Path(s).stem for s in clips[0].sources] == list(loaders.MUSDB_STEMS)
    assert clips[0].kind == "mixture" and Path(clips[0].path).name == "mixture.wav"
