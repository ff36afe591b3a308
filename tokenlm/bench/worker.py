"""Entry point of a benchmark worker process: ``python -m tokenlm.bench.worker KIND SPEC_JSON``.

Workers are named here as ``module:function`` and imported only in the process that runs them, so this
module imports no benchmark (the CPU and GPU benchmarks both spawn workers, and neither imports the other's
workers).
"""

from __future__ import annotations

import importlib
import json
import sys

WORKERS = {
    "rvq-worker": "tokenlm.bench.kernels:rvq_worker",
    "attn-worker": "tokenlm.bench.kernels:attn_worker",
    "interp-worker": "tokenlm.bench.kernels:interp_worker",
    "aot-worker": "tokenlm.bench.kernels_gpu:aot_worker",
}


def run(kind: str, spec: dict) -> dict:
    """Run worker ``kind`` on ``spec`` in this process."""
    module, fn = WORKERS[kind].split(":")
    return getattr(importlib.import_module(module), fn)(spec)


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], json.loads(sys.argv[2]))))
