"""LM core: vocabulary, layouts, prompts, model (cache == full forward), sampling constraints."""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenlm import layout as L
from tokenlm.errors import TokenlmError
from tokenlm.model import TokenLM, TokenLMConfig, config_for_vocab, lm_loss
from tokenlm.prompt import Prompt, collate, kind_masks
from tokenlm.sampling import (
    SamplingParams,
    decode_steps,
    generate_codec,
    generate_tokens,
    sample,
    stream_codec,
)
from tokenlm.vocab import SPECIALS, TextTokenizer, Vocab, train_sentencepiece


@dataclass
class FakeTokenizer:
    n_q: int
    codebook_size: int
    frame_rate: float = 50.0
    sample_rate: int = 16000


def tiny_vocab(n_q=3, cb=16, text=40):
    return Vocab.build(text_size=text, semantic=FakeTokenizer(1, 12), codec=FakeTokenizer(n_q, cb))


def tiny_model(vocab, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = TokenLMConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=128, **kw)
    m = TokenLM(config_for_vocab(cfg, vocab)).eval()
    m.vocab = vocab
    return m


# --------------------------------------------------------------------------- vocab


def test_vocab_ranges_come_from_tokenizers():
    v = Vocab.build(text_size=100, semantic=FakeTokenizer(1, 50), codec=FakeTokenizer(4, 1024))
    assert v.n_q == 4 and v.codebook_size == 1024
    assert v.range("specials").size == len(SPECIALS)
    assert v.range("semantic").size == 50
    assert v.codec_range(3).stop == v.n_used and v.size % 64 == 0 and v.size >= v.n_used
    names = list(v.ranges)
    for a, b in zip(names, names[1:]):  # contiguous and disjoint
        assert v.ranges[a].stop == v.ranges[b].start
    codes = torch.randint(0, 1024, (2, 4, 7))
    ids = v.codes_to_ids(codes)
    for k in range(4):
        r = v.codec_range(k)
        assert ((ids[:, k] >= r.start) & (ids[:, k] < r.stop)).all()
    assert torch.equal(v.ids_to_codes(ids), codes)
    assert Vocab.from_dict(v.to_dict()).to_dict() == v.to_dict()
    with pytest.raises(TokenlmError):
        v.ids_to_codes(ids.roll(1, dims=1))  # codebook ranges swapped


def test_sentencepiece_on_tiny_multilingual_text(tmp_path):
    lines = [
        "the cat sat on the mat",
        "de kat zat op de mat",
        "kočka seděla na rohožce",
        "a dog barks while rain falls",
        "hallo wereld en goedemorgen",
        "dobrý den a na shledanou",
    ] * 20
    model = train_sentencepiece(lines, tmp_path / "sp", vocab_size=60)
    v = Vocab.build(text_size=64, codec=FakeTokenizer(2, 8))
    tok = TextTokenizer(model, v)
    ids = tok.encode("de kat zat op de rohožce")
    r = v.range("text")
    assert ((ids >= r.start) & (ids < r.stop)).all()
    assert tok.decode(ids) == "de kat zat op de rohožce"
    with pytest.raises(TokenlmError):
        TextTokenizer(model, Vocab.build(text_size=10))


# --------------------------------------------------------------------------- layout


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), K=st.integers(1, 6), T=st.integers(1, 20), name=st.sampled_from(list(L.PATTERNS)))
def test_layout_round_trip(B, K, T, name):
    codes = torch.randint(0, 1000, (B, K, T))
    pat = L.make_pattern(name, K, T)
    seq = L.build(codes, pat, fill=-7)
    assert torch.equal(L.revert(seq, pat), codes)
    assert int((seq == -7).sum()) == B * (pat.index.numel() - K * T)


def test_delay_pattern_worked_example():
    codes = torch.tensor([[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]])
    seq = L.build(codes, L.delay_pattern(3, 4), fill=0)
    assert seq[0].tolist() == [[1, 2, 3, 4, 0, 0], [0, 5, 6, 7, 8, 0], [0, 0, 9, 10, 11, 12]]
    flat = L.build(codes, L.flatten_pattern(3, 4), fill=0)
    assert flat[0, 0, :6].tolist() == [1, 5, 9, 2, 6, 10]
    assert L.delay_pattern(3, 4).frames_done(2) == 1 and L.delay_pattern(3, 4).frames_done(5) == 4


# --------------------------------------------------------------------------- prompt


