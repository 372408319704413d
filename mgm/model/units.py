"""Units kinds (`levels[i].units`): where a coarse level's units end.

Each kind gives its *natural* boundaries as a causal function of the tokens:
`bounds(tokens, prev, t)` is True where token t closes a unit, given the
token before it (`prev`, BOS at a row start) and its position `t`. The same
method runs over a whole batch [B, T] in the teacher-forced pass and over one
step [B, 1] in the incremental decoder (`segment.step_bounds`), so the two
cannot disagree. Nesting, forcing by `max_len` and document ends are applied
by `mgm/model/segment.py` for every kind alike.

Adding a kind: one class here, registered in `UNITS` (README, "Extending mgm").
"""
import abc
import dataclasses
import string
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from mgm.data.tokenizer import BOS
from mgm.kinds import Kind, KindError, Registry, positive_arg

UNITS = Registry("units", "units", "fixed:P (P > 0), word, sentence, paragraph, "
                 "bytes:<delimiter characters> or document")

WORD_DELIMITERS = (string.whitespace + string.punctuation).encode()
SENTENCE_ENDS = b".!?"
WHITESPACE = string.whitespace.encode()


def is_in(tokens, byte_set: bytes):
  """tokens [...] int -> [...] bool: the token is one of `byte_set`."""
  table = np.zeros(BOS + 2, bool)
  table[list(byte_set)] = True
  return jnp.asarray(table)[jnp.clip(tokens, 0, BOS + 1)]


class Units(Kind, abc.ABC):
  """Base of the units kinds. `patch` is P for units of exactly P tokens
  (static shapes: reshapes instead of segment ops), None otherwise;
  `closes_at_eos`: a document separator also closes the unit."""
  field: ClassVar[str] = "units"
  patch: ClassVar[int | None] = None
  closes_at_eos: ClassVar[bool] = True

  @abc.abstractmethod
  def bounds(self, tokens, prev, t):
    """tokens, prev [B, L] int, t [B, L] or [L] positions -> [B, L] bool."""


@UNITS.register
@dataclasses.dataclass(frozen=True)
class Fixed(Units):
  """Patches of `size` tokens (MEGABYTE, Yu et al. 2023 §2; Hourglass's shortening)."""
  name: ClassVar[str] = "fixed"
  closes_at_eos: ClassVar[bool] = False   # patches ignore document ends: they stay static
  size: int = 1

  @classmethod
  def parse(cls, arg):
    return cls(positive_arg("units", "fixed", arg, "patch size"))

  @property
  def patch(self):
    return self.size

  def bounds(self, tokens, prev, t):
    return jnp.broadcast_to((t + 1) % self.size == 0, tokens.shape)

  def __str__(self):
    return f"fixed:{self.size}"


@UNITS.register
@dataclasses.dataclass(frozen=True)
class Word(Units):
  """A word closes at a delimiter (whitespace or punctuation) that follows a
  non-delimiter (SpaceByte, Slagle 2024 §2: spacelike bytes)."""
  name: ClassVar[str] = "word"

  def bounds(self, tokens, prev, t):
    delims = self.delimiters
    return is_in(tokens, delims) & ~(is_in(prev, delims) | (prev == BOS))

  @property
  def delimiters(self) -> bytes:
    return WORD_DELIMITERS


@UNITS.register
@dataclasses.dataclass(frozen=True)
class Bytes(Word):
  """Like `word`, with the delimiter set given: `bytes:;,` (escapes allowed)."""
  name: ClassVar[str] = "bytes"
  chars: str = ""

  @classmethod
  def parse(cls, arg):
    if not arg:
      raise KindError("units", "bytes:<chars> needs the delimiter characters after "
                      "the colon, as in 'bytes:,;'")
    return cls(arg)

  @property
  def delimiters(self) -> bytes:
    return self.chars.encode().decode("unicode_escape").encode("latin-1")

  def __str__(self):
    return f"bytes:{self.chars}"


@UNITS.register
@dataclasses.dataclass(frozen=True)
class Sentence(Units):
  """A sentence closes at the whitespace *after* . ! ? (so 'a.b' does not)."""
  name: ClassVar[str] = "sentence"

  def bounds(self, tokens, prev, t):
    return is_in(tokens, WHITESPACE) & is_in(prev, SENTENCE_ENDS)


@UNITS.register
@dataclasses.dataclass(frozen=True)
class Paragraph(Units):
  """A paragraph closes at the second newline of a blank line."""
  name: ClassVar[str] = "paragraph"

  def bounds(self, tokens, prev, t):
    return (tokens == ord("\n")) & (prev == ord("\n"))


@UNITS.register
@dataclasses.dataclass(frozen=True)
class Document(Units):
  """One unit per document, closed by its EOS and cut every max_len tokens;
  also what `fixed:P` runs as when documents are packed
  (`segment.document_levels`)."""
  name: ClassVar[str] = "document"

  def bounds(self, tokens, prev, t):
    return jnp.zeros(tokens.shape, bool)
