"""Weight-only int8 for decoding on a CPU.

Batch-1 decoding reads every weight once per step and does two flops per weight read: it is bound by
memory traffic, not arithmetic. The small LM's 23 MB of fp32 weights do not stay in a 2 MB L2, so each
step streams them from L3 or DRAM. Stored as int8 with one scale per output row (symmetric, absmax / 127)
they are 4x smaller, and PyTorch's ``_weight_int8pack_mm`` CPU kernel multiplies bf16 activations by them
without unpacking (measured here: 24 small-LM matrices in 0.53 ms vs 2.9 ms fp32, 1.8 ms bf16).

    from tokenlm.quant import decoding_copy
    fast = decoding_copy(model, "int8")   # for generation only; ``model`` itself is untouched

Only ``nn.Linear`` layers of the Transformer blocks and the output rows the sampler scores are quantized;
embeddings, norms, attention and the KV cache keep their precision. Training never sees these layers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import TokenlmError

PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_DECODE_PRECISION = "int8"  # what generation uses unless told otherwise (tokenlm bench lm measures both)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [N, D]`` float -> (int8 ``[N, D]``, bf16 scales ``[N]``) with ``w ~= q * scale[:, None]``."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.to(torch.bfloat16)


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x [..., D] @ (q * scale[:, None]).T`` -> ``[..., N]`` in ``x``'s dtype (bf16 arithmetic)."""
    shape = x.shape
    y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous(), q, scale)
    return y.view(*shape[:-1], q.shape[0]).to(x.dtype)


class Int8Linear(nn.Module):
    """A frozen, bias-free ``nn.Linear`` with int8 weights and per-row scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise TokenlmError("Int8Linear takes bias-free layers")
        q, s = quantize_rows(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("scale", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_matmul(x, self.weight, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, int8"


def decoding_copy(model: nn.Module, precision: str = "int8") -> nn.Module:
    """A copy of ``model`` in eval mode for generation: ``fp32`` (as is), ``bf16`` (all weights) or ``int8``
    (the blocks' linear layers; the sampler quantizes the output rows it scores). ``model`` is not changed."""
    if precision not in PRECISIONS:
        raise TokenlmError(f"decode precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise TokenlmError("this PyTorch build has no int8 weight-only matmul; decode with fp32 or bf16")
    vocab, extras = (
        getattr(model, "vocab", None),
        {k: getattr(model, k) for k in ("pattern", "text_tokenizer") if hasattr(model, k)},
    )
    model.vocab = None  # shared, not copied
    try:
        out = copy.deepcopy(model).eval()
    finally:
        model.vocab = vocab
    out.vocab = vocab
    for k, v in extras.items():
        setattr(out, k, v)
    if precision == "bf16":
        out.to(torch.bfloat16)
    elif precision == "int8":
        for block in out.blocks:
            for parent in (block.attn, block.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(parent, name, Int8Linear(child))
    out.decode_precision = precision
    return out
