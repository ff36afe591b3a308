"""RVQ search: the PyTorch twin (and, in interpreter mode, the Triton kernel) against a plain cdist/argmin."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from tokenlm.errors import TokenlmError
from tokenlm.kernels import RVQEncoded, rvq_encode
from tokenlm.kernels.rvq import rvq_encode_torch


def rvq_reference(x: torch.Tensor, codebooks: torch.Tensor) -> RVQEncoded:
    """Plain RVQ: float64 cdist + argmin per level; float32 residual and running sum, as the contract says."""
    res = x.float().clone()
    q = torch.zeros_like(res)
    codes = []
    for cb in codebooks.float():
        idx = torch.cdist(res.double(), cb.double()).argmin(dim=1)
        q = q + cb[idx]
        res = res - cb[idx]
        codes.append(idx)
    return RVQEncoded(torch.stack(codes, 1), q.to(x.dtype))


def _data(N, K, M, D, seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    # shrinking codebooks per level, as a trained RVQ has
    cb = torch.randn(K, M, D, generator=g) * scale ** torch.arange(K).float()[:, None, None]
    return x, cb


def _assert_same(out, ref):
    assert out.codes.dtype == torch.int64
    assert torch.equal(out.codes, ref.codes), f"{(out.codes != ref.codes).sum()} codes differ"
    assert torch.equal(out.quantized, ref.quantized)


@pytest.mark.parametrize("N,K,M,D", [(1000, 4, 256, 32), (333, 3, 1024, 128), (1, 2, 16, 64), (0, 2, 8, 16)])
def test_torch_twin_matches_cdist_reference(N, K, M, D):
    x, cb = _data(N, K, M, D)
    out = rvq_encode(x, cb, backend="torch")
    assert out.codes.shape == (N, K) and out.quantized.shape == (N, D)
    _assert_same(out, rvq_reference(x, cb))


def test_chunk_size_prefix_and_norms_do_not_change_codes():
    x, cb = _data(700, 4, 128, 64, seed=1)
    full = rvq_encode_torch(x, cb)
    _assert_same(rvq_encode_torch(x, cb, chunk_rows=33), full)
    _assert_same(rvq_encode_torch(x, cb, codebook_norms=(cb * cb).sum(-1)), full)
    first2 = rvq_encode(x, cb[:2], backend="torch")
    assert torch.equal(first2.codes, full.codes[:, :2])


def _near_ties(n=256, D=64, M=64, seed=2):
    """Rows almost exactly between codes 0 and 1: float32 distances cannot rank them, float64 can."""
    g = torch.Generator().manual_seed(seed)
    cb = torch.randn(1, M, D, generator=g) * 3
    cb[0, 2:] += 40  # the other codes far away
    c0, c1 = cb[0, 0], cb[0, 1]
    t = 0.5 + torch.randn(n, 1, generator=g) * 2e-7
    x = c0 + t * (c1 - c0) + 30.0 * torch.randn(n, D, generator=g).div(1e6)
    return x, cb


def test_near_ties_are_ranked_exactly():
    x, cb = _near_ties()
    ref = rvq_reference(x, cb)
    assert set(ref.codes.unique().tolist()) == {0, 1}  # the case is really a coin toss between two codes
    naive = torch.addmm((cb[0] ** 2).sum(-1), x, cb[0].t(), alpha=-2.0).argmin(1)
    assert (naive != ref.codes[:, 0]).any(), "the fixture should fool a plain float32 search"
    _assert_same(rvq_encode_torch(x, cb), ref)


def test_duplicate_codes_take_the_first_index():
    x, cb = _data(300, 2, 32, 16, seed=3)
    cb[:, 5] = cb[:, 9]  # exact duplicates: ties broken towards the lower index, like argmin
    cb[:, 9] = cb[:, 5]
    out = rvq_encode_torch(x, cb)
    assert not (out.codes == 9).any()
    _assert_same(out, rvq_reference(x, cb))


def test_half_inputs_compute_in_float32():
    x, cb = _data(200, 3, 64, 32, seed=4)
    out = rvq_encode(x.half(), cb.half(), backend="torch")
    assert out.quantized.dtype == torch.float16
    _assert_same(out, rvq_reference(x.half(), cb.half()))


def test_bad_inputs_are_refused():
    x, cb = _data(10, 2, 8, 16)
    with pytest.raises(ValueError, match="D=16"):
        rvq_encode(x[:, :8], cb, backend="torch")
    with pytest.raises(ValueError, match="codebook_norms"):
        rvq_encode(x, cb, backend="torch", codebook_norms=torch.ones(2, 7))
    with pytest.raises(TokenlmError, match="unknown backend"):
        rvq_encode(x, cb, backend="cuda")


def test_importing_kernels_does_not_import_triton():
    code = (
        "import sys, torch; from tokenlm.kernels import rvq_encode, attention; "
        "rvq_encode(torch.randn(4, 8), torch.randn(2, 4, 8)); "
        "assert 'triton' not in sys.modules, 'triton imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inputs_are_not_modified():
    x, cb = _data(50, 2, 8, 16)
    x0, cb0 = x.clone(), cb.clone()
    rvq_encode(x, cb, backend="torch")
    assert torch.equal(x, x0) and torch.equal(cb, cb0)


# ---- the Triton kernel, in the interpreter on CPU ----


def _triton_or_skip():
    """The dispatcher switches the interpreter on before importing triton; skip if it is too late for that."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from tokenlm.kernels.dispatch import import_triton

    import_triton(for_cpu=True)


@pytest.mark.parametrize("N,K,M,D", [(300, 3, 200, 48), (65, 2, 1024, 128), (1, 4, 16, 32)])
def test_triton_kernel_matches_reference(N, K, M, D):
    _triton_or_skip()
    x, cb = _data(N, K, M, D, seed=N)
    _assert_same(rvq_encode(x, cb, backend="triton"), rvq_reference(x, cb))


def test_triton_kernel_flags_near_ties_and_handles_half():
    _triton_or_skip()
    from tokenlm.kernels.rvq_triton import rvq_encode_triton

    x, cb = _near_ties(n=96)
    _assert_same(rvq_encode_triton(x, cb, block_n=32, block_m=16), rvq_reference(x, cb))
    x, cb = _data(100, 2, 64, 32, seed=5)
    _assert_same(rvq_encode_triton(x.bfloat16(), cb.bfloat16()), rvq_reference(x.bfloat16(), cb.bfloat16()))
    with pytest.raises(ValueError, match="float64"):
        rvq_encode_triton(x.double(), cb.double())


def test_forcing_triton_after_a_plain_import_is_refused():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    code = (
        "import os, torch; os.environ.pop('TRITON_INTERPRET', None); import triton; "
        "from tokenlm.errors import TokenlmError; from tokenlm.kernels import rvq_encode\n"
        "try:\n rvq_encode(torch.randn(4, 8), torch.randn(2, 4, 8), backend='triton')\n"
        "except TokenlmError as e:\n assert 'TRITON_INTERPRET=1' in str(e); print('refused')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "refused"


@pytest.mark.parametrize("M", [1024, 100, 37])
def test_nearest_two_matches_topk(M):
    from tokenlm.kernels.rvq import nearest_two

    dist = torch.randn(300, M, generator=torch.Generator().manual_seed(M))
    top = dist.topk(2, dim=1, largest=False)
    got = nearest_two(dist.clone())
    assert torch.equal(got.idx, top.indices[:, 0])
    assert torch.equal(got.best, top.values[:, 0]) and torch.equal(got.runner_up, top.values[:, 1])
