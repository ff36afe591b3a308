"""Choosing a backend and importing Triton lazily.

``backend="auto"``: Triton for CUDA tensors when triton imports, the PyTorch twin otherwise.
``backend="torch"``: always the twin. ``backend="triton"``: always the kernel; for CPU tensors it runs in
Triton's interpreter, which reads ``TRITON_INTERPRET=1`` when triton is first imported, so the variable is
set here before the lazy import and a triton imported earlier without it is refused.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from ..errors import TokenlmError

BACKENDS = ("auto", "torch", "triton")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """Whether triton can be imported (without importing it)."""
    return "triton" in sys.modules or importlib.util.find_spec("triton") is not None


def import_triton(for_cpu: bool) -> None:
    """Import triton; for CPU tensors first switch on the interpreter (refuse if it is too late)."""
    if for_cpu and not _interpreting():
        if "triton" in sys.modules:
            raise TokenlmError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 before triton is "
                "imported; triton was already imported without it (set it in the environment)"
            )
        os.environ["TRITON_INTERPRET"] = "1"
    if not triton_available():
        raise TokenlmError("backend='triton' needs the triton package (pip install 'tokenlm[triton]')")
    import triton  # noqa: F401


def use_triton(t: torch.Tensor, backend: str) -> bool:
    """Decide the backend for tensor ``t``; imports triton when the answer is yes."""
    if backend not in BACKENDS:
        raise TokenlmError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return False
    if backend == "auto":
        if not (t.is_cuda and triton_available()):
            return False
        try:
            import_triton(for_cpu=False)
        except Exception:  # a broken triton install: the twin still works
            return False
        return True
    import_triton(for_cpu=not t.is_cuda)
    return True
