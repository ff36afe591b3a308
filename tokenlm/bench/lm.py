"""``tokenlm bench lm``: our Transformer beside Hugging Face GPT-2 of the same size, in one process.

Measured (each a best of several alternating repeats, because the CPU is shared and noisy):

* training tokens/s (forward + backward + AdamW step) of ``TokenLM`` and ``GPT2LMHeadModel`` (random
  init from a ``GPT2Config`` with the same width, depth, heads, vocabulary and sequence length). The
  headline runs ours under the training precision policy (``utils.resolve_precision("auto")``: bf16
  autocast only on a CPU with native bf16 products; on an AVX2 CPU bf16 is emulated and 10-20x slower)
  and GPT-2 at whichever precision is faster for it on this CPU;
  fp32 and bf16 rows of both stand beside it, and the report names the CPU;
* cached generation steps/s (batch 1, greedy) of our ``sampling.decode_steps`` and of GPT-2's
  ``generate`` with its KV cache: ours with int8 weights (``tokenlm.quant``, what generation uses) and
  ours in fp32 like GPT-2 (``gen_vs_hf_gpt2_both_fp32``);
* the KV-cache speed-up: the same 500 greedy steps with the cache vs recomputing the whole prefix;
* the small config generating codec frames (delay pattern, 8 codebooks): frames/s and the real-time
  factor at 50 frames/s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from tokenlm.model import TokenLM, TokenLMConfig, config_for_vocab, lm_loss
from tokenlm.quant import DEFAULT_DECODE_PRECISION, decoding_copy
from tokenlm.sampling import SamplingParams, TokenRule, decode_steps, stream_codec
from tokenlm.utils import cpu_description, cpu_has_fast_bf16, resolve_precision
from tokenlm.vocab import Vocab


@dataclass(frozen=True)
class Shape:
    n_layers: int = 6
    dim: int = 256
    n_heads: int = 4
    vocab: int = 4096
    batch: int = 8
    seq_len: int = 1024
    gen_steps: int = 500
    prompt: int = 16
    repeats: int = 3


FULL = Shape()
QUICK = Shape(n_layers=2, dim=128, n_heads=2, vocab=1024, batch=2, seq_len=128, gen_steps=40, prompt=8, repeats=2)


def ours(s: Shape) -> TokenLM:
    torch.manual_seed(0)
    vocab = Vocab.build(text_size=s.vocab - 64)  # a single stream; size rounds to s.vocab
    cfg = TokenLMConfig(dim=s.dim, n_layers=s.n_layers, n_heads=s.n_heads, max_seq_len=max(s.seq_len, 1024))
    m = TokenLM(config_for_vocab(cfg, vocab))
    m.vocab = vocab
    return m


def hf_gpt2(s: Shape, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=max(s.seq_len, 1024),
        n_embd=s.dim,
        n_layer=s.n_layers,
        n_head=s.n_heads,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


# --------------------------------------------------------------------------- training


def train_steppers(s: Shape) -> dict:
    """Closures that each run one full training step on the same batch, keyed ``<model>_<precision>``:
    ours and GPT-2, each in fp32 and under bf16 autocast, so that every comparison reads like for like."""
    m = ours(s)
    vocab = m.vocab
    g = hf_gpt2(s, vocab.size)
    ids = torch.randint(64, vocab.size, (s.batch, s.seq_len + 1))
    mask = torch.ones(s.batch, 1, s.seq_len, dtype=torch.bool)
    opt_m = torch.optim.AdamW(m.parameters(), lr=1e-4)
    opt_g = torch.optim.AdamW(g.parameters(), lr=1e-4)
    m.train()
    g.train()

    def step_ours(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m(ids[:, None, :-1])
        lm_loss(out, ids[:, None, 1:], mask, m.cfg)["lm/loss"].backward()
        opt_m.step()
        opt_m.zero_grad(set_to_none=True)

    def step_hf(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = g(ids[:, :-1], labels=ids[:, :-1]).loss  # HF shifts the labels itself
        loss.backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)

    return {
        "ours_fp32": lambda: step_ours(False),
        "hf_gpt2_fp32": lambda: step_hf(False),
        "ours_bf16": lambda: step_ours(True),
        "hf_gpt2_bf16": lambda: step_hf(True),
        "_params": (m.num_params(), sum(p.numel() for p in g.parameters())),
    }


def best_time(fns: list, repeats: int) -> list[float]:
    """Run ``fns`` alternately ``repeats`` times after one warm-up each; best wall time per fn."""
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


# --------------------------------------------------------------------------- generation


def gen_ours(m: TokenLM, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    rule = TokenRule(m.vocab, 1, prompt.shape[0], kind="any", max_tokens=steps)
    out = list(decode_steps(m, prompt, rule, SamplingParams(temperature=0, threads=0)))
    return torch.stack(out, 1)[:, :, 0]


@torch.inference_mode()
def gen_ours_no_cache(m: TokenLM, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """The same greedy decode, recomputing the whole prefix every step (no KV cache)."""
    seq = prompt
    for _ in range(steps):
        nxt = m(seq).logits[:, -1, : m.vocab.n_used].argmax(-1)
        seq = torch.cat([seq, nxt.view(-1, 1, 1)], dim=2)
    return seq[:, 0, prompt.shape[2] :]


@torch.inference_mode()
def gen_hf(g, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    return g.generate(
        prompt[:, 0],
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )


def small_codec_speed(quick: bool) -> dict:
    """The small config (configs/lm/small.yaml) generating 8-codebook frames with the delay pattern."""
    from tokenlm.config import load_config
    from tokenlm.train import TrainConfig

    cfg = load_config(TrainConfig, "lm/small").model
    codec = SimpleNamespace(n_q=8, codebook_size=1024)
    vocab = Vocab.build(text_size=2000, semantic=SimpleNamespace(n_q=1, codebook_size=500), codec=codec)
    torch.manual_seed(0)
    m = TokenLM(config_for_vocab(cfg, vocab)).eval()
    m.vocab = vocab
    frames = 20 if quick else 250  # 5 s of audio at 50 frames/s
    prompt = torch.full((1, 8, 4), vocab.pad)
    prompt[:, 0] = torch.tensor(
        [vocab.special("bos"), vocab.task("tts"), vocab.text_to_ids([5])[0], vocab.special("sep")]
    )
    p = SamplingParams(temperature=1.0, top_k=50)
    fast = decoding_copy(m, DEFAULT_DECODE_PRECISION)
    res = {"small_params_m": round(m.num_params() / 1e6, 2), "small_decode_threads": p.threads}
    for name, model in ((DEFAULT_DECODE_PRECISION, fast), ("fp32", m)):
        best, best_cpu = float("inf"), float("inf")
        for _ in range(1 if quick else 3):
            t, c = time.perf_counter(), time.process_time()
            n = sum(1 for _ in stream_codec(model, prompt, frames, p, allow_eos=False))
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        # wall time is what a user waits on this shared CPU; CPU time is what an idle core would need
        sfx = "" if name == DEFAULT_DECODE_PRECISION else f"_{name}"
        res.update(
            {
                f"small_frames_per_s{sfx}": round(n / best, 1),
                f"small_realtime_factor_at_50hz{sfx}": round(n / best / 50, 2),
                f"small_frames_per_cpu_s{sfx}": round(n / best_cpu, 1),
                f"small_realtime_factor_at_50hz_cpu_time{sfx}": round(n / best_cpu / 50, 2),
            }
        )
    res["small_decode_precision"] = DEFAULT_DECODE_PRECISION
    return res


# --------------------------------------------------------------------------- driver


def run(quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    steps = train_steppers(s)
    n_ours, n_hf = steps.pop("_params")
    names = list(steps)
    times = dict(zip(names, best_time([steps[n] for n in names], s.repeats)))
    res = {
        "cpu": cpu_description(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "shape": {
            "n_layers": s.n_layers,
            "dim": s.dim,
            "n_heads": s.n_heads,
            "vocab": s.vocab,
            "batch": s.batch,
            "seq_len": s.seq_len,
        },
        "threads": torch.get_num_threads(),
        "params_ours_m": round(n_ours / 1e6, 2),
        "params_hf_gpt2_m": round(n_hf / 1e6, 2),
        **train_rows(times, s.batch * s.seq_len, resolve_precision("auto", "cpu")),
    }
    del steps
    res.update(generation(s))
    res.update(small_codec_speed(quick))
    res["note"] = f"best of {s.repeats} alternating repeats per measurement on a shared CPU"
    return res


def train_rows(times: dict, tokens: int, precision: str) -> dict:
    """Tokens/s from the step times (``times["ours_fp32"]`` etc., s). The headline is what a user of this CPU
    gets: ours at ``precision`` (training's policy here) against GPT-2 at whichever precision is faster for it
    here (HF users pick that; GPT-2 under CPU bf16 autocast can be 10x slower than in fp32, which would flatter
    us); then every model x precision."""
    per_s = lambda key: round(tokens / times[key], 1)  # noqa: E731
    gpt2 = min(("fp32", "bf16"), key=lambda p: times[f"hf_gpt2_{p}"])
    res = {
        "train_precision": f"ours {precision} (training's policy on this CPU: resolve_precision('auto')), "
        f"GPT-2 {gpt2} (its faster precision here)",
        "train_tokens_per_s": per_s(f"ours_{precision}"),
        "train_tokens_per_s_hf_gpt2": per_s(f"hf_gpt2_{gpt2}"),
        "train_tokens_per_s_vs_hf_gpt2": round(times[f"hf_gpt2_{gpt2}"] / times[f"ours_{precision}"], 2),
    }
    for p in ("fp32", "bf16"):
        res[f"train_tokens_per_s_{p}"] = per_s(f"ours_{p}")
        res[f"train_tokens_per_s_hf_gpt2_{p}"] = per_s(f"hf_gpt2_{p}")
        res[f"train_vs_hf_gpt2_both_{p}"] = round(times[f"hf_gpt2_{p}"] / times[f"ours_{p}"], 2)
    return res


def generation(s: Shape, threads: int = 1) -> dict:
    """Batch-1 greedy decoding, both models on ``threads`` torch threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {"gen_threads": threads, **_generation(s)}
    finally:
        torch.set_num_threads(prev)


def _generation(s: Shape) -> dict:
    m = ours(s).eval()
    g = hf_gpt2(s, m.vocab.size).eval()
    fast = decoding_copy(m, DEFAULT_DECODE_PRECISION)
    prompt = torch.randint(64, m.vocab.size, (1, 1, s.prompt))
    n = s.gen_steps
    t_fast, t_c, t_hf = best_time(
        [lambda: gen_ours(fast, prompt, n), lambda: gen_ours(m, prompt, n), lambda: gen_hf(g, prompt, n)], s.repeats
    )
    (t_full,) = best_time([lambda: gen_ours_no_cache(m, prompt, n)], 1)
    same = torch.equal(gen_ours(m, prompt, n), gen_ours_no_cache(m, prompt, n))
    return {
        "gen_steps": n,
        "gen_decode_precision": f"ours: {DEFAULT_DECODE_PRECISION} weights (tokenlm.quant); hf_gpt2: fp32",
        "gen_steps_per_s": round(n / t_fast, 1),
        "gen_steps_per_s_hf_gpt2": round(n / t_hf, 1),
        "gen_steps_per_s_vs_hf_gpt2": round(t_hf / t_fast, 2),
        "gen_steps_per_s_fp32": round(n / t_c, 1),
        "gen_vs_hf_gpt2_both_fp32": round(t_hf / t_c, 2),
        "gen_steps_per_s_no_cache": round(n / t_full, 1),
        "kv_cache_speedup": round(t_full / t_c, 2),  # both fp32
        "kv_cache_same_tokens": bool(same),
    }


def cli(args) -> int:
    res = run(quick=args.quick)
    text = json.dumps(res, indent=2)
    if args.out:
        from tokenlm.utils import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    if args.json:
        print(text)
    else:
        for k, v in res.items():
            print(f"{k:36s} {v}")
    return 0
