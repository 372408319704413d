"""`pairs`: paired examples from local files named by data.files (globs).

  *.jsonl  one JSON object a line: {"source": str, "target": str} or
           {"image": "<path>", "target": str} (both inputs may be given;
           "references": [str, ...] optional, else [target]); an image path is
           relative to the file's folder; blank lines are skipped.
  *.tsv    source<TAB>target a line (exactly one tab).
Every example of the files must carry the same inputs. Each example's split
follows data.val_fraction from its key file:line (`sources.validation_flags`),
like the text source's documents. Files are read once per change (cached on
path, size and mtime); every image is opened and verified then, so a bad
image is refused before training, naming the file and line.
"""
import dataclasses
import functools
import json
import os

from mgm.data import paired, sources
from mgm.errors import DataError

_KEYS = {"source", "target", "image", "references"}


@dataclasses.dataclass(frozen=True)
class PairFiles:
  inputs: tuple[str, ...]      # subset of paired.INPUTS
  records: tuple[dict, ...]    # {"target", "references", "source"?, "image"? (abs path)}
  keys: tuple[str, ...]        # "file:line" of each record

  def examples(self, data_cfg, split: str) -> paired.Examples:
    flags = sources.validation_flags(list(self.keys), data_cfg.val_fraction)
    chosen = [r for r, v in zip(self.records, flags) if v == (split == "validation")]
    size, channels = data_cfg.image_size, data_cfg.image_channels

    def make(i):
      example = dict(chosen[i])
      if "image" in example:
        example["image"] = _load_image(example["image"], size, channels)
      return example
    return paired.Examples(len(chosen), make, f"pairs {split}")


def _load_image(path: str, size: int, channels: int):
  from PIL import Image
  with Image.open(path) as image:
    return paired.fit_image(image, size, channels)


def read(data_cfg) -> PairFiles:
  """The records of data.files; DataError naming the file and line of the first bad one."""
  paths = sources.match_files(data_cfg.files)
  stamps = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
  return _read(stamps)


@functools.lru_cache(maxsize=8)
def _read(stamps) -> PairFiles:
  records, keys = [], []
  for path, _, _ in stamps:
    for line_no, record in _file_records(path):
      records.append(record)
      keys.append(f"{os.path.basename(path)}:{line_no}")
  if len(records) < 2:
    raise DataError("data.files", f"the pair files hold {len(records)} example(s); need at "
                    "least 2 (one for training, one for validation)")
  first = _inputs(records[0])
  for record, key in zip(records, keys):
    if _inputs(record) != first:
      raise DataError("data.files", f"{key}: has inputs {_inputs(record)} but the first "
                      f"example has {first}; every example needs the same inputs")
  return PairFiles(first, tuple(records), tuple(keys))


def _inputs(record: dict) -> tuple[str, ...]:
  return tuple(i for i in paired.INPUTS if i in record)


def _file_records(path: str):
  """(line number, record) of one pair file."""
  kind = os.path.splitext(path)[1].lower()
  if kind not in (".jsonl", ".tsv"):
    raise DataError("data.files", f"{path}: pair files are .jsonl or .tsv, not {kind or 'no '}"
                    "extension")
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().split("\n")
  except (OSError, UnicodeDecodeError) as e:
    raise DataError("data.files", f"{path}: cannot be read as UTF-8 text: {e}") from None
  for line_no, line in enumerate(lines, 1):
    if line.strip():
      where = f"{path}:{line_no}"
      yield line_no, (_json_record if kind == ".jsonl" else _tsv_record)(line, where, path)


def _tsv_record(line: str, where: str, path: str) -> dict:
  parts = line.rstrip("\r").split("\t")
  if len(parts) != 2:
    raise DataError("data.files", f"{where}: a TSV line is source<TAB>target, this one has "
                    f"{len(parts) - 1} tab(s)")
  return {"source": parts[0], "target": parts[1], "references": [parts[1]]}


def _json_record(line: str, where: str, path: str) -> dict:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError("data.files", f"{where}: not valid JSON ({e.msg})") from None
  if not isinstance(record, dict) or not isinstance(record.get("target"), str):
    raise DataError("data.files", f"{where}: needs an object with a string \"target\"")
  unknown = set(record) - _KEYS
  if unknown:
    raise DataError("data.files", f"{where}: unknown key(s) {sorted(unknown)}; the keys are "
                    f"{sorted(_KEYS)}")
  if not all(isinstance(record.get(k, ""), str) for k in ("source", "image")):
    raise DataError("data.files", f"{where}: \"source\" and \"image\" must be strings")
  refs = record.setdefault("references", [record["target"]])
  if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
    raise DataError("data.files", f"{where}: \"references\" must be a non-empty list of strings")
  if "image" in record:
    record["image"] = _checked_image(record["image"], where, path)
  return record


def _checked_image(image: str, where: str, path: str) -> str:
  """The absolute path of a readable image; DataError naming `where` otherwise."""
  from PIL import Image
  full = os.path.join(os.path.dirname(path), os.path.expanduser(image))
  try:
    with Image.open(full) as opened:
      opened.verify()
  except Exception as e:  # PIL raises many types for bad files
    raise DataError("data.files", f"{where}: image {image!r} cannot be read "
                    f"({type(e).__name__}: {e})") from None
  return os.path.abspath(full)
