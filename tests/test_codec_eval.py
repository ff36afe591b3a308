"""``tokenlm eval codec``'s pieces: alignment, SI-SDR, mel distance, and the systems table with the int8 export."""

import numpy as np
import pytest
import torch
from tokenlm.codecs.codec.evaluate import systems
from tokenlm.codecs.codec.model import Codec, CodecConfig

from tokenlm.metrics import align, mel_distance, si_sdr


def test_align_undoes_a_delay():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(4000).astype(np.float32)
    late = np.concatenate([np.zeros(37, np.float32), ref])[:4000]
    np.testing.assert_allclose(align(ref, late)[:3900], ref[:3900])


def test_si_sdr_and_mel_distance_rank_degradations():
    rng = np.random.default_rng(1)
    ref = np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32)
    noise = rng.standard_normal(16000).astype(np.float32)
    slight, heavy = ref + 0.01 * noise, ref + 0.5 * noise
    assert si_sdr(2 * ref, ref) > 60  # scale-invariant
    assert si_sdr(slight, ref) > si_sdr(heavy, ref) + 20
    assert mel_distance(ref, ref) == 0.0
    assert 0 < mel_distance(slight, ref) < mel_distance(heavy, ref)


def test_systems_add_int8_rows(tmp_path):
    pytest.importorskip("onnxruntime")
    from tokenlm.codecs.codec.export import OnnxCodec, export

    torch.manual_seed(0)
    codec = Codec(CodecConfig(dim=32, encoder_layers=1, decoder_layers=1, latent_dim=16, n_q=12, codebook_size=16))
    export(codec.eval(), tmp_path, int8=True)
    table = systems(codec, int8=OnnxCodec(tmp_path, threads=1))
    rates = {name: kbps for name, (kbps, _) in table.items()}
    assert {k: v for k, v in rates.items() if k.startswith("tokenlm")} == {
        "tokenlm@0.6": 0.6,
        "tokenlm@1.2": 1.2,
        "tokenlm@2.4": 2.4,
        "tokenlm-int8@0.6": 0.6,
        "tokenlm-int8@1.2": 1.2,
        "tokenlm-int8@2.4": 2.4,
    }
    x = (0.1 * np.random.default_rng(2).standard_normal(1000)).astype(np.float32)
    out, out8 = table["tokenlm@2.4"][1](x), table["tokenlm-int8@2.4"][1](x)
    assert out.shape == out8.shape == x.shape
    assert np.abs(out - out8).max() < 0.5 * np.abs(out).max() + 1e-6
