"""Triton attention (interpreter mode on CPU) against its twin, SDPA, and the twin against naive attention.

Tolerances: float32 inputs 1e-4 absolute on outputs and gradients (observed ~1e-6). float16: 1e-2 absolute
against float32 SDPA on the same rounded inputs (the target; observed <= 2e-3). bfloat16 has an
8-bit mantissa, so one rounding of a gradient of size 2-4 is already 0.016 (SDPA's own bfloat16 result is
off by that much): there the bound is 1e-2 absolute plus 1e-2 relative.
"""

import importlib.util
import os
import sys

import pytest
import torch

from tokenlm.kernels import attention
from tokenlm.kernels.attention import attention_naive, attention_torch, causal_mask


def _qkv(B, H, Tq, Tk, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(dtype).requires_grad_() for T in (Tq, Tk, Tk)]


def _grads(fn, q, k, v, causal, seed=1):
    out = fn(q, k, v, causal)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return [out, *torch.autograd.grad(out, (q, k, v), dout)]


@pytest.fixture(scope="module")
def triton_interp():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from tokenlm.kernels.dispatch import import_triton

    import_triton(for_cpu=True)


def test_twin_matches_naive_with_bottom_right_mask():
    for Tq, Tk in [(9, 9), (3, 11), (1, 7)]:
        q, k, v = _qkv(2, 3, Tq, Tk, 16)
        torch.testing.assert_close(attention_torch(q, k, v), attention_naive(q, k, v), atol=1e-5, rtol=1e-5)
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize(
    "B,H,Tq,Tk,D,causal",
    [
        (2, 2, 37, 37, 32, True),  # T not a multiple of the 64 block
        (1, 2, 70, 70, 64, False),
        (1, 1, 1, 1, 128, True),  # T = 1
        (1, 1, 67, 67, 128, True),
        (1, 2, 20, 45, 64, True),  # queries after a cached prefix, with gradients
        (1, 1, 24, 24, 48, True),  # head dim padded to 64 inside the kernel
    ],
)
def test_forward_and_grads_match_sdpa(triton_interp, B, H, Tq, Tk, D, causal):
    q, k, v = _qkv(B, H, Tq, Tk, D)
    ours = _grads(lambda *a: attention(*a, backend="triton"), q, k, v, causal)
    twin = _grads(attention_torch, q, k, v, causal)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, twin):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_1e_2(triton_interp, dtype):
    q, k, v = _qkv(1, 2, 50, 50, 64, dtype=dtype)
    ours = _grads(lambda *a: attention(*a, backend="triton"), q, k, v, True)
    ref = _grads(lambda q, k, v, c: attention_torch(q.float(), k.float(), v.float(), c), q, k, v, True)
    rtol = 1e-2 if dtype == torch.bfloat16 else 0.0
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert a.dtype == dtype
        excess = ((a.float() - b).abs() - 1e-2 - rtol * b.abs()).max().item()
        assert excess <= 0, f"{name}: error exceeds the bound by {excess:.3g}"


@pytest.mark.parametrize("Tq,n_splits", [(1, 4), (3, 3), (16, 2)])
def test_decode_step_against_cache(triton_interp, Tq, n_splits):
    from tokenlm.kernels.attention_triton import attention_decode

    q, k, v = (t.detach() for t in _qkv(2, 2, Tq, 150, 64, seed=Tq))
    want = attention_torch(q, k, v)
    torch.testing.assert_close(attention_decode(q, k, v, n_splits=n_splits), want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the dispatcher's decode path (one split on the interpreter)
        torch.testing.assert_close(attention(q, k, v, backend="triton"), want, atol=1e-5, rtol=1e-4)
    # the cached step equals the last rows of full causal attention over the whole sequence
    full_q = torch.cat([torch.randn(2, 2, 150 - Tq, 64), q], dim=2)
    torch.testing.assert_close(attention_torch(full_q, k, v)[:, :, -Tq:], want, atol=1e-5, rtol=1e-4)


def test_limits_are_asserted(triton_interp):
    from tokenlm.kernels.attention_triton import attention_triton

    q, k, v = (t.detach() for t in _qkv(1, 1, 4, 4, 256))
    with pytest.raises(ValueError, match="head dims"):
        attention_triton(q, k, v)
    q, k, v = (t.detach() for t in _qkv(1, 1, 5, 4, 32))
    with pytest.raises(ValueError, match="Tq <= Tk"):
        attention_triton(q, k, v)
    with pytest.raises(ValueError, match="float16"):
        attention_triton(*(t.double() for t in _qkv(1, 1, 4, 4, 32)))
