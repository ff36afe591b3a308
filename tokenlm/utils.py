"""Small shared helpers: seeding, logging set-up, atomic writes, progress bars."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger("tokenlm")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run is repeatable."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it.

    The temporary name keeps the final suffix (``.x.tmp123.wav``) so that writers that pick a format
    from the extension still work. Nothing is left behind when the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr, silent when stderr is not a terminal unless forced."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", None)  # None: hide on non-TTY
    return tqdm(iterable, **kwargs)


def cache_dir() -> Path:
    """Where data and training state live (outside the work tree): $TOKENLM_CACHE or ~/.cache/tokenlm."""
    root = Path(os.environ.get("TOKENLM_CACHE", Path.home() / ".cache" / "tokenlm"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU does bf16 matrix products natively (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    try:
        flags = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its widest vector extension, e.g. ``"AMD EPYC (AVX2, no native bf16)"``: benchmark
    numbers mean little without it (the same code ran 3x slower per training step on an AVX2 machine)."""
    try:
        info = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "CPU")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    vec = next(
        (label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "no AVX"
    )
    return f"{name} ({vec}, {'native' if cpu_has_fast_bf16(info) else 'no native'} bf16)"


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``"auto"`` -> ``"bf16"`` where bf16 autocast pays (a CUDA GPU with bf16, a CPU with native bf16 products),
    ``"fp32"`` elsewhere; ``"bf16"`` / ``"fp32"`` pass through. On a CPU without AVX-512 BF16 (an AVX2 EPYC, say),
    bf16 autocast is emulated and a codec training step took 9.6 s instead of ~0.45 s."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


class StopRequest:
    """``with StopRequest() as stop:`` — a first Ctrl-C (SIGINT) or SIGTERM only sets ``stop.requested``, so a
    training loop can finish its step, checkpoint and return; a second one interrupts at once. Outside the main
    thread (where Python cannot install signal handlers) it does nothing."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logging.getLogger("tokenlm").warning(
            "%s: stopping after this step with a checkpoint (again to abort)", signal.Signals(signum).name
        )

    def __enter__(self) -> StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
