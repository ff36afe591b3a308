"""Real 2-process DDP on the CPU (gloo) through the shared training loop, for each model's tiny config: the
gradients are averaged (both processes end with the same weights, those of one process that accumulates both
processes' batches)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenlm.training import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import tiny_recipe  # noqa: E402

STEPS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["codec", "semantic", "lm"])
def test_two_processes_average_their_gradients(kind, tone_corpus, tmp_path, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENLM_CACHE": str(tmp_path / "cache")}
    worker = str(Path(__file__).parent / "ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    cmd += [worker, kind, str(tone_corpus), str(tmp_path / "ddp"), str(STEPS)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "the processes' weights differ: gradients not averaged"
    if kind == "codec":  # one batch per step (and codebooks that each process updates from its own batch)
        return
    # one process accumulating the two processes' batches takes the same steps
    monkeypatch.setenv("TOKENLM_CACHE", str(tmp_path / "cache"))
    single = Trainer(tiny_recipe(kind, str(tone_corpus), grad_accum=2), tmp_path / "single")
    single.recipe.start(None)
    single.fit(max_steps=STEPS)
    for k, p in single.raw_model.named_parameters():
        assert torch.allclose(p.detach(), r0[k], atol=1e-5), k
