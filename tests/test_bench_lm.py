"""``tokenlm bench lm``'s report: the headline is ours under the training precision policy against GPT-2 at its
faster precision on this CPU."""

import pytest

from tokenlm.bench.lm import train_rows

TIMES = {"ours_fp32": 1.0, "hf_gpt2_fp32": 2.0, "ours_bf16": 10.0, "hf_gpt2_bf16": 40.0}  # s per step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_headline_is_ours_at_the_policy_precision_against_gpt2_at_its_best(precision):
    r = train_rows(TIMES, 1000, precision)
    assert r["train_precision"].startswith(f"ours {precision}") and "GPT-2 fp32" in r["train_precision"]
    assert r["train_tokens_per_s"] == r[f"train_tokens_per_s_{precision}"]
    assert r["train_tokens_per_s_hf_gpt2"] == r["train_tokens_per_s_hf_gpt2_fp32"] == 500.0  # GPT-2's faster one
    assert r["train_tokens_per_s_vs_hf_gpt2"] == {"fp32": 2.0, "bf16": 0.2}[precision]
    assert r["train_tokens_per_s_fp32"] == 1000.0 and r["train_tokens_per_s_hf_gpt2_bf16"] == 25.0
    assert r["train_vs_hf_gpt2_both_fp32"] == 2.0 and r["train_vs_hf_gpt2_both_bf16"] == 4.0
