"""Every number a user sees is computed here and logged the same way.

`bits_per_byte` converts the mean token cross-entropy (nats per token) to bits
per token; with the byte tokenizer a token is a byte (document separators
count as one byte each, as they do in the synthetic corpus's entropy floor).
summary.json's keys are described in one place: README.md, "summary.json".
"""
import json
import math
import os
import time

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


class MetricsWriter:
  """metrics.jsonl (one JSON object per logged step) + TensorBoard events.

  Only the main process writes; others get a writer that does nothing, so
  call sites need no `if process_index == 0`.
  """

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
    """`start_step`: the step a run starts from (its checkpoint's). Rows after it
    were logged by an interrupted run and are logged again: metrics.jsonl drops
    them (`truncate_after`), TensorBoard hides them (`purge_step`)."""
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # deferred: only process 0 needs it
    truncate_after(os.path.join(workdir, "metrics.jsonl"), start_step)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, int(step))

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def truncate_after(path: str, step: int):
  """Drop the rows of a JSONL log with step > `step`; the file as it was is kept
  beside it as <name>-<time>.jsonl (nothing written is lost). Returns that path,
  or None when no row was dropped."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = [line for line in lines if _row_step(line) <= step]
  if len(keep) == len(lines):
    return None
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(keep)
  backup = set_aside(path)
  os.replace(path + ".tmp", path)
  return backup


def _row_step(line: str) -> float:
  """A row's step; a line cut short by a crash counts as after every step."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return float("inf")


def _plain(value):
  """numpy/jax scalars -> Python numbers for JSON."""
  if hasattr(value, "item"):
    value = value.item()
  return value


def write_json(path: str, obj: dict):
  """Write atomically: a crash never leaves a half-written JSON file."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_plain)
    f.write("\n")
  os.replace(tmp, path)


def set_aside(path: str):
  """Rename an existing file to <stem>-<time><ext> (a free name), so writing
  `path` afresh loses nothing. Returns the new name, or None if there was no file."""
  if not os.path.exists(path):
    return None
  stem, ext = os.path.splitext(path)
  stem, n = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}", 0
  while os.path.exists(kept := f"{stem}{f'-{n}' if n else ''}{ext}"):
    n += 1
  os.replace(path, kept)
  return kept


def last_logged(path: str, key: str, step: int, default=0.0):
  """`key` of the last row of a JSONL log at or before `step` that has it (a
  resumed run's starting point, e.g. its wall time so far); `default` if none."""
  value = default
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if _row_step(line) <= step:
          value = json.loads(line).get(key, value)
  return value


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
