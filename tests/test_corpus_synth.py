"""Synthetic speech (espeak-ng library, festival segs), phone files, texts, music, sounds, mixtures."""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_corpus import tone_file

from tokenlm.corpus import mixtures, music, phones, sounds, synth, texts
from tokenlm.corpus.manifest import Clip


def test_festival_segs_and_phone_files(tmp_path):
    segs = "EST_File segment\nDataType ascii\n#\n0.1650 100 pau\n0.2550 100 hh\n0.2850 100 ax\n"
    ph = phones.parse_festival_segs(segs)
    assert ph == [(0.0, 0.165, "pau"), (0.165, 0.255, "hh"), (0.255, 0.285, "ax")]
    path = phones.write_phones(tmp_path / "a.phones", ph)
    assert phones.read_phones(path) == ph
    assert phones.frame_labels(ph, frame_rate=20) == ["pau", "pau", "pau", "hh", "hh", "ax"]
    (tmp_path / "bad.phones").write_text("0.1 pau\n")
    with pytest.raises(Exception, match="start end phone"):
        phones.read_phones(tmp_path / "bad.phones")


@pytest.fixture(scope="module")
def espeak():
    from tokenlm.corpus.espeak import Espeak

    try:
        return Espeak()
    except Exception as e:  # the library is a system package; CI images have it (see DATA.md)
        pytest.skip(f"espeak-ng library unavailable: {e}")


def test_espeak_phone_events_cover_the_audio(espeak):
    fast = espeak.synth("Hello there, how are you today?", "en-us+f2", rate=220, pitch=70)
    slow = espeak.synth("Hello there, how are you today?", "en-gb-scotland+m3", rate=130, pitch=30)
    for s in (fast, slow):
        dur = len(s.samples) / s.sample_rate
        assert s.sample_rate == 22050 and 0.5 < dur < 5 and np.abs(s.samples).max() > 0.05
        starts = [p.start for p in s.phones]
        assert starts == sorted(starts) and all(p.end > p.start for p in s.phones)
        assert s.phones[-1].end == pytest.approx(dur, abs=0.05)
        assert len([p for p in s.phones if not p.phone.startswith("_")]) >= 15
    assert len(slow.samples) > 1.3 * len(fast.samples)  # the rate setting is honoured


def test_espeak_phones_from_events():
    from tokenlm.corpus.espeak import phones_from_events

    ph = phones_from_events([(0, "h"), (50, "@"), (50, "l"), (120, "oU")], total_s=0.3)
    assert [(p.start, p.end, p.phone) for p in ph] == [(0.0, 0.05, "h"), (0.05, 0.12, "l"), (0.12, 0.3, "oU")]
    last = phones_from_events([(0, "h"), (120, "oU")], total_s=0.12004)  # ends 40 us after it starts
    assert [(p.start, p.end, p.phone) for p in last] == [(0.0, 0.12, "h")]


@pytest.mark.skipif(shutil.which("festival") is None, reason="festival not installed")
def test_festival_batch_writes_audio_and_phones(tmp_path):
    voice_dir = Path("/usr/share/festival/voices/english/kal_diphone")
    if not voice_dir.is_dir():
        pytest.skip("kal_diphone voice not installed")
    job = synth.Job("festival-0", "festival", "kal_diphone", "synth-kal", texts.Text("t0", "Good morning.", "x"))
    done = synth.run_festival([job], tmp_path, {"kal_diphone": voice_dir})
    audio, ph = done["festival-0"]
    dur = sf.info(str(audio)).duration
    rows = phones.read_phones(ph)
    assert rows[0][2] == "pau" and rows[-1][1] == pytest.approx(dur, abs=0.05)
    assert {"g", "uh", "d", "m", "ao"} <= {r[2] for r in rows}


def test_texts_and_synthesis_plan():
    sents = texts.generated_sentences(200, seed=3)
    assert len(set(sents)) == 200 and sents == texts.generated_sentences(200, seed=3)
    assert texts.clean("It\u2019s \u201cfine\u201d\u2026  ok") == 'It\'s "fine"... ok'
    tx = texts.make_texts({"gen": sents, "dup": sents[:5] + ["", "123"]}, eval_fraction=0.2, seed=0)
    assert len(tx) == 200 and 20 < sum(t.split == "eval" for t in tx) < 60
    jobs = synth.plan_jobs(tx, "espeak", {"en": "espeak"}, minutes=2, split="eval", seed=0)
    assert jobs == synth.plan_jobs(tx, "espeak", {"en": "espeak"}, minutes=2, split="eval", seed=0)
    assert all(j.text.split == "eval" for j in jobs) and {j.speaker for j in jobs} <= {"espeak-m", "espeak-f"}
    flite = synth.plan_jobs(tx, "flite", {"awb": "synth-awb", "rms": "synth-rms"}, 1, "train", 0)
    assert {j.speaker for j in flite} == {"synth-awb", "synth-rms"}
    assert 50 < sum(synth.estimate_seconds(j.text.text) for j in flite) < 80


