"""The generation metrics (sacrebleu, rouge-score) and the MFU arithmetic."""
import pytest

from mgm import flops
from mgm.metrics import bits_per_byte, perplexity, text_scores


def test_identical_text_scores_100_and_unrelated_text_0():
  refs = ["the quick brown fox jumps over the lazy dog", "a sentence of several words here"]
  same = text_scores(refs, refs)
  assert all(v == pytest.approx(100.0) for v in same.values()), same
  unrelated = text_scores(["zzz qqq", "xxx yyy"], refs)
  assert unrelated["bleu"] == 0.0 and unrelated["rougeL"] == 0.0 and unrelated["chrf"] < 5


def test_partial_overlap_lies_between():
  scores = text_scores(["the quick brown cat"], ["the quick brown fox"])
  for name in ("bleu", "chrf", "rouge1", "rougeL"):
    assert 0 < scores[name] < 100, (name, scores)
  assert scores["rouge1"] == pytest.approx(75.0)   # 3 of 4 unigrams on both sides


def test_bits_and_perplexity_of_a_uniform_byte():
  import math
  assert bits_per_byte(math.log(256)) == pytest.approx(8.0)
  assert perplexity(math.log(256)) == pytest.approx(256.0)


def test_utilization_is_achieved_over_peak():
  out = flops.utilization(tokens_per_sec=1000.0, flops_per_token=1e9)
  assert out["tflops_per_sec"] == pytest.approx(1.0)
  assert out["mfu"] == pytest.approx(1e12 / flops.peak_flops())
  assert 1e9 < flops.peak_flops() < 1e14   # a CPU's measured matmul rate
