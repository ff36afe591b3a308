import dataclasses
import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from tokenlm.codecs.codec.container import (
    ContainerError,
    Header,
    Writer,
    pack_codes,
    read_blocks,
    read_header,
    unpack_codes,
)
from tokenlm.codecs.codec.model import Codec, CodecConfig, StreamingDecoder, StreamingEncoder
from tokenlm.codecs.codec.modules import ISTFTHead, overlap_add, widen_head
from tokenlm.codecs.codec.rvq import ResidualVQ

from tokenlm.checkpoint import save_model
from tokenlm.config import to_dict

TINY = CodecConfig(
    hop=40, dim=32, encoder_layers=2, decoder_layers=2, latent_dim=8, n_q=4, codebook_size=16, kernel_size=3
)


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    m = Codec(TINY).eval()
    m.quantizer.kmeans_init(torch.randn(256, TINY.latent_dim))
    return m


@pytest.mark.parametrize("chunk", [1, 17, 40, 123, 1000])
def test_streaming_encode_decode_equals_whole_file(codec, chunk):
    torch.manual_seed(1)
    wav = torch.randn(1, 1, 1001) * 0.3
    codes = codec.encode(wav)
    assert codes.shape == (1, TINY.n_q, 26) and codes.dtype == torch.long  # ceil(1001 / 40)
    enc = StreamingEncoder(codec)
    parts = [enc.push(wav[0, :, i : i + chunk]) for i in range(0, 1001, chunk)] + [enc.flush()]
    assert torch.equal(torch.cat(parts, dim=-1), codes)
    full = codec.decode(codes)
    dec = StreamingDecoder(codec)
    frames = max(1, chunk // 40)
    pieces = [dec.push(codes[..., i : i + frames]) for i in range(0, codes.shape[-1], frames)]
    assert torch.allclose(torch.cat(pieces, dim=-1), full[:, 0], atol=1e-5)


@pytest.fixture(scope="module")
def codec_ola2():
    """The tiny codec with a 75%-overlap head (two iSTFT frames per codec frame)."""
    torch.manual_seed(0)
    m = Codec(dataclasses.replace(TINY, head_overlap=2)).eval()
    m.quantizer.kmeans_init(torch.randn(256, TINY.latent_dim))
    return m


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_overlap_head_streams_exactly(codec_ola2, chunk):
    torch.manual_seed(1)
    codes = codec_ola2.encode(torch.randn(1, 1, 1001) * 0.3)
    full = codec_ola2.decode(codes)
    assert full.shape == (1, 1, 26 * TINY.hop)
    dec = StreamingDecoder(codec_ola2)
    pieces = [dec.push(codes[..., i : i + chunk]) for i in range(0, codes.shape[-1], chunk)]
    assert torch.allclose(torch.cat(pieces, dim=-1), full[:, 0], atol=1e-5)


@pytest.mark.parametrize("overlap", [1, 2, 4])
def test_overlap_add_reconstructs_hann_windowed_frames(overlap):
    """Frames of a signal under the heads' synthesis window (hann / overlap) add back to the signal, and the carry
    makes two calls equal one."""
    W, h = 64, 32 // overlap
    x = torch.randn(1, 1024)
    n = (x.shape[1] - W) // h + 1
    window = torch.hann_window(W, periodic=True) / overlap
    frames = torch.stack([x[0, i * h : i * h + W] * window for i in range(n)])[None]
    y, carry = overlap_add(frames, hop=h)
    assert y.shape == (1, n * h) and carry.shape == (1, W // h - 1, h)
    assert torch.allclose(y[0, W : n * h], x[0, W : n * h], atol=1e-5)  # the first W samples lack earlier frames
    y1, c1 = overlap_add(frames[:, :5], hop=h)
    y2, _ = overlap_add(frames[:, 5:], c1, hop=h)
    assert torch.allclose(torch.cat([y1, y2], 1), y, atol=1e-6)


def test_widen_head_keeps_the_first_frame_and_shifts_the_second():
    torch.manual_seed(2)
    hop = 40
    one, two = ISTFTHead(16, hop, 1), ISTFTHead(16, hop, 2)
    with torch.no_grad():
        two.proj.weight[:], two.proj.bias[:] = widen_head(one.proj.weight, one.proj.bias, hop, 2)
    x = torch.randn(1, 3, 16)
    f1, f2 = one(x), two(x)
    assert f2.shape == (1, 6, 2 * hop)
    assert torch.allclose(2 * f2[:, 0::2], f1, atol=1e-5)  # same frame, half the window (4 frames add up)

    def signal(head):  # the frames' periodic signals, before the window
        log_mag, re, im = head.spectra(x)
        scale = log_mag.exp() / torch.sqrt(re * re + im * im + 1e-9)
        return torch.fft.irfft(torch.complex(scale * re, scale * im), n=head.win)

    assert torch.allclose(signal(two)[:, 1::2], torch.roll(signal(one), -hop // 2, dims=-1), atol=1e-5)


def test_onnx_export_of_the_overlap_head_matches_torch(tmp_path, codec_ola2):
    pytest.importorskip("onnxruntime")
    from tokenlm.codecs.codec.export import export, verify

    export(codec_ola2, tmp_path)
    assert verify(codec_ola2, tmp_path, seconds=0.5)["decoder_max_abs_diff"] < 1e-4


def test_first_k_codebooks_and_shapes(codec):
    wav = torch.randn(2, 1, 400) * 0.2
    for k in (1, 2, 4):
        codes = codec.encode(wav, n_q=k)
        assert codes.shape == (2, k, 10)
        assert codec.decode(codes, 400).shape == (2, 1, 400)
    out = codec.train()(wav, n_q=2)
    codec.eval()
    assert out.wav.shape == wav.shape and out.quant.codes.shape == (2, 2, 10)


def test_kbps_mapping():
    m = Codec(CodecConfig(n_q=12))
    assert [m.n_q_for_kbps(k) for k in (1.5, 3, 6)] == [3, 6, 12]
    with pytest.raises(ValueError):
        m.n_q_for_kbps(1.2)


def test_rvq_more_levels_quantize_better_and_ema_learns():
    torch.manual_seed(0)
    q = ResidualVQ(dim=8, n_q=4, codebook_size=32)
    data = torch.randn(2048, 8)
    q.kmeans_init(data)
    z = data[:512].reshape(4, 128, 8)
    errs = [(q.decode(q.encode(z, k)) - z).pow(2).mean().item() for k in (1, 2, 4)]
    assert errs[0] > errs[1] > errs[2]
    # EMA updates: a shifted distribution is tracked after a few training calls
    q.train()
    shifted = z + 3.0
    before = (q.decode(q.encode(shifted, 1)) - shifted).pow(2).mean().item()
    for _ in range(50):
        q(shifted, n_q=1)
    after = (q.decode(q.encode(shifted, 1)) - shifted).pow(2).mean().item()
    assert after < 0.5 * before


def test_dead_codes_are_restarted():
    torch.manual_seed(0)
    q = ResidualVQ(dim=4, n_q=1, codebook_size=8, decay=0.5, dead_threshold=0.5)
    q.codebooks[0] = 100.0  # all codes far from the data: only one will ever be chosen
    q.train()
    z = torch.randn(1, 64, 4)
    for _ in range(10):
        q(z, n_q=1)
    assert (q.codebooks[0].abs() < 10).sum(-1).gt(0).sum() >= 6  # most codes were re-seeded from data


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(0)
    for bits in (1, 4, 10, 11):
        codes = rng.integers(0, 2**bits, size=(3, 37))
        data = pack_codes(codes, bits)
        assert len(data) == int(np.ceil(3 * 37 * bits / 8))
        assert np.array_equal(unpack_codes(data, 3, 37, bits), codes)


def _container(codes, fpb=4):
    h = Header(codes.shape[0], 4, 16000, 40, codes.shape[1], codes.shape[1] * 40, "tiny", b"12345678", fpb)
    buf = io.BytesIO()
    w = Writer(buf, h)
    w.write(codes[:, :5])
    w.write(codes[:, 5:])
    w.close()
    return buf.getvalue()


def test_container_round_trip_and_refusals():
    codes = np.random.default_rng(0).integers(0, 16, size=(2, 11))
    blob = _container(codes)
    f = io.BytesIO(blob)
    h = read_header(f)
    assert np.array_equal(np.concatenate(list(read_blocks(f, h)), axis=1), codes)
    with pytest.raises(ContainerError, match="not a .tlm"):
        read_header(io.BytesIO(b"RIFF" + blob[4:]))
    for cut in (10, len(blob) - 1):
        with pytest.raises(ContainerError, match="truncated"):
            f = io.BytesIO(blob[:cut])
            list(read_blocks(f, read_header(f)))
    corrupt = bytearray(blob)
    corrupt[-1] ^= 0xFF
    with pytest.raises(ContainerError, match="checksum"):
        f = io.BytesIO(bytes(corrupt))
        list(read_blocks(f, read_header(f)))
    corrupt = bytearray(blob)
    corrupt[9] ^= 0x01  # inside the header
    with pytest.raises(ContainerError, match="checksum"):
        read_header(io.BytesIO(bytes(corrupt)))
    with pytest.raises(ContainerError, match="after the last block"):
        f = io.BytesIO(blob + b"x")
        list(read_blocks(f, read_header(f)))
    future = bytearray(blob)
    future[4] = 9
    with pytest.raises(ContainerError, match="version"):
        read_header(io.BytesIO(bytes(future)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, codec):
    folder = tmp_path_factory.mktemp("m") / "tiny-codec"
    save_model(folder, "codec", to_dict(TINY), codec.state_dict())
    return folder


def test_cli_compress_decompress(tmp_path, model_dir, codec):
    from tokenlm.cli import main

    sr = 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(1.3 * sr)) / sr)).astype(np.float32)
    sf.write(tmp_path / "in.wav", np.stack([x, x], 1), sr, subtype="FLOAT")
    tlm, out = tmp_path / "a.tlm", tmp_path / "out.wav"
    kbps = 2 * 4 * 400 / 1000  # 2 codebooks x 4 bits x 400 frames/s
    assert main(["compress", str(tmp_path / "in.wav"), "-o", str(tlm), "--model", str(model_dir), "--kbps", "3"]) == 2
    assert not tlm.exists()
    import tokenlm.cli as cli_mod

    old = cli_mod.KBPS_CHOICES
    try:
        # the tiny codec's rates are multiples of 1.6 kbps; the real CLI offers 1.5/3/6
        cli_mod.KBPS_CHOICES = (f"{kbps:g}",)
        assert (
            main(
                [
                    "compress",
                    str(tmp_path / "in.wav"),
                    "-o",
                    str(tlm),
                    "--model",
                    str(model_dir),
                    "--kbps",
                    f"{kbps:g}",
                    "--precision",
                    "fp32",
                ]
            )
            == 0
        )
    finally:
        cli_mod.KBPS_CHOICES = old
    with open(tlm, "rb") as f:
        h = read_header(f)
    assert h.n_q == 2 and h.num_samples == len(x) and h.num_frames == int(np.ceil(len(x) / 40))
    payload = int(np.ceil(h.num_frames * 2 * 4 / 8))
    assert tlm.stat().st_size <= payload + 64 + 4 * (h.num_frames // h.frames_per_block + 1)
    assert main(["decompress", str(tlm), "-o", str(out), "--model", str(model_dir), "--precision", "fp32"]) == 0
    y, sr_out = sf.read(out)
    assert sr_out == sr and len(y) == len(x)
    expect = codec.decode(codec.encode(torch.from_numpy(x)[None, None], 2), len(x))[0, 0].numpy()
    assert np.abs(y - np.clip(expect, -1, 1)).max() < 2e-4  # PCM16 quantisation only
    blob = bytearray(tlm.read_bytes())
    blob[-3] ^= 0x55
    (tmp_path / "bad.tlm").write_bytes(bytes(blob))
    assert (
        main(["decompress", str(tmp_path / "bad.tlm"), "-o", str(tmp_path / "bad.wav"), "--model", str(model_dir)]) == 2
    )
    assert not (tmp_path / "bad.wav").exists()
    (tmp_path / "foreign.tlm").write_bytes(b"ID3\x04" + bytes(100))
    assert (
        main(["decompress", str(tmp_path / "foreign.tlm"), "-o", str(tmp_path / "f.wav"), "--model", str(model_dir)])
        == 2
    )


def test_onnx_export_matches_torch(tmp_path, codec):
    pytest.importorskip("onnxruntime")
    from tokenlm.codecs.codec.export import export, verify

    export(codec, tmp_path)
    r = verify(codec, tmp_path, seconds=0.5)
    assert r["decoder_max_abs_diff"] < 1e-4
    assert r["code_agreement"] > 0.95  # DFT-as-matmul vs FFT: rare near-ties may flip


def test_onnx_int8_export_runs_like_the_codec(tmp_path, codec):
    """int8 export with an encoder for 2 codebooks: OnnxCodec has Codec's calls, shapes and lengths; the int8
    decoder stays close to PyTorch's; a folder without an export is refused."""
    pytest.importorskip("onnxruntime")
    from tokenlm.codecs.codec.export import OnnxCodec, export, verify

    from tokenlm.errors import TokenlmError

    export(codec, tmp_path, n_q=2, int8=True)
    r = verify(codec, tmp_path, seconds=0.5)
    assert r["precision"] == "int8"
    assert r["decoder_snr_db"] > 5  # this random tiny codec: ~10 dB; the bundled one: 34 dB; a broken graph: <= 0
    onnx_codec = OnnxCodec(tmp_path, threads=1)
    wav = torch.randn(2, 1, 1000) * 0.2
    codes = onnx_codec.encode(wav)
    assert codes.shape == codec.encode(wav, 2).shape and codes.dtype == torch.long
    assert onnx_codec.encode(wav, 1).shape[1] == 1
    assert onnx_codec.decode(codes, 1000).shape == (2, 1, 1000)
    with pytest.raises(TokenlmError, match="2 codebooks"):
        onnx_codec.encode(wav, 3)
    with pytest.raises(TokenlmError, match="not an exported codec"):
        OnnxCodec(tmp_path / "missing")


def test_bf16_inference_close_to_fp32(codec):
    wav = torch.randn(1, 1, 2000) * 0.2
    ref = codec.decode(codec.encode(wav))
    try:
        codec.precision = "bf16"
        codes = codec.encode(wav)
        out = codec.decode(codes)
    finally:
        codec.precision = "fp32"
    assert codes.dtype == torch.long and out.dtype == torch.float32
    assert (codes == codec.encode(wav)).float().mean() > 0.8
    assert (out - ref).abs().mean() < 0.2 * ref.abs().mean() + 1e-3


def test_bench_measures_an_onnx_export(tmp_path, codec):
    """``tokenlm bench codec``'s worker runs an exported folder (fresh subprocess) and reports real-time factors."""
    pytest.importorskip("onnxruntime")
    from tokenlm.codecs.codec.export import export

    from tokenlm.bench.codec import measure

    export(codec, tmp_path, n_q=2, int8=True)
    r = measure(1, "onnx", str(tmp_path), "2", repeats=1, seconds=0.2)
    assert set(r) == {"encode_rtf", "decode_rtf", "encode_decode_rtf"}
    assert 0 < r["encode_decode_rtf"] <= min(r["encode_rtf"], r["decode_rtf"])  # rounded to 0.1


def test_export_cli_refuses_bad_input(tmp_path, capsys):
    from tokenlm.codecs.codec.export import main

    assert main(["no-such-model", "-o", str(tmp_path / "x")]) == 2
    assert main(["codec-16k", "-o", str(tmp_path / "y"), "--kbps", "1.7"]) == 2
    err = capsys.readouterr().err
    assert "no bundled model" in err and "not a rate of this codec" in err
    assert not (tmp_path / "y" / "onnx.json").exists()


def test_log_spectral_loss_sees_noise_between_harmonics_that_mel_losses_barely_do():
    from tokenlm.codecs.codec.losses import LogSpectralLoss, MultiResolutionMelLoss

    torch.manual_seed(0)
    t = torch.arange(16000) / 16000
    x = 0.05 * sum(torch.sin(2 * math.pi * 120 * h * t) / h for h in range(1, 40))[None]
    noise = torch.randn_like(x)
    noise = noise / noise.std() * x.std() * 10 ** (-35 / 20)  # fills the valleys, 35 dB down
    logspec, mel = LogSpectralLoss(), MultiResolutionMelLoss(16000)
    assert logspec(x, x).item() == 0.0
    # relative to a 1 dB gain error, filled valleys weigh far more in the log-spectral loss than in the mel loss
    ratio_logspec = logspec(x + noise, x) / logspec(1.122 * x, x)
    ratio_mel = mel(x + noise, x) / mel(1.122 * x, x)
    assert ratio_logspec > 2 * ratio_mel, (ratio_logspec, ratio_mel)
    # the floor is relative to each clip's loudest bin: the loss does not depend on the level
    assert torch.allclose(logspec(7 * (x + noise), 7 * x), logspec(x + noise, x), rtol=1e-4)
