"""``tokenlm bench lm``'s report: the headline follows the training precision policy, for both models."""

import pytest

from tokenlm.bench.lm import train_rows

TIMES = {"ours_fp32": 1.0, "hf_gpt2_fp32": 2.0, "ours_bf16": 10.0, "hf_gpt2_bf16": 40.0}  # s per step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_headline_is_the_policy_precision_for_both(precision):
    r = train_rows(TIMES, 1000, precision)
    assert r["train_precision"].startswith(precision)
    assert r["train_tokens_per_s"] == r[f"train_tokens_per_s_{precision}"]
    assert r["train_tokens_per_s_hf_gpt2"] == r[f"train_tokens_per_s_hf_gpt2_{precision}"]
    assert r["train_tokens_per_s_vs_hf_gpt2"] == r[f"train_vs_hf_gpt2_both_{precision}"]
    assert r["train_tokens_per_s_fp32"] == 1000.0 and r["train_tokens_per_s_hf_gpt2_bf16"] == 25.0
    assert r["train_vs_hf_gpt2_both_fp32"] == 2.0 and r["train_vs_hf_gpt2_both_bf16"] == 4.0
