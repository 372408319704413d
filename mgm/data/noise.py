"""Noise for the denoising `autoencode` task (issue 14, part 3): pure numpy,
deterministic from (data.noise_seed, split, example index).

Span corruption (data.noise=span): T5's objective (Raffel et al. 2020,
§3.1.4 and `random_spans_noise_mask`) on bytes as ByT5 does it (Xue et al.
2022, §3.1): round(noise_density x length) bytes are masked in
round(masked / noise_mean_span) spans (at least one), their lengths a uniformly
random composition of the masked count, the unmasked runs between them
likewise; the whole mask is then rolled by a uniform offset (T5's
random_roll), so every position is equally likely masked (without it a single
span always ends the text); a span the roll wraps becomes two. Each span is
replaced by one sentinel byte. ByT5 reuses its final 100 byte ids as
sentinels, some of which are bytes of valid UTF-8; here the sentinels are the
13 byte values that never occur in UTF-8 (255 down to 245, then 0xC1, 0xC0),
so no sentinel can be read as text and the vocabulary does not change; the
i-th span gets SENTINELS[i % 13]. The variant: the target is the whole original text (the
issue asks for it), not T5's concatenated spans, so the decoder learns to copy
the unmasked bytes through cross-attention and to fill the gaps. On a short
text the at-least-one-span rule makes the spans shorter than noise_mean_span
(a 50-byte passage at density 0.15 is one 8-byte span).

Byte noise (data.noise=bytes): each byte of the text is deleted with
probability noise_delete, else replaced with probability noise_replace by a
different byte, and before each byte a random byte is inserted with
probability noise_insert. New bytes are uniform over the 243 byte values that
can occur in UTF-8 (never a sentinel). data.noise=both: byte noise, then span
corruption of the result (sentinels are never byte-noised).
"""
import dataclasses

import numpy as np

from mgm.data.tokenizer import NOT_IN_UTF8

KINDS = ("span", "bytes", "both")
SENTINELS = np.array(NOT_IN_UTF8, np.uint8)
TEXT_BYTES = np.setdiff1d(np.arange(256), SENTINELS).astype(np.uint8)  # [243]
_SPLITS = {"train": 0, "validation": 1}


@dataclasses.dataclass(frozen=True)
class Noise:
  """The data.noise* fields (defaults in configs/lm.py, checked by
  mgm/validate.py). Rates are probabilities per byte; mean_span is in bytes."""
  kind: str
  density: float
  mean_span: float
  delete: float
  replace: float
  insert: float
  seed: int


def from_config(data_cfg) -> Noise:
  """The Noise of a data config's noise fields."""
  return Noise(kind=data_cfg.noise, density=data_cfg.noise_density,
               mean_span=data_cfg.noise_mean_span, delete=data_cfg.noise_delete,
               replace=data_cfg.noise_replace, insert=data_cfg.noise_insert,
               seed=data_cfg.noise_seed)


def rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of one example: a function of (seed, split, index) only."""
  return np.random.default_rng([seed, _SPLITS[split], index])


def _random_segmentation(items: int, segments: int, gen) -> np.ndarray:
  """`items` split into `segments` positive lengths, uniformly over the
  compositions (T5's _random_segmentation). int [segments]"""
  cuts = np.sort(gen.permutation(items - 1)[:segments - 1]) + 1
  return np.diff(np.concatenate([[0], cuts, [items]]))


def span_mask(length: int, density: float, mean_span: float, gen) -> np.ndarray:
  """T5's random_spans_noise_mask with random_roll: which of `length` positions
  are masked. bool [length]; nothing is masked when length < 2 or density is 0."""
  if length < 2 or density <= 0:
    return np.zeros(length, bool)
  masked = min(max(int(round(length * density)), 1), length - 1)
  spans = max(int(round(masked / mean_span)), 1)
  spans = min(spans, masked, length - masked)   # each span needs an unmasked run before it
  masked_runs = _random_segmentation(masked, spans, gen)
  kept_runs = _random_segmentation(length - masked, spans, gen)
  runs = np.stack([kept_runs, masked_runs], axis=1).reshape(-1)
  mask = np.repeat(np.arange(2 * spans) % 2 == 1, runs)
  return np.roll(mask, gen.integers(0, length))   # T5's random_roll


def corrupt_spans(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """`data` (uint8 [n]) with each masked run replaced by one sentinel, the
  i-th run by SENTINELS[i % 13]. uint8 [n - masked + runs]"""
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  run = np.cumsum(starts) - 1
  out = np.where(starts, SENTINELS[run % len(SENTINELS)], data)
  return out[~mask | starts].astype(np.uint8)


def byte_noise(data: np.ndarray, noise: Noise, gen) -> np.ndarray:
  """`data` (uint8 [n]) with bytes deleted, replaced and inserted at the rates
  of `noise`. uint8 [about n (1 - delete + insert)]"""
  n = len(data)
  draw = gen.random(n)
  deleted = draw < noise.delete
  replaced = ~deleted & (draw < noise.delete + noise.replace)
  out = data.copy()
  # a uniform offset in 1..242 within TEXT_BYTES never lands on the original byte
  where = np.searchsorted(TEXT_BYTES, data[replaced])
  shift = gen.integers(1, len(TEXT_BYTES), replaced.sum())
  out[replaced] = TEXT_BYTES[(where + shift) % len(TEXT_BYTES)]
  inserted = gen.random(n) < noise.insert
  new = TEXT_BYTES[gen.integers(0, len(TEXT_BYTES), inserted.sum())]
  pieces = np.full((n, 2), -1, np.int32)   # per byte: [inserted before, itself]
  pieces[inserted, 0] = new
  pieces[~deleted, 1] = out[~deleted]
  pieces = pieces.reshape(-1)
  return pieces[pieces >= 0].astype(np.uint8)


def corrupt(text: str | bytes, noise: Noise, split: str, index: int) -> bytes:
  """The noised source of example `index` of `split`: the UTF-8 bytes of
  `text` with noise.kind's noise, a function of (noise, split, index, text)."""
  data = np.frombuffer(text.encode("utf-8") if isinstance(text, str) else text, np.uint8)
  gen = rng(noise.seed, split, index)
  if noise.kind in ("bytes", "both"):
    data = byte_noise(data, noise, gen)
  if noise.kind in ("span", "both"):
    data = corrupt_spans(data, span_mask(len(data), noise.density, noise.mean_span, gen))
  return data.tobytes()
