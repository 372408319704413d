"""Writing a run's files so that nothing written is lost: JSON replaced
atomically, an old file set aside under a free name rather than overwritten,
JSONL logs cut back to the step a run resumes from (the old file kept), and the
metrics log (metrics.jsonl + TensorBoard events)."""
import json
import os
import time


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
