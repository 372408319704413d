"""Every number a user sees is computed here (mgm/files.py's MetricsWriter logs
them), and a finished run's summary put in one line.

`bits_per_byte` converts the mean token cross-entropy (nats per token) to bits
per token; with the byte tokenizer a token is a byte (document separators
count as one byte each, as they do in the synthetic corpus's entropy floor).
summary.json's keys are described in one place: README.md, "summary.json".
"""
import math

LN2 = math.log(2.0)


def bits_per_byte(nats_per_token: float) -> float:
  return float(nats_per_token) / LN2


def perplexity(nats_per_token: float) -> float:
  return math.exp(min(float(nats_per_token), 700.0))


def text_scores(hypotheses: list[str], references: list[str]) -> dict:
  """Corpus BLEU and chrF (sacrebleu) and mean ROUGE-1/2/L F1 (rouge-score), all 0-100."""
  import sacrebleu                       # deferred: only generation evals need them
  from rouge_score import rouge_scorer
  kinds = ("rouge1", "rouge2", "rougeL")
  scorer = rouge_scorer.RougeScorer(kinds)
  rouge = [scorer.score(ref, hyp) for hyp, ref in zip(hypotheses, references)]
  return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
          "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
          **{k: 100 * sum(r[k].fmeasure for r in rouge) / max(len(rouge), 1) for k in kinds}}


def duration(seconds: float) -> str:
  """'45s', '3m12s', '2h05m'."""
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def summary_line(summary: dict, workdir: str) -> str:
  """A finished run in one labelled line: eval bits/byte against the floor and
  the unigram entropy, speed, wall time, and where its files are."""
  refs = [f"{name} {summary[key]:.3f}" for name, key in
          (("entropy floor", "entropy_floor_bpb"), ("unigram", "unigram_bpb")) if key in summary]
  wall = duration(summary["wall_s"])
  if summary.get("invocation_wall_s", summary["wall_s"]) < summary["wall_s"] - 0.5:
    wall += f" (this invocation {duration(summary['invocation_wall_s'])})"
  return (f"done: step {summary['steps']:,} | eval {summary['eval_bpb']:.3f} bits/byte"
          + (f" ({', '.join(refs)})" if refs else "")
          + f" | {summary['tokens_per_sec']:,.0f} tokens/s, MFU {summary['mfu']:.1%}"
          f" | wall {wall} | files: {workdir}/ (summary.json, metrics.jsonl, samples/, "
          "checkpoints/)")
