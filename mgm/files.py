"""Writing a run's files so that nothing written is lost: JSON replaced
atomically, an old file set aside under a free name rather than overwritten,
JSONL logs cut back to the step a run resumes from (the old file kept), and the
metrics log (metrics.jsonl + TensorBoard events).

Every path goes through etils.epath (`path`), so a workdir may be a local
directory or a URL such as gs://bucket/run where that store is reachable. On
a local disk a file is replaced atomically (a rename); an object store has no
atomic rename, but an object is only ever seen whole."""
import json
import os
import time

from etils import epath


def path(p) -> epath.Path:
  """`p` (str, pathlib or epath) as an epath.Path: a local path absolute with
  ~ expanded; a URL (gs://bucket/run, with `://`) as it is."""
  text = os.fspath(p)
  return epath.Path(text if _is_url(text) else os.path.abspath(os.path.expanduser(text)))


def _is_url(p) -> bool:
  return "://" in os.fspath(p)


def _lines(log: epath.Path) -> list[str]:
  """A text file's lines (each with its newline), none if there is no file."""
  return log.read_text(encoding="utf-8").splitlines(keepends=True) if log.exists() else []


def _replace(target: epath.Path, text: str):
  """Write `text` to a .tmp file renamed over `target`: never half-written."""
  tmp = _tmp(target)
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(target)


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
    workdir = path(workdir)
    self._log = workdir / "metrics.jsonl"
    truncate_after(self._log, start_step)
    if _is_url(self._log):   # an object store appends nothing: the log is rewritten whole
      self._jsonl, self._rows = None, _lines(self._log)
    else:
      self._jsonl = self._log.open("a", encoding="utf-8")
    self._tb = SummaryWriter(os.fspath(workdir / "tensorboard"), purge_step=start_step + 1)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    if self._jsonl is None:
      self._rows.append(json.dumps(row) + "\n")
      _replace(self._log, "".join(self._rows))
    else:
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, int(step))

  def close(self):
    if self.enabled:
      if self._jsonl is not None:
        self._jsonl.close()
      self._tb.close()


def truncate_after(log, step: int):
  """Drop the rows of a JSONL log with step > `step`; the file as it was is kept
  beside it as <name>-<time>.jsonl (nothing written is lost). Returns that path,
  or None when no row was dropped."""
  log = path(log)
  lines = _lines(log)
  keep = [line for line in lines if _row_step(line) <= step]
  if len(keep) == len(lines):
    return None
  tmp = _tmp(log)
  tmp.write_text("".join(keep), encoding="utf-8")
  backup = set_aside(log)
  tmp.replace(log)
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


def _tmp(target: epath.Path) -> epath.Path:
  return target.parent / (target.name + ".tmp")


def write_json(target, obj: dict):
  """Write atomically: a crash never leaves a half-written JSON file."""
  _replace(path(target), json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")


def set_aside(target):
  """Rename an existing file to <stem>-<time><ext> (a free name), so writing
  `target` afresh loses nothing. Returns the new name (a str), or None if there
  was no file."""
  target = path(target)
  if not target.exists():
    return None
  stem, n = f"{target.stem}-{time.strftime('%Y%m%d-%H%M%S')}", 0
  while (kept := target.parent / f"{stem}{f'-{n}' if n else ''}{target.suffix}").exists():
    n += 1
  target.replace(kept)
  return os.fspath(kept)


def last_logged(log, key: str, step: int, default=0.0):
  """`key` of the last row of a JSONL log at or before `step` that has it (a
  resumed run's starting point, e.g. its wall time so far); `default` if none."""
  value = default
  for line in _lines(path(log)):
    if _row_step(line) <= step:
      value = json.loads(line).get(key, value)
  return value
