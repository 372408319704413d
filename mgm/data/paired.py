"""Paired data for conditioned generation (captioning, translation, summarisation).

An example is a dict in one schema for every task:
  target      str            what the model generates (the first reference)
  references  list[str]      every correct target (COCO has 5 captions; others 1)
  source      str            (tasks with a source) the text the model reads
  image       uint8 [H, W, C] (tasks with an image) H = W = data.image_size,
                             C = data.image_channels
`examples(data_cfg, split)` is a random-access sequence of them (what
`sources.make_source` returns for a paired config); the Grain pipeline
(`pipeline.make_dataset`) turns each into one batch row with `encode_example`.

Paired sources (data.source), one registered class each in REGISTRY:
  shapes     generated images and captions (mgm/data/shapes.py)
  translate  corpus sentences -> the synthetic target language (mgm/data/translate.py)
  summarize  a corpus document's body -> its title line
  copy       target = source;  reverse: target = source reversed (characters)
  autoencode target = a passage, source = its bytes noised (mgm/data/noise.py);
             the source is bytes (sentinels are not UTF-8), every other task's a str
  pairs      local JSONL / TSV files (mgm/data/pair_files.py)
  tfds       a TFDS dataset with data.tfds_target_field set (mgm/data/paired_tfds.py)
The generated tasks' validation split is finite: data.val_examples examples.
"""
import abc
import functools
import re

import numpy as np

from mgm import kinds
from mgm.data import noise, shapes, sources
from mgm.data.tokenizer import EOS, PAD, encode
from mgm.data.translate import Translator
from mgm.errors import DataError

REGISTRY = kinds.Registry("paired source", "data.source")
TFDS_FIELDS = ("tfds_source_field", "tfds_target_field", "tfds_image_field")
INPUTS = ("image", "source")
TRAIN_LENGTH = 2**31 - 1   # generated tasks stream any amount of training data
_DESCRIBE_EXAMPLES = 1000


class Examples:
  """A random-access sequence of `length` examples, item i = make(i)."""

  def __init__(self, length: int, make, name: str):
    self._length, self._make, self._name = length, make, name

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self._length:
      raise IndexError(index)
    return self._make(index)

  def __repr__(self) -> str:
    return f"Examples({self._name}, {self._length} examples)"


class PairedSource(kinds.Kind, abc.ABC):
  """One paired task: which inputs its examples carry, and the examples."""
  field = "data.source"

  @abc.abstractmethod
  def inputs(self, data_cfg) -> tuple[str, ...]:
    """The example's inputs, a subset of INPUTS in that order."""

  @abc.abstractmethod
  def examples(self, data_cfg, split: str):
    """Random-access examples of `split`; DataError for bad data."""


def _generated_length(data_cfg, split: str) -> int:
  return TRAIN_LENGTH if split == "train" else data_cfg.val_examples


@REGISTRY.register
class Shapes(PairedSource):
  name = "shapes"

  def inputs(self, data_cfg):
    return ("image",)

  def examples(self, data_cfg, split):
    if data_cfg.image_size < shapes.MIN_IMAGE_SIZE or data_cfg.image_channels != 3:
      raise DataError("data.image_size", f"shapes renders RGB images of at least "
                      f"{shapes.MIN_IMAGE_SIZE} pixels (data.image_channels=3), got "
                      f"{data_cfg.image_size} pixels, {data_cfg.image_channels} channel(s)")
    seed, size, fraction = data_cfg.corpus_seed, data_cfg.image_size, data_cfg.val_fraction
    if not shapes.MIN_VAL_FRACTION <= fraction <= 1 - shapes.MIN_VAL_FRACTION:
      raise DataError("data.val_fraction", f"shapes splits scenes into {shapes.BUCKETS} "
                      f"buckets by caption; {fraction} leaves a split with none; use "
                      f"{shapes.MIN_VAL_FRACTION} to {1 - shapes.MIN_VAL_FRACTION}")

    def make(i):
      scene = shapes.scene_at(seed, split, i, fraction)
      text = shapes.caption(scene)
      return {"image": shapes.render(scene, size), "target": text, "references": [text]}
    return Examples(_generated_length(data_cfg, split), make, f"shapes {split}")


