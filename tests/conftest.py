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