def test_prompt_build_masks_and_ranges():
    v = tiny_vocab()
    codes = v.codes_to_ids(torch.randint(0, 16, (1, 3, 5)))[0]
    p = Prompt(v, n_streams=3).special("bos").task("tts").text([v.range("text").start + 1] * 4)
    x = p.special("sep").codec(codes, loss=True, end=True).build()
    K, S = x.ids.shape
    assert (K, S) == (3, 7 + 5 + 1 + 2)
    masks = kind_masks(v, x.kinds)
    allowed = masks[x.allowed]  # [K, S, V]
    assert allowed.gather(-1, x.ids[..., None]).all(), "every prompt token lies in its own allowed range"
    # loss only on the codec segment's real codes and its eos, never on fillers
    assert not x.loss_mask[:, :7].any()
    assert int(x.loss_mask.sum()) == 3 * 5 + 1
    assert (x.ids[x.loss_mask] != v.special("fill")).all()
    batch = collate([x, x], v.pad)
    assert batch["inputs"].shape == (2, 3, S - 1) and torch.equal(batch["targets"][0], x.ids[:, 1:])


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("n_q", [1, 3])
def test_cached_generation_matches_full_forward(n_q):
    v = tiny_vocab(n_q=n_q)
    m = tiny_model(v)
    ids = torch.randint(1, v.n_used, (2, n_q, 30))
    full = m(ids)
    cache = m.new_cache(2)
    parts = [m(ids[:, :, :11], cache=cache)]  # prefill, then single steps, then a multi-step chunk
    parts += [m(ids[:, :, i : i + 1], cache=cache) for i in range(11, 20)]
    parts.append(m(ids[:, :, 20:], cache=cache))
    inc = torch.cat([o.logits for o in parts], dim=1)
    torch.testing.assert_close(inc, full.logits, atol=1e-5, rtol=1e-4)
    if n_q > 1:
        torch.testing.assert_close(
            torch.cat([o.stream_logits for o in parts], 2), full.stream_logits, atol=1e-5, rtol=1e-4
        )
    assert cache.pos == 30


def test_tiny_model_overfits_a_small_batch():
    v = tiny_vocab(n_q=2)
    m = tiny_model(v).train()
    ids = torch.randint(1, v.n_used, (4, 2, 24))
    ids[:, 1] = v.codes_to_ids(torch.randint(0, 16, (4, 2, 24)))[:, 1]
    mask = torch.ones(4, 2, 23, dtype=torch.bool)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        loss = lm_loss(m(ids[:, :, :-1]), ids[:, :, 1:], mask, m.cfg)["lm/loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.1, (first, loss.item())


def test_save_and_load_through_pretrained(tmp_path):
    from tokenlm.pretrained import load

    v = tiny_vocab()
    m = tiny_model(v)
    m.save(tmp_path / "lm", v)
    m2 = load(tmp_path / "lm")
    ids = torch.randint(1, v.n_used, (1, 3, 9))
    torch.testing.assert_close(m2(ids).logits, m(ids).logits)
    assert m2.vocab.to_dict() == v.to_dict() and m2.text_tokenizer is None


# --------------------------------------------------------------------------- sampling


def test_sample_respects_allowed_ids_top_k_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 50) * 5
    allowed = torch.rand(500, 50) < 0.2
    allowed[:, 0] = True
    for p in (
        SamplingParams(),
        SamplingParams(temperature=2.0, top_k=3),
        SamplingParams(top_p=0.5),
        SamplingParams(temperature=0.0),
    ):
        ids = sample(logits, allowed, p, g)
        assert allowed.gather(1, ids[:, None]).all()
    top1 = sample(logits, None, SamplingParams(top_k=1), g)
    assert torch.equal(top1, logits.argmax(-1))
    nucleus = sample(logits, None, SamplingParams(top_p=1e-6), g)
    assert torch.equal(nucleus, logits.argmax(-1))


def test_constrained_generation_never_leaves_ranges():
    v = tiny_vocab(n_q=3)
    m = tiny_model(v, seed=1)
    prompt = Prompt(v, 3).special("bos").task("continue").codec(v.codes_to_ids(torch.randint(0, 16, (1, 3, 4)))[0])
    ids = prompt.build().ids[None].repeat(3, 1, 1)
    g = torch.Generator().manual_seed(0)
    frames = list(stream_codec(m, ids, max_frames=12, p=SamplingParams(temperature=1.5), generator=g))
    assert 1 <= len(frames) <= 12
    for f in frames:
        for k in range(3):
            r = v.codec_range(k)
            ok = ((f[:, k] >= r.start) & (f[:, k] < r.stop)) | (f[:, k] == v.special("fill")) | (f[:, k] == v.eos)
            assert ok.all()
    codes, lengths = generate_codec(m, ids, max_frames=12, p=SamplingParams(temperature=1.5), generator=g)
    assert codes.shape[:2] == (3, 3) and (codes >= 0).all() and (codes < 16).all()
    assert (lengths <= 12).all()
    text = generate_tokens(m, ids[:1], kind="text", max_tokens=10, generator=g)
    r = v.range("text")
    assert all(((t >= r.start) & (t < r.stop)).all() for t in text)


