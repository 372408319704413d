"""Document sources: random-access sequences of documents (str or bytes).

`make_source(data_cfg, split)` picks one by `data.source`; every source has
`__len__` and `__getitem__`, so `grain.MapDataset.source` takes it as is.
Bad configuration raises `DataError`, whose message names the field and the fix.
"""
import difflib
import functools
import glob
import json
import mmap
import os
import re
import zlib

import ml_collections

from mgm.data import synthetic
from mgm.errors import DataError

SPLITS = ("train", "validation")
_HASH_BUCKETS = 1000


def make_source(data_cfg, split: str):
  """The documents of `split` ('train' or 'validation') for `data_cfg.source`;
  for a paired task (`paired.is_paired`), its examples (dicts, mgm/data/paired.py)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  from mgm.data import paired   # paired builds on this module
  if paired.is_paired(data_cfg):
    return paired.examples(data_cfg, split)
  makers = {"synthetic": _synthetic_source, "text": _text_source, "tfds": _tfds_source}
  if data_cfg.source not in makers:
    raise DataError("data.source", f"unknown source {data_cfg.source!r}; use one of "
                    f"{sorted(makers)} or a paired task, one of {sorted(paired.REGISTRY.names())}")
  return makers[data_cfg.source](data_cfg, split)


def default_prompt(data_cfg, max_bytes: int) -> str:
  """Where samples start when no prompt is given, at most `max_bytes` of UTF-8:
  synthetic: '= ', how its documents open (titles read '= Topic ='); text and
  tfds: the first line of the first held-out document (invalid UTF-8 as U+FFFD);
  paired tasks: '' (the target is generated from the image or source alone)."""
  from mgm.data import paired
  if data_cfg.get("tasks", None):   # a mixture samples one task (mixture.sampled_task)
    from mgm.data import mixture
    data_cfg = mixture.task_data(data_cfg, mixture.sampled_task(data_cfg))
  if paired.is_paired(data_cfg):
    text = ""   # conditioned generation starts from the image or source alone
  elif data_cfg.source == "synthetic":
    text = "= "
  else:
    doc = make_source(data_cfg, "validation")[0]
    if isinstance(doc, bytes):
      doc = doc.decode("utf-8", errors="replace")
    text = doc.lstrip().split("\n", 1)[0]
  return text.encode("utf-8")[:max(max_bytes, 0)].decode("utf-8", errors="ignore")


# --- synthetic ---------------------------------------------------------------

def synthetic_corpus(data_cfg) -> synthetic.SyntheticCorpus:
  """The corpus of data.corpus_seed and data.synthetic; one object per distinct
  config in a process (read-only once built; building it takes ~0.2 s)."""
  kwargs = data_cfg.synthetic
  if isinstance(kwargs, ml_collections.ConfigDict):
    kwargs = kwargs.to_dict()
  return _corpus(data_cfg.corpus_seed, json.dumps(kwargs, sort_keys=True, default=repr))


@functools.lru_cache(maxsize=8)
def _corpus(seed, kwargs_json: str) -> synthetic.SyntheticCorpus:
  return synthetic.SyntheticCorpus(seed=seed, **json.loads(kwargs_json))


def _synthetic_source(data_cfg, split):
  return synthetic.SyntheticSource(synthetic_corpus(data_cfg), split)


# --- text files --------------------------------------------------------------

class TextFileSource:
  """Byte ranges of local files, read lazily so big corpora stay on disk."""

  def __init__(self, spans: list[tuple[str, int, int]]):
    self._spans = spans  # (path, start, stop)

  def __len__(self) -> int:
    return len(self._spans)

  def __getitem__(self, index: int) -> bytes:
    path, start, stop = self._spans[index]
    with open(path, "rb") as f:
      f.seek(start)
      return f.read(stop - start)

  def __repr__(self) -> str:
    return f"TextFileSource({len(self)} documents)"

  def files_and_bytes(self) -> tuple[set[str], int]:
    """The files its documents come from, and their total size in bytes."""
    return {path for path, _, _ in self._spans}, sum(b - a for _, a, b in self._spans)


def match_files(files: str) -> list[str]:
  """Sorted regular files matched by comma-separated globs; each must match."""
  patterns = [p.strip() for p in files.split(",") if p.strip()]
  if not patterns:
    raise DataError("data.files", "is empty; set it to a glob of UTF-8 text files, "
                    "e.g. --config.data.files='~/books/*.txt'")
  paths = set()
  for pattern in patterns:
    matched = [p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
               if os.path.isfile(p)]
    if not matched:
      raise DataError("data.files", f"glob {pattern!r} matches no file; fix the path "
                      "(globs are separated by commas, ~ is expanded)")
    paths.update(os.path.abspath(p) for p in matched)
  return sorted(paths)


def chunk_bounds(data, max_bytes: int) -> list[tuple[int, int]]:
  """[start, stop) chunks of `max_bytes` // 2 to `max_bytes` bytes (the last may be
  shorter), in time linear in len(data) whatever the bytes are.

  A chunk ends after the last newline in the second half of its window; without
  one, at the UTF-8 character boundary closest below `max_bytes`, looking back
  at most 3 bytes (a character is at most 4), so binary data or another encoding
  is cut at `max_bytes` exactly. `data` is bytes-like with `rfind` (bytes or an mmap).
  """
  bounds, start, size = [], 0, len(data)
  while start < size:
    stop = start + max_bytes
    if stop < size:
      newline = data.rfind(b"\n", start + max_bytes // 2, stop)
      if newline >= 0:
        stop = newline + 1
      else:
        floor = max(start + 1, stop - 3)
        cut = stop
        while cut > floor and data[cut] & 0xC0 == 0x80:  # a continuation byte
          cut -= 1
        stop = cut if data[cut] & 0xC0 != 0x80 else stop
    stop = min(stop, size)
    bounds.append((start, stop))
    start = stop
  return bounds


@functools.lru_cache(maxsize=256)
def _cached_chunks(path: str, max_bytes: int, size: int, mtime_ns: int):
  del size, mtime_ns   # part of the key: a changed file is chunked again
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    return tuple(chunk_bounds(data, max_bytes))


def _file_chunks(path: str, max_bytes: int) -> list[tuple[int, int]]:
  """Chunks of one file; cached, as validation and both splits chunk the same files."""
  stat = os.stat(path)
  if stat.st_size == 0:
    return []  # mmap refuses empty files
  return list(_cached_chunks(path, max_bytes, stat.st_size, stat.st_mtime_ns))


def validation_flags(keys: list[str], val_fraction: float) -> list[bool]:
  """Which documents (by stable key) are validation; both splits non-empty.

  The split depends only on each document's own key, so adding a file does not
  move the other files' documents between splits.
  """
  buckets = [zlib.crc32(k.encode("utf-8")) % _HASH_BUCKETS for k in keys]
  flags = [b < val_fraction * _HASH_BUCKETS for b in buckets]
  if not any(flags):
    flags[buckets.index(min(buckets))] = True
  if all(flags):
    flags[buckets.index(max(buckets))] = False
  return flags


def _text_source(data_cfg, split):
  max_bytes = data_cfg.text_doc_bytes
  if not isinstance(max_bytes, int) or max_bytes < 1:
    raise DataError("data.text_doc_bytes", f"must be a positive integer, got {max_bytes!r}")
  if not 0 <= data_cfg.val_fraction < 1:
    raise DataError("data.val_fraction", f"must lie in [0, 1), got {data_cfg.val_fraction!r}")
  paths = match_files(data_cfg.files)
  root = os.path.commonpath([os.path.dirname(p) for p in paths])
  spans, keys = [], []
  for path in paths:
    name = os.path.relpath(path, root).replace(os.sep, "/")
    for i, (start, stop) in enumerate(_file_chunks(path, max_bytes)):
      spans.append((path, start, stop))
      keys.append(f"{name}:{i}")
  if not spans:
    raise DataError("data.files", f"the {len(paths)} file(s) matched by {data_cfg.files!r} "
                    "are all empty; point it at files with text")
  if len(spans) == 1:
    raise DataError("data.text_doc_bytes", f"data.files yields a single document of "
                    f"{spans[0][2] - spans[0][1]} bytes, which cannot be split into train "
                    "and validation; lower data.text_doc_bytes or add files")
  in_validation = validation_flags(keys, data_cfg.val_fraction)
  return TextFileSource([s for s, v in zip(spans, in_validation) if v == (split == "validation")])


# --- TensorFlow Datasets -----------------------------------------------------

class TfdsTextSource:
  """One text feature of a TFDS random-access data source (str or bytes)."""

  def __init__(self, records, field: str):
    self._records = records
    self._field = field

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> str | bytes:
    return self._records[index][self._field]

  def __repr__(self) -> str:
    return f"TfdsTextSource({self._field!r}, {len(self)} documents)"


def _tfds_source(data_cfg, split):
  records = open_tfds(data_cfg, split)
  features = list(records.dataset_info.features.keys())
  if data_cfg.tfds_text_field not in features:
    raise DataError("data.tfds_text_field", f"{data_cfg.tfds_name} has no feature "
                    f"{data_cfg.tfds_text_field!r}; its features are {features}")
  return TfdsTextSource(records, data_cfg.tfds_text_field)


def open_tfds(data_cfg, split):
  """The TFDS random-access data source of `split` (tfds.data_source, nothing is
  downloaded); DataError naming the field for an unknown dataset, an unprepared
  one or a missing split."""
  import tensorflow_datasets as tfds  # here: a 0.6 s import only tfds users pay

  name = data_cfg.tfds_name
  if not name:
    raise DataError("data.tfds_name", "is empty; set it to a TFDS dataset name, "
                    "e.g. --config.data.tfds_name=tiny_shakespeare")
  split_field = "data.tfds_train_split" if split == "train" else "data.tfds_eval_split"
  tfds_split = data_cfg.tfds_train_split if split == "train" else data_cfg.tfds_eval_split
  data_dir = data_cfg.tfds_data_dir or None
  try:
    records = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
  except tfds.core.DatasetNotFoundError:
    raise DataError("data.tfds_name", _unknown_dataset(tfds, name)) from None
  except Exception as e:  # diagnose the usual causes, else let tfds's error through
    _diagnose_tfds(tfds, name, data_dir, tfds_split, split_field, e)
    raise
  return records


def _unknown_dataset(tfds, name: str) -> str:
  known = sorted(set(tfds.list_builders(with_community_datasets=False)))  # community: GCS
  close = difflib.get_close_matches(name.split("/")[0].split(":")[0], known, n=5)
  hint = f"did you mean {close}?" if close else "see tfds.list_builders()"
  return f"unknown TFDS dataset {name!r}; {hint}"


def _diagnose_tfds(tfds, name, data_dir, tfds_split, split_field, error):
  """Raise DataError when `error` came from an unprepared dataset or a bad split."""
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DataError("data.tfds_data_dir", f"TFDS dataset {name!r} is not prepared "
                    f"(looked in {builder.data_dir}) and downloads are off; prepare it "
                    f"once on a machine with network: `tfds.builder({name!r}, data_dir=DIR)"
                    ".download_and_prepare(file_format='array_record')`, then set "
                    "data.tfds_data_dir=DIR") from error
  base_split = re.split(r"[\[+]", tfds_split)[0]
  splits = list(builder.info.splits)
  if base_split not in splits:
    raise DataError(split_field, f"{name} has no split {tfds_split!r}; its splits are "
                    f"{splits}") from error