_SENTENCE = re.compile(r"[^.!?]*[.!?]")


def passage(document: str, index: int) -> str:
  """1 to 3 sentences (1 + index % 3) opening the first paragraph of a corpus document."""
  body = document.split("\n\n", 2)[1]
  return " ".join(s.strip() for s in _SENTENCE.findall(body)[:1 + index % 3])


@functools.lru_cache(maxsize=8)
def translator(corpus) -> Translator:
  """The target language of one corpus (built once per corpus object)."""
  return Translator(corpus)


class CorpusTask(PairedSource):
  """A sequence-to-sequence task on the synthetic corpus's documents."""

  def inputs(self, data_cfg):
    return ("source",)

  @abc.abstractmethod
  def pair(self, corpus, document: str, index: int) -> tuple[str, str]:
    """(source, target) from document `index`."""

  def examples(self, data_cfg, split):
    corpus = sources.synthetic_corpus(data_cfg)

    def make(i):
      source, target = self.pair(corpus, corpus.document(i, split), i)
      return {"source": source, "target": target, "references": [target]}
    return Examples(_generated_length(data_cfg, split), make, f"{self.name} {split}")


@REGISTRY.register
class Translate(CorpusTask):
  name = "translate"

  def pair(self, corpus, document, index):
    text = passage(document, index)
    return text, translator(corpus).translate(text)


@REGISTRY.register
class Summarize(CorpusTask):
  name = "summarize"

  def pair(self, corpus, document, index):
    title, _, body = document.partition("\n\n")
    return body, title


@REGISTRY.register
class Copy(CorpusTask):
  name = "copy"

  def pair(self, corpus, document, index):
    text = passage(document, index)
    return text, text


@REGISTRY.register
class Reverse(CorpusTask):
  name = "reverse"

  def pair(self, corpus, document, index):
    text = passage(document, index)
    return text, text[::-1]


@REGISTRY.register
class Autoencode(CorpusTask):
  """Denoising: the target is a passage, the source the same passage noised by
  data.noise (span corruption and/or byte noise), a function of (data.noise_seed,
  split, index)."""
  name = "autoencode"

  def pair(self, corpus, document, index):
    text = passage(document, index)
    return text, text

  def examples(self, data_cfg, split):
    clean, settings = super().examples(data_cfg, split), noise.from_config(data_cfg)

    def make(i):
      example = clean[i]
      return {**example, "source": noise.corrupt(example["target"], settings, split, i)}
    return Examples(len(clean), make, f"{self.name} {split}")


@REGISTRY.register
class Pairs(PairedSource):
  name = "pairs"

  def inputs(self, data_cfg):
    from mgm.data import pair_files
    return pair_files.read(data_cfg).inputs

  def examples(self, data_cfg, split):
    from mgm.data import pair_files
    return pair_files.read(data_cfg).examples(data_cfg, split)


@REGISTRY.register
class Tfds(PairedSource):
  name = "tfds"

  def inputs(self, data_cfg):
    return tuple(i for i in INPUTS if data_cfg.get(f"tfds_{i}_field", ""))

  def examples(self, data_cfg, split):
    from mgm.data import paired_tfds   # imports tensorflow_datasets: only its users pay
    return paired_tfds.examples(data_cfg, split, self.inputs(data_cfg))


# --- the API the pipeline, the model and the metrics use ---------------------

def is_paired(data_cfg) -> bool:
  """Whether data.source is a paired task (tfds: when any data.tfds_*_field of
  TFDS_FIELDS is set)."""
  if data_cfg.source == "tfds":
    return any(data_cfg.get(f, "") for f in TFDS_FIELDS)
  return data_cfg.source in REGISTRY.names()


def task(data_cfg) -> PairedSource:
  """The registered paired source of data.source; DataError naming the known ones."""
  try:
    return REGISTRY.parse(data_cfg.source)
  except kinds.KindError as e:
    raise DataError("data.source", str(e)) from None


