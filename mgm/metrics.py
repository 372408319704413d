"""Every number a user sees is computed here (mgm/files.py's MetricsWriter logs
them), and a finished run's summary put in one line.

`bits_per_byte` converts the mean token cross-entropy (nats per token) to bits
per token; with the byte tokenizer a token is a byte (document separators
count as one byte each, as they do in the synthetic corpus's entropy floor).
summary.json's keys are described in one place: README.md, "summary.json".
"""
import math
import re

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
  held_out = [f"{name} {summary[key]:.1f}" for name, key in
              (("exact match", "heldout_exact_match"), ("BLEU", "heldout_bleu"),
               ("CIDEr-D", "heldout_cider")) if key in summary]
  return (f"done: step {summary['steps']:,} | eval {summary['eval_bpb']:.3f} bits/byte"
          + (f" ({', '.join(refs)})" if refs else "")
          + (f" | held-out generation: {', '.join(held_out)}" if held_out else "")
          + f" | {summary['tokens_per_sec']:,.0f} tokens/s, MFU {summary['mfu']:.1%}"
          f" | wall {wall} | files: {workdir}/ (summary.json, metrics.jsonl, samples/, "
          "checkpoints/)")


def _matches(hypothesis: str, references) -> bool:
  """`hypothesis` equals `references` (a str) or any of them (a list of str), each
  stripped of surrounding whitespace."""
  if isinstance(references, str):
    references = [references]
  return hypothesis.strip() in {r.strip() for r in references}


def exact_match(hypotheses: list[str], references: list) -> float:
  """Percent (0-100) of hypotheses equal to their reference after stripping
  surrounding whitespace; references[i] is one str, or a list of str (a match
  with any counts). 0 for no hypotheses."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  hits = sum(_matches(h, r) for h, r in zip(hypotheses, references))
  return 100.0 * hits / max(len(hypotheses), 1)


_PUNCTUATION = re.compile(r"[^\w\s]")


def caption_tokens(text: str) -> str:
  """Lower-cased words, punctuation split off and dropped, joined by spaces: what
  COCO's PTBTokenizer (Java) feeds CIDEr, done in Python ("A dog, running!" ->
  "a dog running"; unlike PTB, "don't" -> "don t")."""
  return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def cider_d(hypotheses: list[str], references: list[list[str]]) -> float:
  """Corpus CIDEr-D (Vedantam et al. 2015; 1-4-grams, clipped tf-idf, length penalty
  sigma=6, x10) from pycocoevalcap's scorer (pure Python; its Java PTBTokenizer is
  replaced by `caption_tokens`). Document frequencies come from these references,
  as in COCO's evaluation: a single image scores 0, and an n-gram in every image's
  references weighs nothing. Typically 0-10 (not a percent): a hypothesis equal to
  its only reference scores 10 when it has 4+ words and, of each order 1-4, an
  n-gram in no other image's references. 0 for no hypotheses."""
  from pycocoevalcap.cider.cider import Cider   # deferred: only caption evals need it
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
  if not hypotheses:
    return 0.0
  if any(not refs for refs in references):
    raise ValueError("every hypothesis needs at least one reference")
  res = {i: [caption_tokens(h)] for i, h in enumerate(hypotheses)}
  gts = {i: [caption_tokens(r) for r in refs] for i, refs in enumerate(references)}
  score, _ = Cider().compute_score(gts, res)
  return float(score)


def caption_scores(hypotheses: list[str], references: list[list[str]]) -> dict:
  """Scores of generated captions against one or more references each:
  {"bleu", "chrf"} (sacrebleu corpus scores, multi-reference, 0-100), "cider"
  (`cider_d`, ~0-10) and "exact_match" (% equal to any reference, `exact_match`)."""
  import sacrebleu                       # deferred: only generation evals need it
  if len(hypotheses) != len(references) or not hypotheses:
    raise ValueError(f"{len(hypotheses)} hypotheses and {len(references)} reference lists: "
                     "need as many, at least one")
  width = max((len(refs) for refs in references), default=0)
  streams = [[refs[k] if k < len(refs) else None for refs in references]   # None: no k-th
             for k in range(width)]                                         # reference
  return {"bleu": sacrebleu.corpus_bleu(hypotheses, streams).score,
          "chrf": sacrebleu.corpus_chrf(hypotheses, streams).score,
          "cider": cider_d(hypotheses, references),
          "exact_match": exact_match(hypotheses, references)}
