import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from tokenlm.codecs.audio import AudioError, load_audio, normalize_loudness, resample, save_audio


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg"])
def test_round_trip_formats(tmp_path, tone, ext):
    x, sr = tone
    path = save_audio(tmp_path / f"a{ext}", x, sr)
    a = load_audio(path, sample_rate=None, channels=2)
    assert a.sample_rate == sr and a.samples.shape[0] == 2
    n = min(a.samples.shape[1], x.shape[1])
    tol = 1e-3 if ext != ".ogg" else 0.1  # ogg vorbis is lossy
    assert np.abs(a.samples[:, :n] - x[:, :n]).mean() < tol


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_mp3_via_decoder(tmp_path, tone):
    x, sr = tone
    wav = save_audio(tmp_path / "a.wav", x, sr)
    mp3 = tmp_path / "a.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-b:a", "128k", str(mp3)], check=True)
    a = load_audio(mp3, sample_rate=16000)
    assert a.sample_rate == 16000 and a.samples.shape[0] == 1
    assert abs(a.duration - 0.5) < 0.06


@pytest.mark.parametrize("sr_in,sr_out", [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 24000)])
def test_resample_keeps_tone_frequency(sr_in, sr_out):
    t = np.arange(sr_in) / sr_in
    x = np.sin(2 * np.pi * 1000 * t)[None].astype(np.float32)
    y = resample(x, sr_in, sr_out)
    assert abs(y.shape[1] - sr_out) <= 1
    spec = np.abs(np.fft.rfft(y[0]))
    peak_hz = np.argmax(spec) * sr_out / y.shape[1]
    assert abs(peak_hz - 1000) < 3


def test_stereo_to_mono_is_average(tmp_path, tone):
    x, sr = tone
    path = save_audio(tmp_path / "s.wav", x, sr)
    a = load_audio(path, channels=1)
    assert a.samples.shape == (1, x.shape[1])
    assert np.allclose(a.samples[0], x.mean(0), atol=1e-3)


def test_loudness_normalisation_reaches_target():
    import pyloudnorm

    sr = 16000
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal((1, 2 * sr))).astype(np.float32)
    y = normalize_loudness(x, sr, -23.0)
    assert abs(pyloudnorm.Meter(sr).integrated_loudness(y[0].astype(np.float64)) + 23.0) < 0.5


@pytest.mark.parametrize(
    "maker,msg",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("hello, not audio" * 100), p)[1], "not a readable audio file"),
    ],
)
def test_bad_inputs(tmp_path, maker, msg):
    path = maker(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match=msg):
        load_audio(path)


def test_zero_length_and_nan(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="no audio"):
        load_audio(tmp_path / "zero.wav")
    bad = np.zeros((100, 1), np.float32)
    bad[10] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_save_is_atomic_on_failure(tmp_path):
    good = save_audio(tmp_path / "out.wav", np.zeros(100, np.float32) + 0.1, 16000)
    before = good.read_bytes()
    with pytest.raises(AudioError):
        save_audio(good, np.full(100, np.nan, np.float32), 16000)
    assert good.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
