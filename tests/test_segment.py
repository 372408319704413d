"""Segmenters: boundaries on known text, nesting, forced lengths, overflow."""
import jax.numpy as jnp
import numpy as np
import pytest

from mgm.data.tokenizer import EOS, encode
from mgm.model import segment
from mgm.model.spec import LevelSpec


def closes(units, text, max_len=0):
  tokens = jnp.asarray(encode(text))[None]
  b = segment.natural_bounds(units, tokens)
  if max_len:
    b = segment.force_max_len(b, max_len)
  return "".join(c + ("|" if x else "") for c, x in zip(text, np.asarray(b[0])))


def test_word_sentence_paragraph_and_byte_set_boundaries():
  text = "Hi there. Go!\n\nNew para, ok"
  assert closes("word", text) == "Hi |there.| Go!|\n\nNew |para,| ok"
  assert closes("sentence", text) == "Hi there. |Go!\n|\nNew para, ok"
  assert closes("paragraph", text) == "Hi there. Go!\n\n|New para, ok"
  assert closes("bytes:,", text) == "Hi there. Go!\n\nNew para,| ok"
  assert closes("fixed:4", text[:12]) == "Hi t|here|. Go|"


def test_a_boundary_depends_on_the_prefix_only():
  # the '.' does not close the sentence; the space after it does
  assert closes("sentence", "a.b. c") == "a.b. |c"


def test_max_len_forces_boundaries_counted_from_the_last_one():
  assert closes("word", "abcdefg hi", max_len=3) == "abc|def|g |hi"
  assert closes("word", "ab cdefgh", max_len=3) == "ab |cde|fgh|"


def test_document_separator_closes_delimiter_units_but_not_patches():
  tokens = jnp.asarray(np.concatenate([encode("ab"), [EOS], encode("c")]))[None]
  assert np.asarray(segment.natural_bounds("word", tokens))[0].tolist() == [0, 0, 1, 0]
  assert np.asarray(segment.natural_bounds("fixed:2", tokens))[0].tolist() == [0, 1, 0, 1]


def test_coarse_boundaries_are_nested_in_finer_ones_and_counts_are_exact():
  levels = (LevelSpec(8, 1, 2, units="sentence", max_units=8),
            LevelSpec(8, 1, 2, units="word", max_units=16))
  text = "One two. Three four five! Six."
  seg = segment.segment(jnp.asarray(encode(text))[None], levels, len(text))
  coarse, fine = (np.asarray(b[0]) for b in seg.bounds)
  assert np.all(fine[coarse])                              # nested
  # words: "One ", "two.", " ", "Three ", "four ", "five!", " ", "Six."
  assert int(seg.counts[0][0]) == 3 and int(seg.counts[1][0]) == 8
  # each word unit's parent is the sentence holding its first byte
  parents = np.asarray(seg.parents(0)[0])
  assert parents[:8].tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
  assert np.all(parents[8:] == 8)                          # padding units: out of range
  assert int(seg.overflow) == 0


def test_overflow_is_reported():
  levels = (LevelSpec(8, 1, 2, units="word", max_units=2),)
  seg = segment.segment(jnp.asarray(encode("a b c d "))[None], levels, 8)
  assert int(seg.overflow) == 2


@pytest.mark.parametrize("units,expected", [("fixed:8", 8), ("word", None)])
def test_fixed_patch_detection(units, expected):
  levels = (LevelSpec(8, 1, 2, units=units, max_units=4),)
  assert segment.fixed_patch(levels, 0) == expected
