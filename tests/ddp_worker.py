"""Run by test_ddp.py under ``torch.distributed.run``: train a tiny config of one model a few steps through the shared
loop and save this process's parameters (``rank<r>.safetensors``), so the test can compare the processes."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch


def tiny_recipe(kind: str, corpus: str, grad_accum: int = 1):
    """The tiny config of ``kind`` (codec / semantic / lm) as a recipe, without dropout (so that processes and
    micro-batches can be compared), reading ``corpus`` (a fixture corpus root) where it needs audio."""
    from tokenlm.config import load_config

    if kind == "lm":
        from tokenlm.train import LMRecipe, TrainConfig

        cfg = load_config(TrainConfig, "lm/tiny", model={"dropout": 0.0}, log_every=1, eval_every=0)
        return LMRecipe(replace(cfg, grad_accum=grad_accum))
    if kind == "semantic":
        from tokenlm.codecs.semantic.train import SemanticRecipe, SemanticTrainConfig

        from tokenlm.corpus.manifest import manifest_path

        cfg = load_config(SemanticTrainConfig, "semantic/tiny", model={"dropout": 0.0}, precision="fp32", log_every=1)
        return SemanticRecipe(replace(cfg, grad_accum=grad_accum), str(manifest_path(Path(corpus), "speech_real")))
    if kind == "codec":  # its step takes one batch: no accumulation
        from tokenlm.codecs.codec.train import CodecRecipe, TrainConfig

        cfg = load_config(
            TrainConfig, "codec/tiny", data={"root": corpus, "kinds": ["speech_real"], "kind_weights": [1.0]}
        )
        return CodecRecipe(replace(cfg, eval_clips=0))
    raise ValueError(kind)


def main(kind: str, corpus: str, out: str, steps: int) -> None:
    from safetensors.torch import save_file

    from tokenlm.training import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(tiny_recipe(kind, corpus), out)
    trainer.recipe.start(None)
    trainer.fit(max_steps=steps)
    params = {k: p.detach().contiguous() for k, p in trainer.raw_model.named_parameters()}
    save_file(params, str(Path(out) / f"rank{trainer.acc.process_index}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
