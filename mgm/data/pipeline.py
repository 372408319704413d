"""The Grain input pipeline shared by every source (no tf.data).

documents → shard by process → shuffle (train) → repeat → tokenize (bytes + EOS)
→ pack (grain's concat-then-split) → batch. Each process reads only its own
share of the documents, so `batch_size` is the global batch and every process
yields `batch_size // process_count` rows. The iterator's `get_state()` /
`set_state()` resume it exactly (checkpointed with the model).

A batch is a dict of numpy arrays, each [B_local, seq_len]:
  tokens       int32    byte ids, EOS after each document, PAD on padding
  segment_ids  int32    1, 2, ... per document piece within the row; 0 on padding
  mask         float32  1 on real tokens, 0 on padding
Padding only appears at the end of a finite stream (validation, or num_epochs).
"""
import functools
import itertools

import grain
import numpy as np

from mgm.data import paired, sources
from mgm.data.tokenizer import EOS, PAD, VOCAB_SIZE, encode

# Read in the consuming thread: documents are made or read by Python code that
# holds the GIL, and grain's reader threads measured 1.5-10x slower here. For
# more throughput use worker processes (`mp_prefetch`) on the returned dataset.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
_STATS_TOKENS = 2_000_000
_STATS_EXAMPLES = 500   # paired tasks: the unigram statistics of this many targets


def document_tokens(document: str | bytes) -> np.ndarray:
  """A document's byte ids followed by one EOS. int32 [n_bytes + 1]"""
  return np.append(encode(document), np.int32(EOS))


def _tokenize(document) -> dict:
  return {"tokens": document_tokens(document)}


def _finalize(packed: dict) -> dict:
  """Grain's packed row → our batch row; grain pads with 0, we pad with PAD."""
  segment_ids = packed["tokens_segment_ids"].astype(np.int32)
  real = segment_ids > 0
  return {"tokens": np.where(real, packed["tokens"], PAD).astype(np.int32),
          "segment_ids": segment_ids,
          "mask": real.astype(np.float32)}


def _slices_as_tuples(state):
  """`state` with every packing `remainder_slices` entry as a tuple again."""
  if not isinstance(state, dict):
    return state
  return {k: ({f: tuple(s) for f, s in v.items()} if k == "remainder_slices"
              else _slices_as_tuples(v)) for k, v in state.items()}


