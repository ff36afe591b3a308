"""Load models by bundled name (``codec-16k``) or by folder path, never from the network.

Bundled models live in ``tokenlm/weights/<name>/`` (config.json + model.safetensors + README.md
model card); ``tokenlm/weights/registry.json`` records each one's kind and the sha256 of its
weights, checked on load so that a truncated or swapped file is refused, not silently used.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import WEIGHTS_FILE, load_state_dict_strict, load_weights, read_model_config, sha256_file
from .config import from_dict
from .errors import NotBuiltError, TokenlmError

WEIGHTS_DIR = Path(__file__).parent / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"

# kind -> "module:Class"; the class has ``config_class`` and ``__init__(config)``, or a
# ``from_folder(folder, doc)`` classmethod when it needs more than the weights (e.g. a text tokenizer).
BUILDERS: dict[str, str] = {
    "codec": "tokenlm.codecs.codec.model:Codec",
    "encodec-peer": "tokenlm.codecs.codec.peer:EncodecPeer",
    "semantic": "tokenlm.codecs.semantic.model:SemanticTokenizer",
    "lm": "tokenlm.model:TokenLM",
}

# What each bundled name is and what builds it, so that a missing one can say so.
EXPECTED: dict[str, str] = {
    "codec-16k": "the 16 kHz RVQ codec (tokenlm train codec, then tokenlm.codecs.codec.bundle)",
    "semantic-16k": "the semantic tokenizer (tokenlm train semantic, then tokenlm.codecs.semantic.bundle)",
    "lm-small": "the token LM (tokenlm train lm)",
}


def registry() -> dict[str, dict[str, Any]]:
    return json.loads(REGISTRY_FILE.read_text()) if REGISTRY_FILE.exists() else {}


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The folder of a bundled name or a path; verifies the bundled sha256."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    reg = registry()
    name = str(name_or_path)
    if name in reg:
        folder = WEIGHTS_DIR / name
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise TokenlmError(f"bundled model {name} is missing its weights ({weights})")
        digest = sha256_file(weights)
        if digest != reg[name]["sha256"]:
            raise TokenlmError(f"bundled model {name}: weights sha256 mismatch (file changed or truncated)")
        return folder
    if name in EXPECTED:
        raise NotBuiltError(f"bundled model {name} is not built yet: {EXPECTED[name]}")
    if p.exists():
        raise TokenlmError(f"not a model folder: {p}")
    raise TokenlmError(f"no bundled model or folder named {name!r} (bundled: {sorted(reg) or 'none'})")


def builder(kind: str) -> type:
    if kind not in BUILDERS:
        raise TokenlmError(f"unknown model kind {kind!r}")
    module, cls = BUILDERS[kind].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        raise NotBuiltError(f"model kind {kind!r} has no implementation yet ({BUILDERS[kind]})") from None


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model stored in a bundled name or folder, in eval mode, float32 on ``device``."""
    folder = resolve(name_or_path)
    doc = read_model_config(folder)
    cls = builder(doc["kind"])
    if hasattr(cls, "from_folder"):
        model = cls.from_folder(folder, doc)
    else:
        model = cls(from_dict(cls.config_class, doc["config"], where=str(folder)))
        load_state_dict_strict(model, load_weights(folder), where=str(folder))
    model.pretrained_name = str(name_or_path)
    model.pretrained_meta = doc.get("meta", {})
    return model.to(device).eval()


def register(name: str, kind: str) -> str:
    """Record (or update) a bundled model's sha256 in the registry; returns the digest."""
    digest = sha256_file(WEIGHTS_DIR / name / WEIGHTS_FILE)
    reg = registry()
    reg[name] = {"kind": kind, "sha256": digest}
    from .utils import atomic_write_text

    atomic_write_text(REGISTRY_FILE, json.dumps(reg, indent=2, sort_keys=True) + "\n")
    return digest


def card_section(folder: str | os.PathLike, title: str) -> str:
    """The ``## <title>`` section of the model card in ``folder`` (up to the next ``## ``), or ``""``: what a
    bundler carries over when it writes the card again (e.g. "Experiments", which no run reports)."""
    card = Path(folder) / "README.md"
    lines = card.read_text().splitlines() if card.is_file() else []
    head = f"## {title}"
    if head not in lines:
        return ""
    start = lines.index(head)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip() + "\n"
