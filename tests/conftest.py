import os

os.environ.setdefault("TOKENLM_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "tokenlm-test-cache"))

import numpy as np
import pytest
import torch

# No GPU here: Triton kernels are tested in interpreter mode, which must be switched on before anything
# (torch, transformers) imports triton, or the kernel tests would skip themselves.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(2)


@pytest.fixture
def tone():
    """A 0.5 s two-tone test signal at 22.05 kHz, stereo, float32 [C, N]."""
    sr = 22050
    t = np.arange(int(0.5 * sr)) / sr
    left = 0.4 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 660 * t)
    return np.stack([left, right]).astype(np.float32), sr


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty stand-in for ``tokenlm/weights`` (and its registry) that bundling writes to and loading reads."""
    import tokenlm.codecs.codec.bundle as codec_bundle
    import tokenlm.codecs.semantic.bundle as semantic_bundle

    import tokenlm.pretrained as pretrained

    weights = tmp_path / "weights"
    weights.mkdir()
    for mod in (codec_bundle, semantic_bundle, pretrained):
        monkeypatch.setattr(mod, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(pretrained, "REGISTRY_FILE", weights / "registry.json")
    return weights


def write_tone_corpus(root):
    """A fixture corpus of 2.5 s modulated tones: 4 ``speech_real`` clips (one held out) and 2 ``music`` clips, at
    16 and 22.05 kHz, with manifests as ``tokenlm data build`` writes them. Returns ``root``."""
    import soundfile as sf

    from tokenlm.corpus.manifest import Clip, manifest_path, write_manifest

    rng = np.random.default_rng(0)
    clips = {"speech_real": [], "music": []}
    for i in range(6):
        kind = "speech_real" if i < 4 else "music"
        sr = 16000 if i % 2 else 22050
        t = np.arange(int(2.5 * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * (150 + 50 * i) * t) * (1 + np.sin(2 * np.pi * 3 * t))
        x = x + 0.01 * rng.standard_normal(t.size)
        path = root / f"c{i}.wav"
        sf.write(path, x.astype(np.float32), sr)
        speaker = f"s{i}" if kind == "speech_real" else None
        split = "eval" if i == 3 else "train"
        clips[kind].append(Clip(f"c{i}", str(path), 2.5, sr, kind, speaker=speaker, split=split))
    for kind, cs in clips.items():
        write_manifest(manifest_path(root, kind), cs)
    return root


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory):
    return write_tone_corpus(tmp_path_factory.mktemp("tone_corpus"))
