"""Cross-attention into a chosen level, with a given memory: for a flat and two
hierarchical decoders (one on fixed patches, one on delimiter units) and
cross-attention at each level in turn, the cached decoder equals the
teacher-forced logits, the target side stays causal, padded memory slots are
never read and real ones are."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm as lm_configs
from mgm.data.tokenizer import PAD, encode
from mgm.errors import ConfigError
from mgm.model import incremental
from mgm.model import spec as spec_lib
from mgm.model.lm import LM

TEXT = b"Hi there. Go!\n\nNew para, ok; more words here. End of it all. " * 2
MEMORY_LEN, MEMORY_WIDTH, BATCH = 5, 48, 2
CASES = [("flat", 0), ("megabyte", 0), ("megabyte", 1), ("mgm3", 0), ("mgm3", 1), ("mgm3", 2)]


def cross_attending(name: str, level: int):
  config = lm_configs.get_config(f"model={name},size=tiny")
  spec = spec_lib.from_config(config.model)
  levels = list(spec.levels)
  levels[level] = dataclasses.replace(levels[level], cross_attention=True)
  return (LM(dataclasses.replace(spec, levels=tuple(levels)), packing="document_mask"),
          config.data.seq_len)


def memory(seed=1, changes=None):
  """A memory of BATCH rows; row 0 has 3 real slots, row 1 all 5; `changes`:
  {(row, slot): value}."""
  x = jax.random.normal(jax.random.key(seed), (BATCH, MEMORY_LEN, MEMORY_WIDTH))
  for (row, slot), value in (changes or {}).items():
    x = x.at[row, slot].set(value)
  mask = jnp.asarray([[True, True, True, False, False], [True] * MEMORY_LEN])
  return {"x": x, "mask": mask}


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-level{i}" for n, i in CASES])
def case(request):
  model, seq_len = cross_attending(*request.param)
  tokens = np.full((BATCH, seq_len), PAD, np.int32)
  ids = encode(TEXT)[:seq_len]
  tokens[:, :len(ids)] = ids
  tokens = jnp.asarray(tokens)
  params = jax.jit(lambda r: model.init(r, tokens, memory=memory(),
                                        method=LM.forward)["params"])(jax.random.key(0))
  forward = jax.jit(lambda p, t, m: model.apply({"params": p}, t, None, m,
                                                method=LM.forward)["logits"])
  return model, params, tokens, forward


def test_cached_generation_equals_teacher_forced_with_a_memory(case):
  model, params, tokens, forward = case
  reference = np.asarray(forward(params, tokens, memory()))
  lengths = jnp.asarray([10, 13])
  _, state = jax.jit(lambda p, t, n, m: incremental.prefill(model, p, t, n, memory=m))(
      params, tokens, lengths, memory())
  step = jax.jit(lambda p, s, token: incremental.step(model, p, s, token))
  rows = np.arange(BATCH)
  for k in range(20):
    pos = np.asarray(lengths) + k
    logits, state = step(params, state, tokens[rows, pos])
    np.testing.assert_allclose(logits, reference[rows, pos + 1], atol=2e-5, rtol=1e-5,
                               err_msg=f"step {k}")


def test_target_side_is_causal_with_a_memory(case):
  model, params, tokens, forward = case
  t = 20
  changed = tokens.at[:, t:].set(jnp.roll(tokens[:, t:], 3, axis=1))
  a, b = forward(params, tokens, memory()), forward(params, changed, memory())
  np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-5)
  assert np.abs(np.asarray(a[:, t + 1:] - b[:, t + 1:])).max() > 1e-3


def test_padded_memory_slots_are_not_read_and_real_ones_are(case):
  model, params, tokens, forward = case
  base = np.asarray(forward(params, tokens, memory()))
  padded = np.asarray(forward(params, tokens, memory(changes={(0, 3): 9.0, (0, 4): -9.0})))
  np.testing.assert_array_equal(padded, base)
  real = np.asarray(forward(params, tokens, memory(changes={(0, 1): 9.0})))
  assert np.abs(real[0] - base[0]).max() > 1e-3
  np.testing.assert_array_equal(real[1], base[1])        # rows read their own memory


def test_cross_attention_without_encoders_is_refused():
  config = lm_configs.get_config("model=mgm3,size=tiny")
  config.model.levels[1].cross_attention = True
  with pytest.raises(ConfigError, match=r"model\.levels\[1\]\.cross_attention"):
    spec_lib.from_config(config.model)


def test_fusion_over_zero_encoders_is_refused():
  config = lm_configs.get_config("tiny")
  config.model.fusion = "gated"
  with pytest.raises(ConfigError, match=r"model\.fusion.*there are none"):
    spec_lib.from_config(config.model)
