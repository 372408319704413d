"""The contract every registered kind keeps, checked for each registered name,
so a new kind is tested by adding it (and an example of its config string):

  pooling    static == dynamic pooling, and the incremental accumulator (one
             child at a time, and after a prefix) == the teacher-forced pool
  units      the decoder's one-step boundaries == the whole-sequence ones
  span       the teacher-forced kernel == dense attention under the mask the
             cached decoder uses (`Span.mask`)
  every kind its config string parses back to itself; bad strings name the field
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgm.data.tokenizer import BOS, EOS, encode
from mgm.kinds import KindError
from mgm.model import segment
from mgm.model.spec import LevelSpec
from mgm.model.units import UNITS
from mgm.nn.encoders import ENCODERS
from mgm.nn.fusion import FUSION
from mgm.nn.mixers import MIXERS
from mgm.nn.pooling import POOLING
from mgm.nn.span import SPANS
from mgm.nn import upsample
from mgm.nn.upsample import UPSAMPLING

# One or more config strings per registered kind (a new kind needs one here).
EXAMPLES = {
    "units": ["fixed:3", "word", "sentence", "paragraph", "bytes:,;", "document"],
    "span": ["full", "parent", "window:3"],
    "pool": POOLING.names(),
    "upsample": ["repeat", "linear", "attention", "attention:repeat", "attention:linear"],
    "mixer": ["attention", "lstm", "gru", "conv:2"],
    "encoder": ENCODERS.names(),
    "fusion": ["concat", "gated", "attention:4"],
}
REGISTRIES = {"units": UNITS, "span": SPANS, "pool": POOLING, "upsample": UPSAMPLING,
              "mixer": MIXERS, "encoder": ENCODERS, "fusion": FUSION}


@pytest.mark.parametrize("field", sorted(REGISTRIES))
def test_every_registered_kind_has_an_example_that_parses_back_to_itself(field):
  registry = REGISTRIES[field]
  kinds = [registry.parse(text) for text in EXAMPLES[field]]
  assert {type(k).name for k in kinds} == set(registry.names())
  assert [str(k) for k in kinds] == list(EXAMPLES[field])
  with pytest.raises(KindError, match="unknown") as error:
    registry.parse("no-such-kind")
  assert error.value.field == registry.field   # the config field: model.encoders[i].kind


def test_a_level_spec_parses_each_kind_once_into_its_object():
  level = LevelSpec(8, 1, 2, span="window:4", units="fixed:2", pool="max")
  assert (level.span_kind.size, level.units_kind.patch, str(level.pool_kind),
          str(level.mixer_kind)) == (4, 2, "max", "attention")
  assert LevelSpec(8, 1, 2, span="parent", mixer="conv:3").mixer_kind.kernel == 3
  with pytest.raises(KindError) as error:
    LevelSpec(8, 1, 2, span="window:x")
  assert error.value.field == "span"


# -- pooling ------------------------------------------------------------------

def _units(rng, length, most):
  """Parents [L] of consecutive units of 1..most children; the tail is padding (-> num)."""
  parents, unit = [], 0
  while len(parents) < length - 3:
    parents += [unit] * int(rng.integers(1, most + 1))
    unit += 1
  parents = parents[:length - 3]
  return np.array(parents + [unit + 5] * 3), unit      # out-of-range parents are dropped


@pytest.mark.parametrize("name", POOLING.names())
def test_pooling_static_dynamic_and_incremental_forms_agree(name):
  kind, rng, width, patch = POOLING.parse(name), np.random.default_rng(0), 4, 3
  x = jnp.asarray(rng.normal(size=(2, 12, width)), jnp.float32)
  scores = jnp.asarray(rng.normal(size=(2, 12)), jnp.float32)
  in_width = kind.in_width(width, patch)
  # fixed units of `patch` children: reshaped (static) == segment ops (dynamic)
  static = kind.static(x.reshape(2, 4, patch, width), scores.reshape(2, 4, patch))
  parents = jnp.broadcast_to(jnp.arange(12) // patch, (2, 12))
  np.testing.assert_allclose(kind.dynamic(x, parents, 4, scores, in_width), static, atol=1e-6)
  # units of 1..patch children with padding: one child at a time == teacher-forced
  row_parents, num = _units(rng, 12, patch)
  parents = jnp.broadcast_to(jnp.asarray(row_parents), (2, 12))
  pooled = kind.dynamic(x, parents, num, scores, in_width)               # [2, num, in]
  for unit in range(num):
    member = parents == unit
    acc = jax.tree.map(jnp.zeros_like, kind.from_prefix(x, member, scores,
                                                        jnp.argmax(member, 1), patch))
    for j in np.flatnonzero(row_parents == unit):
      acc = kind.add(acc, x[:, j], scores[:, j])
    np.testing.assert_allclose(kind.final(acc), pooled[:, unit], atol=1e-5, err_msg=f"unit {unit}")
    prefix = kind.from_prefix(x, member, scores, jnp.argmax(member, 1), patch)
    np.testing.assert_allclose(kind.final(prefix), pooled[:, unit], atol=1e-5)
    assert np.all(np.asarray(prefix["count"]) == member.sum(1))


# -- upsampling -----------------------------------------------------------------

def test_attention_upsampling_reads_its_documents_units_up_to_its_own_one_child_at_a_time():
  """Teacher-forced == one child at a time over units of 1..3 children in two
  documents; a child's output ignores later units and other documents' units
  (changed below) and reads its own unit's context (changed: it moves)."""
  kind, rng, width = UPSAMPLING.parse("attention"), np.random.default_rng(2), 8
  row_parents, num = _units(rng, 12, 3)
  parents = jnp.broadcast_to(jnp.asarray(row_parents[:9]), (2, 9))       # no padding here
  unit_docs = jnp.broadcast_to((jnp.arange(num) >= num // 2).astype(jnp.int32), (2, num))
  child_docs = jnp.take_along_axis(unit_docs, parents, axis=1)
  ctx = jnp.asarray(rng.normal(size=(2, num, width)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(2, 9, width)), jnp.float32)
  module = kind.projection(width, width, None, jnp.float32, "up", heads=2)
  visible = upsample.visible_units(parents, num, unit_docs, child_docs)
  params = module.init(jax.random.key(0), ctx, query, visible)
  project = lambda *a: module.apply(params, *a)
  forced = lambda c: kind.teacher_forced(project, c, None, parents, query, visible)
  out = forced(ctx)
  for j, p in enumerate(row_parents[:9]):
    one = kind.incremental(project, ctx[:, p], None, query[:, j], ctx, upsample.visible_units(
        parents[:, j], num, unit_docs, child_docs[:, j]))
    np.testing.assert_allclose(one, out[:, j], atol=1e-5, err_msg=f"child {j}")
    hidden = (jnp.arange(num) > p) | (unit_docs[0] != unit_docs[0, p])
    changed = jnp.where(hidden[None, :, None], ctx + 1.0, ctx)
    np.testing.assert_allclose(forced(changed)[:, j], out[:, j], atol=1e-5,
                               err_msg=f"child {j} read a later unit or another document")
    assert not np.allclose(forced(ctx.at[:, p].add(1.0))[:, j], out[:, j], atol=1e-4)


def test_attention_upsampling_takes_repeat_or_linear_and_names_the_field_otherwise():
  assert not UPSAMPLING.parse("attention:repeat").needs_fixed_children
  assert UPSAMPLING.parse("attention:linear").needs_fixed_children
  with pytest.raises(KindError, match="attention:linear") as error:
    UPSAMPLING.parse("attention:concat")
  assert error.value.field == "upsample"


# -- units --------------------------------------------------------------------

TEXT = "Hi there. Go!\n\nNew para, ok; more words here.  End"


@pytest.mark.parametrize("units", EXAMPLES["units"])
@pytest.mark.parametrize("max_len", [0, 5])
def test_one_step_boundaries_equal_the_whole_sequence_ones(units, max_len):
  ids = np.array(list(encode(TEXT[:20])) + [EOS] + list(encode(TEXT[20:])))
  tokens = jnp.asarray(np.stack([ids, ids[::-1]]))
  b, t = tokens.shape
  levels = (LevelSpec(8, 1, 2, units=units, max_len=max_len, max_units=t),)
  whole = np.asarray(segment.segment(tokens, levels, t, documents=True).bounds[0])
  prev, lens = jnp.full((b,), BOS), [jnp.zeros((b,), jnp.int32)]
  for i in range(t):
    bounds, lens = segment.step_bounds(levels, prev, tokens[:, i], jnp.full((b,), i), lens,
                                       documents=True)
    np.testing.assert_array_equal(np.asarray(bounds[0]), whole[:, i], err_msg=f"token {i}")
    prev = tokens[:, i]


# -- span ---------------------------------------------------------------------

@pytest.mark.parametrize("span", EXAMPLES["span"])
def test_teacher_forced_attention_is_dense_attention_under_the_decoders_mask(span):
  kind, rng, t = SPANS.parse(span), np.random.default_rng(1), 16
  q, k, v = (jnp.asarray(rng.normal(size=(2, t, 2, 4)), jnp.float32) for _ in range(3))
  units = jnp.asarray(np.sort(rng.integers(0, 6, (2, t)), axis=1))
  docs = units // 3                                   # units never span documents
  keys = jnp.broadcast_to(jnp.arange(t), (2, t))
  size = kind.slots(t, unit_window=4)                 # the decoder reads the newest `size`
  allowed = []
  for query in range(t):                              # the decoder's mask, query by query
    at = jnp.full((2,), query)
    same_unit = units == units[:, query:query + 1]
    mask = (keys <= at[:, None]) & (keys > at[:, None] - size) & kind.mask(keys, at, same_unit)
    allowed.append(mask & (docs == docs[:, query:query + 1]))
  allowed = jnp.stack(allowed, axis=1)[:, None]                          # [B, 1, T, T]
  reference = jax.nn.dot_product_attention(q, k, v, mask=allowed)
  unit_ids = units if kind.within_parent else None
  out = kind.attend(q, k, v, unit_ids=unit_ids, unit_window=4, doc_ids=docs)
  np.testing.assert_allclose(out, reference, atol=1e-5, rtol=1e-5)