def test_codec_generation_without_eos_and_guidance_and_sliding_window():
    v = tiny_vocab(n_q=2)
    m = tiny_model(v, seed=2)  # max_seq_len 128
    prompt = Prompt(v, 2).special("bos").task("continue").build().ids[None]
    uncond = Prompt(v, 2).special("bos").build().ids[None]
    p = SamplingParams(top_k=5, cfg_scale=3.0, window=32, keep_prefix=2)
    codes, lengths = generate_codec(
        m,
        prompt,
        max_frames=60,
        p=p,
        uncond=uncond,
        allow_eos=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert codes.shape == (1, 2, 60) and int(lengths[0]) == 60  # 61 steps through a 32-position window


def test_greedy_decode_matches_full_forward_argmax():
    v = tiny_vocab(n_q=1)
    m = tiny_model(v, seed=3)
    prompt = torch.randint(1, v.n_used, (1, 1, 6))
    rule_steps = []
    from tokenlm.sampling import TokenRule

    rule = TokenRule(v, 1, 1, kind="any", max_tokens=8)
    for s in decode_steps(m, prompt, rule, SamplingParams(temperature=0)):
        rule_steps.append(s)
    seq = torch.cat([prompt] + [s[:, :, None] for s in rule_steps], dim=2)
    full = m(seq[:, :, :-1]).logits.masked_fill(~kind_masks(v, ("any",))[0], float("-inf"))
    assert torch.equal(full[0, 5:].argmax(-1), seq[0, 0, 6:])


# --------------------------------------------------------------------------- int8 decoding


def test_quantize_rows_error_is_half_a_step():
    from tokenlm.quant import quantize_rows

    w = torch.randn(24, 40) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different scales
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.shape == (24,)
    err = (q.float() * s.float()[:, None] - w).abs()
    # scales are stored in bf16 (3 significant digits): allow that on top of half a quantization step
    assert (err <= 0.5 * s.float()[:, None] + 0.01 * w.abs().amax(1, keepdim=True)).all()


def test_int8_decoding_copy_keeps_a_trained_models_greedy_output():
    from tokenlm.quant import Int8Linear, decoding_copy
    from tokenlm.sampling import TokenRule, _Scorer

    v = tiny_vocab(n_q=2)
    torch.manual_seed(0)
    m = TokenLM(config_for_vocab(TokenLMConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=128), v))
    m.vocab = v
    seq = torch.randint(4, v.n_used, (1, 1, 40))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(150):
        loss = lm_loss(m(seq[:, :, :-1]), seq[:, :, 1:], torch.ones(1, 1, 39, dtype=torch.bool), m.cfg)["lm/loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    fast = decoding_copy(m, "int8")
    assert isinstance(fast.blocks[0].attn.qkv, Int8Linear) and isinstance(m.blocks[0].attn.qkv, torch.nn.Linear)
    assert fast.vocab is m.vocab

    def greedy(model):
        rule = TokenRule(v, 1, 1, kind="any", max_tokens=30)
        return torch.stack(list(decode_steps(model, seq[:, :, :10], rule, SamplingParams(temperature=0))))

    out32, out8 = greedy(m), greedy(fast)
    assert torch.equal(out32[:, 0, 0], seq[0, 0, 10:]), "the fp32 model did not memorise the sequence"
    assert torch.equal(out8, out32)
    with torch.no_grad():
        a, b = m(seq).logits, fast(seq).logits
        assert ((a - b).norm() / a.norm()) < 0.03
        # the sampler's int8 scoring of a codebook head matches the fp32 rows
        h = torch.randn(3, 64)
        mask = kind_masks(v, ("codec.1",))[0]
        l32, ids32 = _Scorer(m).logits(1, mask, h)
        l8, ids8 = _Scorer(fast).logits(1, mask, h)
        assert torch.equal(ids32, ids8) and ((l8 - l32).norm() / l32.norm()) < 0.03


def test_decoding_copy_refuses_unknown_precision_and_runs_bf16():
    from tokenlm.quant import decoding_copy

    v = tiny_vocab(n_q=1)
    m = tiny_model(v)
    with pytest.raises(TokenlmError, match="decode precision"):
        decoding_copy(m, "int4")
    b = decoding_copy(m, "bf16")
    assert b.head.weight.dtype == torch.bfloat16 and m.head.weight.dtype == torch.float32
    out = generate_tokens(b, torch.randint(1, v.n_used, (1, 1, 5)), kind="any", max_tokens=4)
    assert len(out) == 1 and out[0].numel() <= 4