class _JsonSafeStateIterator(grain.DatasetIterator):
  """Passes elements through; restores states that went through JSON.

  grain 0.2.18's ConcatThenSplit marks "no remainder" with the tuple (-1, -1)
  and tests it with `!=`, so after a JSON round trip (what every Grain/Orbax
  checkpoint does) the list [-1, -1] reads as a remainder and one document is
  silently skipped on resume.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict:
    return self._parent.get_state()

  def set_state(self, state: dict) -> None:
    self._parent.set_state(_slices_as_tuples(state))


class _JsonSafeState(grain.IterDataset):
  def __iter__(self) -> _JsonSafeStateIterator:
    return _JsonSafeStateIterator(self._parent.__iter__())


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if batch_size < process_count or batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} must be a positive multiple of "
                     f"process_count {process_count}")
  return batch_size // process_count


def _seq_len(data_cfg) -> int:
  if not isinstance(data_cfg.seq_len, int) or data_cfg.seq_len < 1:
    raise sources.DataError("data.seq_len", f"must be a positive integer, got "
                            f"{data_cfg.seq_len!r}")
  return data_cfg.seq_len


def make_dataset(data_cfg, split: str, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, num_epochs: int | None = None) -> grain.IterDataset:
  """This process's batches of `split`.

  train: shuffled with `seed` (a new permutation each epoch), repeated forever
  or `num_epochs` times, incomplete last batch dropped. validation: fixed
  order, one pass (or `num_epochs`), last batch may have fewer rows. A paired
  task (`paired.is_paired`) is not packed: one example per row, its batch as in
  `paired.encode_example` (tokens, mask, segment_ids, and source and/or image).
  A task mixture (data.tasks) mixes its tasks' rows (mgm/data/mixture.py).
  """
  if data_cfg.get("tasks", None):
    from mgm.data import mixture   # builds on this module
    return mixture.make_dataset(data_cfg, split, batch_size=batch_size, seed=seed,
                                process_index=process_index, process_count=process_count,
                                num_epochs=num_epochs)
  local_batch = _local_batch_size(batch_size, process_index, process_count)
  rows = task_rows(data_cfg, split, seed=seed, process_index=process_index,
                   process_count=process_count, num_epochs=num_epochs)
  return rows.batch(local_batch, drop_remainder=split == "train")


def task_rows(data_cfg, split: str, *, seed: int, process_index: int = 0,
              process_count: int = 1, num_epochs: int | None = None) -> grain.IterDataset:
  """This process's rows of `split` of one task, unbatched (make_dataset's rows)."""
  seq_len = _seq_len(data_cfg)
  train = split == "train"
  docs = grain.MapDataset.source(sources.make_source(data_cfg, split))
  docs = docs[process_index::process_count]
  if len(docs) == 0:
    raise ValueError(f"the {split} split has fewer documents than the {process_count} "
                     "processes; each process needs at least one")
  if train:
    docs = docs.shuffle(seed=seed)
  if train or num_epochs is not None:
    docs = docs.repeat(num_epochs)
  if paired.is_paired(data_cfg):
    encode = functools.partial(paired.encode_example, seq_len=seq_len,
                               source_len=data_cfg.source_len, inputs=paired.inputs(data_cfg),
                               blind=data_cfg.blind_inputs)
    return docs.map(encode).to_iter_dataset(_READ_OPTIONS)
  stream = docs.map(_tokenize).to_iter_dataset(_READ_OPTIONS)
  packed = grain.experimental.ConcatThenSplitIterDataset(stream, length_struct={"tokens": seq_len})
  return _JsonSafeState(packed.map(_finalize))   # batching passes the state through


def _pad_rows(batch: dict, rows: int) -> dict:
  pad = paired.padding(batch, rows - len(batch["tokens"]))
  return {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}


def eval_batches(data_cfg, *, batch_size: int, num_batches: int, process_index: int = 0,
                 process_count: int = 1) -> list[dict]:
  """The first `num_batches` batches of the unshuffled validation stream.

  Always exactly `num_batches` full-size batches, so every process runs the
  same number of eval steps: when the stream runs out, the last batch is filled
  with PAD rows (mask 0) and any further batches are all padding.
  """
  local_batch = _local_batch_size(batch_size, process_index, process_count)
  dataset = make_dataset(data_cfg, "validation", batch_size=batch_size, seed=0,
                         process_index=process_index, process_count=process_count)
  batches = [_pad_rows(b, local_batch) for b in itertools.islice(dataset, num_batches)]
  batches += [paired.padding(batches[0], local_batch) for _ in range(num_batches - len(batches))]
  return batches


def unigram_bits(docs, max_tokens: int = _STATS_TOKENS) -> float:
  """Empirical unigram entropy (bits/token) of the first `max_tokens` tokens
  of `docs` as the model sees them: bytes, with EOS after each document."""
  counts = np.zeros(VOCAB_SIZE, np.int64)
  for i in range(len(docs)):
    tokens = document_tokens(docs[i])[:max_tokens - counts.sum()]
    counts += np.bincount(tokens, minlength=VOCAB_SIZE)
    if counts.sum() >= max_tokens:
      break
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def source_stats(data_cfg) -> dict:
  """Reference numbers for the train data: always `unigram_bpb` (the loss of
  a model that only learns byte frequencies; for a paired task, of the first
  targets); for synthetic, everything the corpus knows, notably
  `entropy_floor_bpb` (the best achievable loss)."""
  if data_cfg.get("tasks", None):
    return {}   # per task: eval_bpb_<task> (mgm/data/mixture.py)
  if paired.is_paired(data_cfg):
    train = sources.make_source(data_cfg, "train")
    targets = [train[i]["target"] for i in range(min(len(train), _STATS_EXAMPLES))]
    return {"unigram_bpb": unigram_bits(targets)}
  if data_cfg.source == "synthetic":
    return dict(sources.synthetic_corpus(data_cfg).stats())
  return {"unigram_bpb": unigram_bits(sources.make_source(data_cfg, "train"))}


def held_out_rows(data_cfg, *, length: int, max_rows: int, limit: int) -> list[np.ndarray]:
  """At most `limit` token rows [seq_len] whose first `length` tokens are all real,
  taken in order from the first `max_rows` rows of the unshuffled validation stream
  (the rows of `eval_batches`); reads only as far as it needs to."""
  rows = []
  for batch in itertools.islice(make_dataset(data_cfg, "validation", batch_size=1, seed=0),
                                max_rows):
    if batch["mask"][0, :length].all():
      rows.append(batch["tokens"][0])
      if len(rows) == limit:
        break
  return rows


def describe_corpus(data_cfg) -> str:
  """One line on the data a run reads: source, files, documents and bytes per split
  (a task mixture: one line per task)."""
  if data_cfg.get("tasks", None):
    from mgm.data import mixture
    return mixture.describe(data_cfg)
  if paired.is_paired(data_cfg):
    return paired.describe(data_cfg)
  if data_cfg.source == "synthetic":
    stats = sources.synthetic_corpus(data_cfg).stats()
    return (f"data: synthetic corpus (corpus_seed {data_cfg.corpus_seed}), documents made on "
            f"demand, {stats['expected_doc_bytes']:.0f} bytes each on average; train and "
            f"validation are disjoint streams; entropy floor "
            f"{stats['entropy_floor_bpb']:.4f} bits/byte")
  splits = {split: sources.make_source(data_cfg, split) for split in sources.SPLITS}
  if data_cfg.source == "text":
    parts = {split: src.files_and_bytes() for split, src in splits.items()}
    files = set().union(*(paths for paths, _ in parts.values()))
    shown = ", ".join(sorted(files)[:3]) + (f", ... ({len(files)} files)" if len(files) > 3
                                            else "")
    return (f"data: text from {shown}: " + "; ".join(
        f"{split} {len(splits[split]):,} document(s), {size:,} bytes"
        for split, (_, size) in parts.items())
        + f" (documents of at most {data_cfg.text_doc_bytes:,} bytes, validation "
        f"fraction {data_cfg.val_fraction})")
  return (f"data: TFDS {data_cfg.tfds_name} field {data_cfg.tfds_text_field!r}: train split "
          f"{data_cfg.tfds_train_split!r} {len(splits['train']):,} documents; validation split "
          f"{data_cfg.tfds_eval_split!r} {len(splits['validation']):,} documents")