def inputs(data_cfg) -> tuple[str, ...]:
  """What the model reads besides the target: a subset of ("image", "source")."""
  return task(data_cfg).inputs(data_cfg)


def examples(data_cfg, split: str):
  """The examples of `split` ('train' or 'validation'), random access."""
  return task(data_cfg).examples(data_cfg, split)


def held_out_examples(data_cfg, n: int) -> list[dict]:
  """The first `n` validation examples (fewer if the split is smaller), in the
  raw schema, for generation metrics: the order of `pipeline.eval_batches`."""
  held_out = examples(data_cfg, "validation")
  return [held_out[i] for i in range(min(n, len(held_out)))]


def token_row(text: str | bytes, length: int) -> np.ndarray:
  """UTF-8 bytes of `text` (bytes: as they are) + EOS, PAD after: int32 [length]. Texts of `length`
  bytes or more are cut to their first `length` bytes (no EOS)."""
  ids = np.append(encode(text), np.int32(EOS))[:length]
  return np.pad(ids, (0, length - len(ids)), constant_values=PAD).astype(np.int32)


def encode_example(example: dict, *, seq_len: int, source_len: int,
                   inputs: tuple[str, ...], blind: bool = False) -> dict:
  """One batch row: tokens/segment_ids int32 [seq_len], mask float32 [seq_len],
  source int32 [source_len] (when "source" in `inputs`), image uint8 [H, W, C].
  `blind` (data.blind_inputs): the image all zeros, the source empty (EOS only),
  so a model trained on them measures the targets' prior without the input."""
  tokens = token_row(example["target"], seq_len)
  real = tokens != PAD
  row = {"tokens": tokens, "mask": real.astype(np.float32),
         "segment_ids": real.astype(np.int32)}
  if "source" in inputs:
    row["source"] = token_row("" if blind else example["source"], source_len)
  if "image" in inputs:
    image = np.asarray(example["image"], np.uint8)
    row["image"] = np.zeros_like(image) if blind else image
  return row


def readable(source: str | bytes) -> str:
  """A source for people (outputs, logs): a str as it is; bytes (autoencode's)
  decoded as UTF-8, each byte outside valid UTF-8 (a sentinel, a noised byte)
  written \\xNN."""
  return source if isinstance(source, str) else source.decode("utf-8", "backslashreplace")


def fit_image(image, size: int, channels: int) -> np.ndarray:
  """Any image (a PIL image or an array [H, W] / [H, W, C]) as uint8 [size, size,
  channels]: converted to RGB (3) or grey (1), centre-cropped to a square, resized
  bilinearly."""
  from PIL import Image
  if not isinstance(image, Image.Image):
    array = np.asarray(image)
    image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1
                            else array)
  image = image.convert("RGB" if channels == 3 else "L")
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  image = image.resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8).reshape(size, size, channels)


def padding(batch: dict, rows: int) -> dict:
  """`rows` padding rows shaped like `batch`'s: PAD tokens and source, zeros else."""
  return {k: np.full((rows, *v.shape[1:]), PAD if k in ("tokens", "source") else 0, v.dtype)
          for k, v in batch.items()}


def describe(data_cfg) -> str:
  """One line: the task, its inputs, split sizes, and how many of the first
  validation examples are truncated (target > seq_len - 1 bytes, source >
  source_len - 1 bytes: their EOS is cut)."""
  val = examples(data_cfg, "validation")
  sample = [val[i] for i in range(min(len(val), _DESCRIBE_EXAMPLES))]
  size = lambda text: len(text.encode("utf-8") if isinstance(text, str) else text)
  longer = lambda key, limit: sum(size(e[key]) >= limit for e in sample if key in e)
  train = len(examples(data_cfg, "train"))
  return (f"data: paired task {data_cfg.source!r}, inputs {inputs(data_cfg) or 'none'}, "
          f"train {'unbounded' if train == TRAIN_LENGTH else f'{train:,}'} examples, "
          f"validation {len(val):,}; of the first {len(sample)} validation examples "
          f"{longer('target', data_cfg.seq_len)} targets (data.seq_len) and "
          f"{longer('source', data_cfg.source_len)} sources (data.source_len) are truncated")