def test_music_segments(tmp_path):
    assert music.segment_bounds(100, 10, 4.0, 1.5) == [(0, 40), (40, 80), (80, 100)]
    assert music.segment_bounds(90, 10, 4.0, 1.5) == [(0, 40), (40, 80)]
    src = tone_file(tmp_path / "pkg" / "song.ogg", seconds=9.0, sr=8000)
    track = music.Track("pkg/song", src, "pkg")
    clips = music.segment_track(track, tmp_path / "out", segment_s=4.0, min_tail_s=1.5)
    assert [c.duration for c in clips] == [4.0, 4.0] and {c.group for c in clips} == {"pkg/song"}
    assert sf.info(clips[0].path).channels == 1
    Path(clips[0].path).unlink()  # finished tracks are not cut again
    assert music.segment_track(track, tmp_path / "out", 4.0, 1.5) == clips


def test_sound_labels_and_captions(tmp_path):
    assert sounds.label_words("airplane_jetEngine2") == "airplane jet engine"
    assert sounds.label_words("fs_gravel_03") == "footsteps gravel"
    rng = random.Random(0)
    caps = {sounds.caption(["rain"], rng) for _ in range(40)}
    assert len(caps) >= 5 and all("rain" in c.lower() for c in caps)
    pair = sounds.caption(["rain", "a horn"], rng)
    assert "rain" in pair.lower() and "horn" in pair
    for name in ("cow.ogg", "cow_desc.ogg", "cow_desc_fr.ogg", "7_en_GB.ogg"):
        tone_file(tmp_path / "usr/share/tuxpaint/stamps/animals/mammals" / name)
    clips = sounds.sound_clips(tmp_path, "tuxpaint-stamps-default")
    assert [(c.labels, c.kind) for c in clips] == [(("cow", "animals"), "sounds")]


def _clip(tmp_path, name, kind, split, speaker=None, seconds=2.0, freq=200.0):
    p = tone_file(tmp_path / f"{name}.wav", seconds=seconds, freq=freq)
    return Clip(name, str(p), seconds, 22050, kind, speaker=speaker, text=f"text {name}", split=split, labels=(name,))


def test_mixtures_are_exact_reproducible_and_split_pure(tmp_path):
    pool = [_clip(tmp_path, f"sp{i}", "speech_real", "train", f"spk{i % 2}", freq=150 + 40 * i) for i in range(4)]
    pool += [
        _clip(tmp_path, "ev", "speech_real", "eval", "spkE"),
        _clip(tmp_path, "ev2", "speech_real", "eval", "spkF"),
        _clip(tmp_path, "snd", "sounds", "train", seconds=0.7, freq=900),
    ]
    by_spk = mixtures.speakers_index(pool)
    spec = mixtures.MixSpec("speech+speech", "train", 0, seconds=1.5, sample_rate=16000, seed=7)
    clip = mixtures.make_mixture(spec, pool, tmp_path / "a", by_spk)
    again = mixtures.make_mixture(spec, pool, tmp_path / "b", by_spk)
    assert clip.extra["source_ids"] == again.extra["source_ids"] and clip.snr_db == again.snr_db
    mix, s0, s1 = (sf.read(p)[0] for p in (clip.path, *clip.sources))
    assert np.abs(mix - (s0 + s1)).max() < 1e-3 and len(mix) == 24000
    snr = 10 * np.log10(np.mean(s0**2) / np.mean(s1**2))
    assert snr == pytest.approx(clip.snr_db, abs=0.2) and -5 <= clip.snr_db <= 5
    assert len(set(clip.extra["speakers"])) == 2 and clip.kind == "mixture"
    assert clip.extra["enrollment"] != pool[0].path or clip.speaker != "spk0"
    ev = mixtures.make_mixture(mixtures.MixSpec("speech+speech", "eval", 0, 1.5, 16000, 7), pool, tmp_path / "a")
    assert set(ev.extra["speakers"]) == {"spkE", "spkF"} and ev.split == "eval"
    from tokenlm.corpus.splits import group_overlap, speaker_overlap

    assert group_overlap([clip, ev]) == [] and speaker_overlap([clip, ev]) == []
    snd = mixtures.make_mixture(mixtures.MixSpec("speech+sound", "train", 1, 1.5, 16000, 7), pool, tmp_path / "a")
    assert snd.extra["source_ids"][1] == "snd" and 0 <= snd.snr_db <= 15
    assert mixtures.make_mixture(mixtures.MixSpec("speech+music", "train", 0), pool, tmp_path / "a") is None


def test_piper_alignments_to_phones():
    from types import SimpleNamespace as A

    al = [
        A(phoneme="^", num_samples=100),
        A(phoneme="ˈ", num_samples=50),
        A(phoneme="ɑ", num_samples=150),
        A(phoneme="ː", num_samples=100),
        A(phoneme=" ", num_samples=0),
        A(phoneme="k", num_samples=100),
    ]
    assert synth.piper_phones(al, sample_rate=1000) == [(0.0, 0.1, "_"), (0.1, 0.4, "ɑː"), (0.4, 0.5, "k")]
