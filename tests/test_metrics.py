"""The generation metrics (sacrebleu, rouge-score) and the MFU arithmetic."""
import pytest

from mgm import flops
from mgm.files import last_logged
from mgm.metrics import bits_per_byte, perplexity, summary_line, text_scores


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


def test_utilization_is_achieved_over_the_probed_peak(monkeypatch):
  monkeypatch.setitem(flops._cpu_peak, "fastest", 4e12)   # as if a probe had measured 4 TFLOP/s
  out = flops.utilization(tokens_per_sec=1000.0, flops_per_token=1e9)   # 1e12 FLOP/s achieved
  assert out == {"tflops_per_sec": pytest.approx(1.0), "mfu": pytest.approx(0.25),
                 "peak_flops": pytest.approx(4e12)}


def test_the_peak_is_the_fastest_probe_so_far(monkeypatch):
  """A probe taken in a busy moment (here the second) never lowers the peak."""
  rates = iter([3e11, 1e11, 4e11])
  monkeypatch.setitem(flops._cpu_peak, "fastest", 0.0)
  monkeypatch.setattr(flops, "measured_matmul_flops", lambda: next(rates))
  assert [flops.probe_peak() for _ in range(3)] == [3e11, 3e11, 4e11]
  assert flops.peak_flops() == 4e11


def test_summary_line_labels_every_number():
  summary = {"steps": 200, "eval_bpb": 2.40213, "entropy_floor_bpb": 1.12531,
             "unigram_bpb": 4.44847, "tokens_per_sec": 12345.6, "mfu": 0.0512, "wall_s": 192.4,
             "invocation_wall_s": 62.0}
  assert summary_line(summary, "runs/demo") == (
      "done: step 200 | eval 2.402 bits/byte (entropy floor 1.125, unigram 4.448) | "
      "12,346 tokens/s, MFU 5.1% | wall 3m12s (this invocation 1m02s) | files: runs/demo/ "
      "(summary.json, metrics.jsonl, samples/, checkpoints/)")


def test_summary_line_of_a_conditioned_run_reports_its_held_out_generation():
  summary = {"steps": 400, "eval_bpb": 0.1028, "unigram_bpb": 3.9546,
             "heldout_exact_match": 18.75, "heldout_bleu": 62.476, "heldout_cider": 4.973,
             "tokens_per_sec": 3309.3, "mfu": 0.137, "wall_s": 617.4}
  line = summary_line(summary, "runs/caption")
  assert ("eval 0.103 bits/byte (unigram 3.955) | held-out generation: exact match 18.8, "
          "BLEU 62.5, CIDEr-D 5.0 | 3,309 tokens/s") in line


def test_last_logged_reads_the_row_at_or_before_a_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 10, "wall_s": 5.0}\n{"step": 20, "bpb": 3.0}\n'
                  '{"step": 30, "wall_s": 9.0}\n{"step": 40, "wa')   # the last cut short
  assert [last_logged(str(path), "wall_s", s) for s in (5, 10, 29, 30, 99)] == [0.0, 5.0, 5.0,
                                                                               9.0, 9.0]
