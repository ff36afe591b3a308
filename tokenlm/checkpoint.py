"""Checkpoints without pickle.

Two kinds:

* a *model folder* (``save_model`` / ``load_model_files``): ``config.json`` (``{"kind", "config",
  "meta"}``) + ``model.safetensors`` (+ extra files such as ``tokenizer.model``); this is what ships
  and what ``tokenlm.pretrained.load`` reads.
* a *training state* (``save_state`` / ``load_state``): any nested dict/list of tensors, numbers,
  strings and None (optimizer and scheduler state, RNG states, data position), stored as one
  safetensors file for the tensors plus a JSON tree that points into it.

Both are written to a temporary name and renamed, so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import TokenlmError
from .utils import atomic_path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(
    folder: str | os.PathLike,
    kind: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
    extra_files: dict[str, str | os.PathLike] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a model folder atomically (a temporary folder renamed over ``folder``).

    ``dtype`` (e.g. ``torch.float16`` for bundled models) casts floating-point tensors only.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tensors = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in state_dict.items()
        }
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        doc = {"kind": kind, "config": config, "meta": meta or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        os.chmod(tmp, 0o755)  # mkdtemp makes a private folder; a model folder is meant to be shared
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    cfg = folder / CONFIG_FILE
    if not folder.is_dir() or not cfg.is_file():
        raise TokenlmError(f"not a tokenlm model folder (no {CONFIG_FILE}): {folder}")
    try:
        doc = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TokenlmError(f"{cfg}: not valid JSON") from None
    if not isinstance(doc, dict) or "kind" not in doc or "config" not in doc:
        raise TokenlmError(f"{cfg}: missing 'kind' or 'config'")
    return doc


def load_weights(folder: str | os.PathLike, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise TokenlmError(f"missing weights file: {path}")
    try:
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises several types on corrupt files
        raise TokenlmError(f"{path}: unreadable weights ({e})") from None
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return sd


def load_state_dict_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` that turns key or shape mismatches into one clear TokenlmError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if bad:
            parts.append(f"shape mismatch {bad[:3]}")
        raise TokenlmError(f"{where}: checkpoint does not match the model ({'; '.join(parts)})")
    module.load_state_dict(sd)


# --------------------------------------------------------------------------- training state


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"{prefix}: only str/int dict keys can be saved")
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, tensors, f"{prefix}[{i}]") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{prefix}: cannot save {type(obj).__name__} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save a nested training state to ``path`` (a ``.safetensors`` file; the tree rides in its metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, tensors, "state")
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"tokenlm_tree": json.dumps(tree)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TokenlmError(f"no training state at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tree = json.loads(meta["tokenlm_tree"])
    except Exception as e:
        raise TokenlmError(f"{path}: unreadable training state ({e.__class__.__name__})") from None
    return _unflatten(tree, tensors)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a saveable form."""
    import random

    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
