"""Byte-level tokenizer: ids 0..255 are UTF-8 bytes, then three specials.

`decode` is for people (samples, logs), not for round-tripping specials: it
drops PAD and BOS, renders EOS (the document separator) as a newline, drops ids
outside the vocabulary, and replaces invalid UTF-8 with U+FFFD, so it never
raises on model output.
"""
import numpy as np

PAD = 256
BOS = 257
EOS = 258
VOCAB_SIZE = 259
# The 13 byte values no UTF-8 text contains (overlong leads, beyond U+10FFFF),
# highest first: autoencode's sentinels (mgm/data/noise.py).
NOT_IN_UTF8 = (*range(0xFF, 0xF4, -1), 0xC1, 0xC0)

_NEWLINE = ord("\n")


def encode(text: str | bytes) -> np.ndarray:
  """UTF-8 bytes of `text` as int32 ids, no specials added. [len(bytes)]"""
  data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
  return np.frombuffer(data, dtype=np.uint8).astype(np.int32)


def decode(ids) -> str:
  """Text of `ids` (any int array-like); EOS becomes '\\n', PAD/BOS vanish."""
  ids = np.asarray(ids, dtype=np.int64).reshape(-1)
  ids = np.where(ids == EOS, _NEWLINE, ids)
  ids = ids[(ids >= 0) & (ids < 256)]
  return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
